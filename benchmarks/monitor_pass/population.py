"""N in-progress runs in the mix of statuses, built fast and checked."""

import argparse
import math
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dagster import DagsterInstance
from dagster._core.code_pointer import FileCodePointer
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.runs.schema import RunsTable, RunTagsTable
from dagster_shared.record import copy as copy_record

from benchmarks.monitor_pass.constants import MIX, REPO_ROOT
from benchmarks.monitor_pass.events import (
    EventWriter,
    FillerTemplate,
    build_job,
    filler_rows,
    lifecycle_entries,
    make_template,
    naive_utc,
    run_times,
)
from benchmarks.monitor_pass.measure import say
from benchmarks.monitor_pass.storage import cached_schema_checks
from dagster_run_monitor_tests.support.postgres import PG_SERVER
from dagster_run_monitor_tests.support.runs import make_run


@dataclass
class Population:
    n: int
    by_status: dict[DagsterRunStatus, list[str]]
    reference: dict[DagsterRunStatus, list[str]]  # made through Dagster's API (make_run)
    crash_candidates: list[str]  # bulk STARTED runs, in order
    events: int


def status_counts(n: int) -> dict[DagsterRunStatus, int]:
    counts = {status: int(round(share * n)) for status, share in MIX}
    counts[DagsterRunStatus.STARTED] += n - sum(counts.values())
    return counts


def code_origin(job_name: str) -> JobPythonOrigin:
    """Where a run worker would load the job from: what a launcher's resume needs (the
    benchmark never starts one)."""
    pointer = FileCodePointer(python_file=__file__, fn_name="defs", working_directory=REPO_ROOT)
    return JobPythonOrigin(job_name, RepositoryPythonOrigin(sys.executable, pointer))


WORKER_STATUSES = (DagsterRunStatus.STARTED, DagsterRunStatus.STARTING)  # a healthy worker each


def build_population(
    instance: DagsterInstance,
    n: int,
    args: argparse.Namespace,
    rng: random.Random,
    worker_tags: Callable[[], dict[str, str]] | None = None,
) -> Population:
    """``worker_tags``: the tags naming a run's worker, one call per STARTED/STARTING run."""
    counts = status_counts(n)
    worker_keys: set[str] = set()

    def tags_for(status: DagsterRunStatus, base: Mapping[str, str]) -> dict[str, str]:
        tags = {k: v for k, v in base.items() if k not in worker_keys}
        if worker_tags is not None and status in WORKER_STATUSES:
            worker = worker_tags()
            worker_keys.update(worker)
            tags.update(worker)
        return tags

    storage = instance.event_log_storage
    steps = max(2, math.ceil((args.events_per_run - 2) / 10))
    jobs = [build_job(f"bench_job_{j}", steps) for j in range(max(1, min(args.jobs, n)))]
    now = time.time()
    by_status: dict[DagsterRunStatus, list[str]] = {s: [] for s in counts}
    reference: dict[DagsterRunStatus, list[str]] = {s: [] for s in counts}
    templates_by_job: dict[str, FillerTemplate] = {}
    runs_by_job: dict[str, DagsterRun] = {}
    filled: list[tuple[str, float, float, str]] = []  # run id, start, end, job
    order = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.CANCELING]
    order += [DagsterRunStatus.QUEUED]
    remaining = dict(counts)
    with cached_schema_checks(instance):
        # 1. One run per job through Dagster's API (helpers.make_run): the job's snapshots are
        # stored the real way, and these runs are the reference the bulk runs are checked
        # against.
        for j, job_def in enumerate(jobs):
            status = next((s for s in order[j % 4 :] + order if remaining[s] > 0), None)
            if status is None:
                break
            remaining[status] -= 1
            times = run_times(status, now, rng)
            run = make_run(
                instance,
                status,
                tags=tags_for(status, {"team": f"team_{j % 4}", "benchmark": "monitor_pass"}),
                created=times["created"],
                launched=times.get("launched"),
                started=times.get("started"),
                canceling=times.get("canceling"),
                job_def=job_def,
                location=f"location_{j % 3}",
                code_origin=code_origin(job_def.name),
            )
            by_status[status].append(run.run_id)
            reference[status].append(run.run_id)
            runs_by_job[job_def.name] = run
            if status in (DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING):
                filled.append((run.run_id, times["started"], now - 1, job_def.name))
        for job_def in jobs:
            if job_def.name in runs_by_job:
                templates_by_job[job_def.name] = make_template(
                    storage, job_def.name, args.events_per_run, steps
                )
        job_names = list(runs_by_job)
        # 2. The rest in bulk: Dagster's own run rows (copies of the job's reference run with
        # a new id and the final status; start_time as handle_run_event sets it), Dagster's
        # own event rows for the status events, and filler events by COPY.
        run_storage = instance.run_storage
        writer = EventWriter(instance, args.database)
        run_rows: list[dict] = []
        tag_rows: list[dict] = []
        lifecycle: list[EventLogEntry] = []

        def flush_runs() -> None:
            if run_rows:
                with run_storage.connect() as conn:
                    conn.execute(RunsTable.insert(), run_rows)
                    conn.execute(RunTagsTable.insert(), tag_rows)
            if writer.postgres:
                writer.add([storage._event_to_row(e) for e in lifecycle])
            else:
                for e in lifecycle:
                    storage.store_event(e)
            run_rows.clear()
            tag_rows.clear()
            lifecycle.clear()

        i = 0
        for status in order:
            for _ in range(remaining[status]):
                ref = runs_by_job[job_names[i % len(job_names)]]
                i += 1
                run = copy_record(
                    ref, run_id=str(uuid.uuid4()), status=status, tags=tags_for(status, ref.tags)
                )
                times = run_times(status, now, rng)
                values = run_storage._get_run_insertion_values(run, naive_utc(times["created"]))
                last = max(t for k, t in times.items())
                values["update_timestamp"] = naive_utc(last)
                values["start_time"] = times.get("started")  # as handle_run_event sets it
                run_rows.append(values)
                tag_rows += [
                    {"run_id": run.run_id, "key": k, "value": v}
                    for k, v in run.tags_for_storage().items()
                ]
                lifecycle.extend(lifecycle_entries(run, times))
                by_status[status].append(run.run_id)
                if status in (DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING):
                    filled.append((run.run_id, times["started"], now - 1, run.job_name))
                if len(run_rows) >= 1000:
                    flush_runs()
        flush_runs()
        say(f"  {n} runs written; writing {len(filled)} x {args.events_per_run} filler events")
        for k, (run_id, start, end, job_name) in enumerate(filled):
            writer.add(filler_rows(templates_by_job[job_name], run_id, start, end))
            if k and k % 2000 == 0:
                say(f"  filler events for {k} runs")
        writer.close()
        if getattr(args, "beats", False):
            write_beats(instance, by_status)
    if writer.postgres:
        import psycopg2

        connection = psycopg2.connect(dbname=args.database, **PG_SERVER)
        connection.autocommit = True
        connection.cursor().execute("VACUUM ANALYZE")
        connection.close()
    reference_ids = {i for ids in reference.values() for i in ids}
    candidates = [i for i in by_status[DagsterRunStatus.STARTED] if i not in reference_ids]
    return Population(n, by_status, reference, candidates, args.events_per_run)


