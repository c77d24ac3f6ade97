"""What one refresh of learned limits costs: the histories of every job with a run in progress
(``daemon.history``: one statement for the runs, one per 10,000 runs for their steps) over a
PostgreSQL run storage holding FINISHED runs, built in bulk with COPY.

``python -m benchmarks.history_refresh [--finished 1000000] [--in-progress 10000] [--jobs 500]``

Each job's runs are spread over the whole table (run i is job i % jobs); 3% of them FAILURE,
5% resumed or re-executed from a failure (tags that keep them out of the history); every run
has its repository label and three other tags, as Dagster writes them, and every finished run
its workers' memory (``run_monitor/memory``: the run worker and three steps); the newest 40
runs of each job have three steps, each with STEP_START and STEP_SUCCESS among 17 events.
Also timed: the memory advice of every job (``history``, ``report``: its two statements)."""

import argparse
import io
import json
import statistics
import time
from datetime import datetime, timedelta, timezone

import psycopg2
from dagster import instance_for_test
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG, RESUME_RETRY_TAG

from benchmarks.monitor_pass.storage import scratch_database
from dagster_run_monitor.core.constants import MEMORY_TAG, RESUMED_TAG
from dagster_run_monitor.core.learned import LearnedLimits
from dagster_run_monitor.core.memory_sizing import advice
from dagster_run_monitor.daemon.history import _read
from dagster_run_monitor.storage.history import JobKey, job_keys, run_durations

DATABASE = "run_monitor_history_refresh"
LABEL = "__repository__@etl_location"
BODY = "x" * 600  # a run body's size, never read here
STEPS = ("extract", "transform", "load")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
OTHER_EVENTS = (
    "STEP_INPUT",
    "STEP_OUTPUT",
    "HANDLED_OUTPUT",
    "LOADED_INPUT",
    "ASSET_MATERIALIZATION",
)
OTHER_EVENTS += ("LOGS_CAPTURED", "ENGINE_EVENT") + (None,) * 8  # None: a log message


def _copy(conn, table: str, columns: str, rows) -> None:
    buffer = io.StringIO()
    for row in rows:
        buffer.write("\t".join("\\N" if v is None else str(v) for v in row) + "\n")
    buffer.seek(0)
    with conn.cursor() as cursor:
        cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN", buffer)


def build(dsn: str, finished: int, in_progress: int, jobs: int) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    for start in range(0, finished + in_progress, 200_000):
        end = min(start + 200_000, finished + in_progress)
        runs, tags = [], []
        for i in range(start, end):
            job, run_id = f"job_{i % jobs}", f"run-{i:08d}"
            created = T0 + timedelta(seconds=i * 10)
            if i >= finished:
                status, started, ended = "STARTED", created.timestamp() + 1, None
            else:
                status = "FAILURE" if (i // jobs) % 33 == 0 else "SUCCESS"
                started = created.timestamp() + 1
                ended = started + 60 + (i * 7919) % 600
            runs.append((run_id, job, status, BODY, created, created, started, ended))
            tags += [(run_id, REPOSITORY_LABEL_TAG, LABEL), (run_id, "dagster/schedule", job)]
            tags += [(run_id, "team", "data"), (run_id, "dagster/priority", "0")]
            if ended is not None:
                memory = {"run": [(200 + i % 97) * 2**20, 2**31]}
                memory.update({f"step:{step}": [(900 + i % 89) * 2**20, 2**32] for step in STEPS})
                tags.append((run_id, MEMORY_TAG, json.dumps(memory, separators=(",", ":"))))
            if (i // jobs) % 20 == 1:  # the job's every 20th run
                tags.append((run_id, RESUMED_TAG if i % 2 else RESUME_RETRY_TAG, "1"))
        _copy(
            conn,
            "runs",
            "run_id, pipeline_name, status, run_body, create_timestamp, update_timestamp,"
            " start_time, end_time",
            runs,
        )
        _copy(conn, "run_tags", "run_id, key, value", tags)
    events = []
    for i in range(max(0, finished - 40 * jobs), finished):
        created = T0 + timedelta(seconds=i * 10)
        for n, step in enumerate(STEPS):
            begin = created + timedelta(seconds=2 + 20 * n)
            for kind, at in (
                ("STEP_START", begin),
                ("STEP_SUCCESS", begin + timedelta(seconds=15)),
            ):
                events.append((f"run-{i:08d}", "{}", kind, at.replace(tzinfo=None), step))
            for other in OTHER_EVENTS:  # what else a step writes: logs, outputs, ...
                events.append((f"run-{i:08d}", "{}", other, begin.replace(tzinfo=None), step))
    _copy(conn, "event_logs", "run_id, event, dagster_event_type, timestamp, step_key", events)
    with conn.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--in-progress", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with scratch_database(DATABASE) as url:
        storage = {"storage": {"postgres": {"postgres_url": url}}}
        with instance_for_test(overrides=storage) as instance:
            began = time.monotonic()
            build(url.replace("+psycopg2", ""), args.finished, args.in_progress, args.jobs)
            print(
                f"built {args.finished:,} finished and {args.in_progress:,} in-progress runs of"
                f" {args.jobs} jobs in {time.monotonic() - began:.0f} s"
            )
            keys: set[JobKey] = {(f"job_{j}", LABEL) for j in range(args.jobs)}
            settings = LearnedLimits(max_runtime_factor=3, max_step_runtime_factor=3)
            known: dict = {}
            for label, steps in (("runs only", set()), ("steps, first", keys), ("steps", keys)):
                times = []
                for _ in range(args.repeat):
                    began = time.monotonic()
                    found = _read(instance, settings, keys, steps, known)
                    times.append(time.monotonic() - began)
                    if label == "steps, first":
                        known.clear()  # each a daemon's first refresh
                counted = sum(h.runs.count for h in found.values() if h.runs)
                peaks = sum(len(h.peaks) for h in found.values())
                print(
                    f"refresh ({label}): {len(found)} jobs, {counted:,} runs counted,"
                    f" {peaks:,} workers' usual peaks, {sum(len(s) for s in known.values()):,}"
                    f" steps known; first {times[0]:.3f} s, median"
                    f" {statistics.median(times):.3f} s of {args.repeat}"
                )
            times = []
            for _ in range(args.repeat):
                began = time.monotonic()
                counted_runs = run_durations(instance, job_keys(instance), settings.runs)
                advised = [advice([r.memory for r in runs], 0.9) for runs in counted_runs.values()]
                times.append(time.monotonic() - began)
            print(
                f"memory advice: {len(advised)} jobs, {sum(map(len, advised)):,} workers;"
                f" first {times[0]:.3f} s, median {statistics.median(times):.3f} s of {args.repeat}"
            )


if __name__ == "__main__":
    main()