def write_beats(instance: DagsterInstance, by_status: dict) -> None:
    """A heartbeat and 20 lines of stacks for every STARTED and STARTING run, as their
    watchers write them (``worker.watcher``)."""
    import json

    from dagster_run_monitor.core.heartbeats import beat_key, stack_key
    from dagster_run_monitor.integration.internals import KVS

    stacks = "\n".join(f'  File "/app/etl.py", line {i}, in step_{i}' for i in range(20))
    rows = []
    for status in (DagsterRunStatus.STARTED, DagsterRunStatus.STARTING):
        for run_id in by_status.get(status, []):
            body = {"seq": 1, "host": "worker-host", "pid": 4242, "cpu": 1.5, "hash": "ab"}
            rows.append(
                {
                    "key": beat_key(run_id),
                    "value": "tok|" + json.dumps({**body, "steps": ["step_1"]}),
                }
            )
            rows.append({"key": stack_key(run_id), "value": stacks})
    with instance.run_storage.connect() as conn:
        for start in range(0, len(rows), 1000):
            conn.execute(KVS.insert(), rows[start : start + 1000])
    say(f"  {len(rows) // 2} heartbeats written")


def verify_population(instance: DagsterInstance, population: Population) -> None:
    """What both monitors read must be what Dagster's API would have written: statuses, start
    times, launch/cancel/enqueue events, event counts. Bulk runs are checked against the
    reference runs made through the API, and every run's status is checked."""
    from dagster_run_monitor.storage.eventlog import latest_event_times

    records = instance.get_run_records()
    got = Counter(r.dagster_run.status for r in records)
    want = Counter({s: len(ids) for s, ids in population.by_status.items()})
    assert got == want, f"run statuses {dict(got)} != {dict(want)}"
    by_id = {r.dagster_run.run_id: r for r in records}
    storage = instance.event_log_storage
    for status, ids in population.by_status.items():
        sample = (
            population.reference[status][:2]
            + [i for i in ids if i not in population.reference[status]][:2]
            + ids[-2:]
        )
        for run_id in sample:
            record = by_id[run_id]
            stats = instance.get_run_stats(run_id)
            if status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED):
                assert stats.launch_time, (run_id, status, stats)
            if status in (DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING):
                assert record.start_time and stats.start_time, (run_id, record, stats)
                assert abs(record.start_time - stats.start_time) < 1e-3, (record, stats)
                logs = instance.all_logs(run_id)
                fillers = sum(1 for e in logs if e.dagster_event is None) + sum(
                    1
                    for e in logs
                    if e.dagster_event
                    and e.dagster_event.event_type_value
                    not in ("PIPELINE_STARTING", "PIPELINE_START", "PIPELINE_CANCELING")
                )
                assert fillers == population.events, (run_id, fillers)
                assert all(e.run_id == run_id for e in logs)
            if status == DagsterRunStatus.CANCELING:
                assert storage.get_logs_for_run(
                    run_id, of_type={DagsterEventType.RUN_CANCELING}, limit=1, ascending=False
                )
            if status == DagsterRunStatus.QUEUED:
                assert stats.enqueued_time, (run_id, stats)
    # Every STARTING / CANCELING run has its event (what the monitors look up per run).
    for status, kind in (
        (DagsterRunStatus.STARTING, DagsterEventType.RUN_STARTING),
        (DagsterRunStatus.CANCELING, DagsterEventType.RUN_CANCELING),
        (DagsterRunStatus.QUEUED, DagsterEventType.RUN_ENQUEUED),
    ):
        ids = population.by_status[status]
        found = latest_event_times(storage, ids, kind)
        assert len(found) == len(ids), (status, len(found), len(ids))
