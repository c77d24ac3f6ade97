"""One monitoring pass of dagster-run-monitor against Dagster's built-in run monitoring.

From the root of a clone (the package installed, e.g. by ``./dev test`` or ``pip install -e .``):

    .venv/bin/python -m benchmarks.monitor_pass --runs 100 1000 10000 --storage postgres
    .venv/bin/python -m benchmarks.monitor_pass --runs 100 --storage sqlite

For each N it builds N in-progress runs on a real ``DagsterInstance`` (a Postgres database of its
own on 127.0.0.1:5432, created and dropped by the benchmark; or SQLite, Dagster's default
storage, in a temporary DAGSTER_HOME), then:

1. Steady state (the recurring cost of monitoring): every worker healthy, nothing past a
   limit, so neither monitor changes anything and the same data serves every repetition (the
   benchmark checks that the pass left runs and events untouched). Passes alternate: ours
   (``RunMonitorDaemon.monitor_runs``, consumed fully; one daemon object for all passes, as
   under ``dagster-daemon run``, so its first pass reads every run body and later passes only
   the changed ones; the cold first pass is the fresh-process figure below), Dagster's
   (``execute_run_monitoring_iteration``, on an instance of its own with Dagster's defaults:
   our daemon pools its instance's Postgres connections), ...; medians are reported.
2. Crash storm: K workers (default 1,000) of STARTED runs crash at once; one pass must resume
   them all (``instance.resume_run`` with the benchmark launcher, whose resume rewrites a tag).
   Before each repetition a fresh set of K healthy STARTED runs is marked crashed.
3. A fresh daemon process: one pass in a new Python process, whose peak RSS
   (VmHWM: imports, instance, the pass) is the daemon's memory at N runs.

The health check of the benchmark launcher (``benchmarks/launcher.py``) sleeps ``--latency``
(default 20 ms, about one Kubernetes API call) and issues no SQL.

Every pass reports its SQL statements and new database connections (``--show-statements``
lists them), its RSS, and its errors (there should be none). ``--profile-dir DIR`` profiles
one more steady pass and one more crash-storm pass of ours at the largest N (pyinstrument for
the pass, cProfile summed over the action threads). ``--pool-size 16`` is an experiment: both
monitors with pooled Postgres connections instead of Dagster's NullPool.

At 10,000 runs the built-in pass takes about 8,000 x 20 ms (its health checks run one after
another), so it runs once there by default (``--builtin-reps-large``, ``--large-n``); the whole
``--runs 100 1000 10000`` run takes about 25 minutes on two cores.
"""

import argparse
import contextlib
import csv
import ctypes
import datetime
import gc
import io
import json
import logging
import math
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster
import sqlalchemy as db
from dagster import DagsterInstance, In, Nothing, RunsFilter, job, op
from dagster._core.definitions.dependency import NodeHandle
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.plan.handle import StepHandle
from dagster._core.execution.plan.objects import StepSuccessData
from dagster._core.execution.plan.outputs import StepOutputData, StepOutputHandle
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.event_log import SqlEventLogStorage, SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.schema import RunsTable, RunTagsTable
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.daemon import get_default_daemon_logger
from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration
from dagster._utils.error import SerializableErrorInfo
from dagster_shared.record import copy as copy_record

from dagster_run_monitor.daemon import RunMonitorDaemon
from dagster_run_monitor.dagster_yaml import instance_config, write_dagster_yaml
from dagster_run_monitor.settings import read_settings
from dagster_run_monitor_tests.support.launchers import HEALTH_TAG
from dagster_run_monitor_tests.support.postgres import PG_SERVER
from dagster_run_monitor_tests.support.postgres import pg_admin as support_pg_admin
from dagster_run_monitor_tests.support.runs import make_run

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_DATABASE = "run_monitor_bench"
MIX = (  # share of N per status
    (DagsterRunStatus.QUEUED, 0.05),
    (DagsterRunStatus.STARTING, 0.10),
    (DagsterRunStatus.STARTED, 0.80),
    (DagsterRunStatus.CANCELING, 0.05),
)
# Limits no run crosses while the benchmark runs (Dagster's 180 s start and cancel timeouts
# would be crossed during the data set-up at 10,000 runs); what a check costs does not depend
# on the value of its limit.
RUN_MONITORING = {
    "enabled": True,
    "start_timeout_seconds": 3600,
    "cancel_timeout_seconds": 3600,
    "max_runtime_seconds": 86400,
    "max_resume_run_attempts": 3,
    "poll_interval_seconds": 120,
}
PLACEHOLDER_RUN_ID = "ffffffff-ffff-4fff-bfff-ffffffffffff"
MARK_BASE = 1_111_000_000.0  # template event timestamps, replaced per run

log = logging.getLogger("benchmarks.monitor_pass")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Measuring: SQL statements, RSS


class SqlCounter:
    """Counts statements sent to the database (SQLAlchemy ``before_cursor_execute`` on every
    Engine: the storages' pools on Postgres, the per-connection engines of SQLite storage)."""

    def __init__(self) -> None:
        self.enabled = False
        self.by_storage: Counter[str] = Counter()
        self.by_thread: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()
        self.connections = 0  # new database connections (Dagster's storages use NullPool)
        self.engines: dict[int, str] = {}
        db.event.listen(db.engine.Engine, "before_cursor_execute", self._on_execute)
        db.event.listen(db.pool.Pool, "connect", self._on_connect)

    def _on_connect(self, dbapi_connection, connection_record) -> None:
        if self.enabled:
            self.connections += 1

    def name_engines(self, instance: DagsterInstance) -> None:
        for name, storage in (
            ("runs", instance.run_storage),
            ("event_log", instance.event_log_storage),
            ("schedules", instance.schedule_storage),
        ):
            engine = getattr(storage, "_engine", None)
            if engine is not None:
                self.engines[id(engine)] = name

    def _on_execute(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if not self.enabled:
            return
        engine = conn.engine
        name = self.engines.get(id(engine))
        if name is None:  # SQLite: one engine per connection; name it by its file
            path = engine.url.database or ""
            base = os.path.basename(path)
            if base == "runs.db":
                name = "runs"
            elif base == "schedules.db":
                name = "schedules"
            elif base.endswith(".db"):
                name = "event_log"
            else:
                name = "other"
        self.by_storage[name] += 1
        self.by_thread[threading.current_thread().name] += 1
        self.statements[" ".join(statement.split())[:100]] += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator["SqlCounter"]:
        self.by_storage.clear()
        self.by_thread.clear()
        self.statements.clear()
        self.connections = 0
        self.enabled = True
        try:
            yield self
        finally:
            self.enabled = False

    @property
    def total(self) -> int:
        return sum(self.by_storage.values())


def peak_rss_bytes() -> int:
    """VmHWM: the peak RSS of this process's address space since exec (ru_maxrss would
    include the parent's peak, inherited through fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Peak RSS of this process while a pass runs, sampled every 5 ms from /proc/self/statm."""

    def __init__(self) -> None:
        self.start_rss = rss_bytes()
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss_sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return self.start_rss, self.peak


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so a pass's RSS growth is its own."""
    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


MB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# The instance


def pg_url(database: str) -> str:
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"


def pg_admin(statement: str) -> None:
    support_pg_admin(statement, dbname="postgres", connect_timeout=5)


def check_database_name(name: str) -> None:
    if name in ("test", "postgres", "template0", "template1") or name.startswith(
        "run_monitor_test_"
    ):
        raise SystemExit(
            f"Refusing to use database {name!r}: it belongs to the tests or the server"
        )


def write_home(home: str, storage: str, args: argparse.Namespace) -> None:
    monitoring = dict(RUN_MONITORING)
    if args.health_check_threads:
        monitoring["health_check_threads"] = args.health_check_threads
    launcher = {
        "module": "benchmarks.launcher",
        "class": "LatencyRunLauncher",
        "config": {"latency_seconds": args.latency},
    }
    url = pg_url(args.database) if storage == "postgres" else None
    write_dagster_yaml(Path(home), instance_config(monitoring, launcher, url))


@contextlib.contextmanager
def daemon_context(instance: DagsterInstance, log_path: str) -> Iterator[Any]:
    """The daemon's workspace context; the ``dagster`` loggers (both monitors log through them,
    as under ``dagster-daemon run``) write to a file instead of the terminal."""
    with create_test_daemon_workspace_context(EmptyWorkspaceTarget(), instance) as context:
        with open(log_path, "a") as log_file:
            for name in ("dagster", ""):
                for handler in logging.getLogger(name).handlers:
                    if isinstance(handler, logging.StreamHandler) and not isinstance(
                        handler, logging.FileHandler
                    ):
                        handler.setStream(log_file)
            try:
                yield context
            finally:
                for name in ("dagster", ""):
                    for handler in logging.getLogger(name).handlers:
                        if isinstance(handler, logging.StreamHandler) and not isinstance(
                            handler, logging.FileHandler
                        ):
                            handler.setStream(sys.stderr)


def pool_connections(instance: DagsterInstance, pool_size: int) -> None:
    """An experiment (``--pool-size``), for both monitors alike: the pool our daemon gives
    itself (``storage_pool_size``), of ``pool_size`` connections."""
    from dagster_run_monitor.pooling import pool_postgres_connections

    pool_postgres_connections(instance, pool_size)


@contextlib.contextmanager
def cached_schema_checks(instance: DagsterInstance) -> Iterator[None]:
    """Set-up only (never during a measured pass): Dagster's SQL storages reflect the schema
    on every status event and run insert (``has_run_stats_index_cols``, ...), about 10 ms each
    on Postgres; the schema does not change while the data is written."""
    storages = [instance.run_storage, instance.event_log_storage]
    patched = []
    for storage in storages:
        for name in dir(type(storage)):
            if name.startswith("has_") and name.endswith(("_cols", "_column", "_columns")):
                method = getattr(storage, name)
                if callable(method):
                    try:
                        value = method()
                    except Exception:
                        continue  # takes arguments
                    setattr(storage, name, lambda value=value: value)
                    patched.append((storage, name))
    known_snapshots: set[str] = set()
    has_job_snapshot = instance.run_storage.has_job_snapshot

    def cached_has_job_snapshot(snapshot_id: str) -> bool:
        if snapshot_id not in known_snapshots and has_job_snapshot(snapshot_id):
            known_snapshots.add(snapshot_id)
        return snapshot_id in known_snapshots

    instance.run_storage.has_job_snapshot = cached_has_job_snapshot
    patched.append((instance.run_storage, "has_job_snapshot"))
    try:
        yield
    finally:
        for storage, name in patched:
            delattr(storage, name)


# --------------------------------------------------------------------------------------------
# The data


def build_job(name: str, steps: int):
    ops = []
    for k in range(steps):

        @op(name=f"step_{k}", ins={"after": In(Nothing)} if k else None)
        def _step():
            return None

        ops.append(_step)

    @job(name=name)
    def _job():
        previous = None
        for step in ops:
            previous = step(after=previous) if previous is not None else step()

    return _job


def filler_entries(job_name: str, events: int, steps: int) -> list[EventLogEntry]:
    """What a run worker writes while a run is STARTED: engine events, step events and user
    log lines, the last step still running."""

    def dagster_event(kind: DagsterEventType, step: int | None, data=None, message=None):
        handle = StepHandle(NodeHandle(f"step_{step}", None)) if step is not None else None
        return DagsterEvent(
            event_type_value=kind.value,
            job_name=job_name,
            step_handle=handle,
            step_kind_value="COMPUTE" if handle else None,
            logging_tags={"job_name": job_name, "step_key": f"step_{step}"} if handle else {},
            event_specific_data=data,
            message=message,
            pid=4242,
        )

    def entry(event: DagsterEvent | None, step: int | None, message: str = "") -> EventLogEntry:
        return EventLogEntry(
            error_info=None,
            level=logging.DEBUG if event else logging.INFO,
            user_message=message,
            run_id=PLACEHOLDER_RUN_ID,
            timestamp=0.0,  # set below
            step_key=f"step_{step}" if step is not None else None,
            job_name=job_name,
            dagster_event=event,
        )

    out = [
        entry(
            dagster_event(
                DagsterEventType.ENGINE_EVENT,
                None,
                EngineEventData({}),
                "Started process for run (pid: 4242).",
            ),
            None,
        ),
        entry(
            dagster_event(
                DagsterEventType.ENGINE_EVENT,
                None,
                EngineEventData({}),
                "Executing steps using multiprocess executor: parent process (pid: 4242)",
            ),
            None,
        ),
    ]
    for s in range(steps):
        key = f"step_{s}"
        out += [
            entry(
                dagster_event(
                    DagsterEventType.STEP_WORKER_STARTING,
                    s,
                    EngineEventData({}),
                    f'Launching subprocess for "{key}".',
                ),
                s,
            ),
            entry(
                dagster_event(
                    DagsterEventType.STEP_START, s, message=f'Started execution of step "{key}".'
                ),
                s,
            ),
        ]
        out += [entry(None, s, f"Processing batch {b} of 5 for {key}") for b in range(1, 6)]
        out += [
            entry(
                dagster_event(
                    DagsterEventType.STEP_OUTPUT,
                    s,
                    StepOutputData(StepOutputHandle(key, "result")),
                    'Yielded output "result" of type "Any". (Type check passed).',
                ),
                s,
            ),
            entry(
                dagster_event(
                    DagsterEventType.ENGINE_EVENT,
                    s,
                    EngineEventData({}),
                    "Finished steps in process (pid: 4243) in 1.2s",
                ),
                s,
            ),
            entry(
                dagster_event(
                    DagsterEventType.STEP_SUCCESS,
                    s,
                    StepSuccessData(1234.0),
                    f'Finished execution of step "{key}" in 1.2s.',
                ),
                s,
            ),
        ]
    out = out[:events]
    return [e._replace(timestamp=MARK_BASE + k) for k, e in enumerate(out)]


@dataclass
class FillerTemplate:
    rows: list[dict]  # _event_to_row of the template entries, run id = placeholder
    marks: list[str]  # per row: the timestamp text to replace in its body


def make_template(storage: SqlEventLogStorage, job_name: str, events: int, steps: int):
    rows, marks = [], []
    for k, entry in enumerate(filler_entries(job_name, events, steps)):
        row = storage._event_to_row(entry)  # Dagster's own row for the event
        mark = f'"timestamp": {MARK_BASE + k!r}'
        assert mark in row["event"], (mark, row["event"][:300])
        rows.append(row)
        marks.append(mark)
    return FillerTemplate(rows, marks)


def naive_utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).replace(tzinfo=None)


def filler_rows(template: FillerTemplate, run_id: str, start: float, end: float) -> list[dict]:
    n = len(template.rows)
    out = []
    for k, (row, mark) in enumerate(zip(template.rows, template.marks, strict=True)):
        ts = start + (end - start) * (k + 1) / (n + 1)
        out.append(
            {
                **row,
                "run_id": run_id,
                "event": row["event"]
                .replace(PLACEHOLDER_RUN_ID, run_id)
                .replace(mark, f'"timestamp": {ts!r}'),
                "timestamp": naive_utc(ts),
            }
        )
    return out


def lifecycle_entries(run: DagsterRun, times: dict[str, float]) -> list[EventLogEntry]:
    """The run-status events Dagster writes (enqueue, launch, start, cancel request)."""
    kinds = [
        ("enqueued", DagsterEventType.RUN_ENQUEUED, None),
        ("launched", DagsterEventType.RUN_STARTING, None),
        ("started", DagsterEventType.RUN_START, None),
        ("canceling", DagsterEventType.RUN_CANCELING, "Sending run termination request."),
    ]
    out = []
    for key, kind, message in kinds:
        if key in times:
            event = DagsterEvent(
                event_type_value=kind.value, job_name=run.job_name, message=message
            )
            out.append(
                EventLogEntry(
                    error_info=None,
                    level=logging.DEBUG,
                    user_message="",
                    run_id=run.run_id,
                    timestamp=times[key],
                    job_name=run.job_name,
                    dagster_event=event,
                )
            )
    return out


def run_times(status: DagsterRunStatus, now: float, rng: random.Random) -> dict[str, float]:
    if status == DagsterRunStatus.QUEUED:
        created = now - rng.uniform(10, 600)
        return {"created": created, "enqueued": created}
    if status == DagsterRunStatus.STARTING:
        created = now - rng.uniform(20, 120)
        return {"created": created, "launched": created + rng.uniform(1, 10)}
    created = now - rng.uniform(300, 3000)
    times = {"created": created, "launched": created + 2, "started": created + 10}
    if status == DagsterRunStatus.CANCELING:
        times["canceling"] = now - rng.uniform(5, 60)
    return times


class EventWriter:
    """Bulk writes of event-log rows: COPY on Postgres, executemany per run file on SQLite."""

    def __init__(self, instance: DagsterInstance, database: str | None):
        self.storage = instance.event_log_storage
        self.postgres = not isinstance(self.storage, SqliteEventLogStorage)
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer)
        self.pending = 0
        self.connection = None
        if self.postgres:
            import psycopg2

            self.connection = psycopg2.connect(dbname=database, **PG_SERVER)

    def add(self, rows: Sequence[dict]) -> None:
        if not self.postgres:
            if rows:
                with self.storage.run_connection(rows[0]["run_id"]) as conn:
                    conn.execute(SqlEventLogStorageTable.insert(), list(rows))
            return
        write = self.writer.writerow
        for r in rows:
            write(
                (
                    r["run_id"],
                    r["event"],
                    r["dagster_event_type"],
                    r["timestamp"].isoformat(sep=" "),
                    r["step_key"],
                    r["asset_key"],
                    r["partition"],
                )
            )
        self.pending += len(rows)
        if self.pending >= 100_000:
            self.flush()

    def flush(self) -> None:
        if not self.postgres or not self.pending:
            return
        self.buffer.seek(0)
        with self.connection.cursor() as cursor:
            cursor.copy_expert(
                "COPY event_logs (run_id, event, dagster_event_type, timestamp, step_key,"
                " asset_key, partition) FROM STDIN WITH (FORMAT csv)",
                self.buffer,
            )
        self.connection.commit()
        self.buffer.seek(0)
        self.buffer.truncate()
        self.pending = 0

    def close(self) -> None:
        self.flush()
        if self.connection is not None:
            self.connection.close()


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


def build_population(
    instance: DagsterInstance, n: int, args: argparse.Namespace, rng: random.Random
) -> Population:
    counts = status_counts(n)
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
                tags={"team": f"team_{j % 4}", "benchmark": "monitor_pass"},
                created=times["created"],
                launched=times.get("launched"),
                started=times.get("started"),
                canceling=times.get("canceling"),
                job_def=job_def,
                location=f"location_{j % 3}",
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
                run = copy_record(ref, run_id=str(uuid.uuid4()), status=status)
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
    if writer.postgres:
        import psycopg2

        connection = psycopg2.connect(dbname=args.database, **PG_SERVER)
        connection.autocommit = True
        connection.cursor().execute("VACUUM ANALYZE")
        connection.close()
    reference_ids = {i for ids in reference.values() for i in ids}
    candidates = [i for i in by_status[DagsterRunStatus.STARTED] if i not in reference_ids]
    return Population(n, by_status, reference, candidates, args.events_per_run)


def verify_population(instance: DagsterInstance, population: Population) -> None:
    """What both monitors read must be what Dagster's API would have written: statuses, start
    times, launch/cancel/enqueue events, event counts. Bulk runs are checked against the
    reference runs made through the API, and every run's status is checked."""
    from dagster_run_monitor.eventlog import latest_event_times

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


# --------------------------------------------------------------------------------------------
# Passes


@dataclass
class PassResult:
    kind: str  # ours | builtin
    scenario: str  # steady | crash
    seconds: float
    sql: int
    sql_by_storage: dict[str, int]
    sql_threads: dict[str, int]
    connections: int
    statements: dict[str, int]
    health_checks: int
    rss_start: int
    rss_peak: int
    errors: list[str] = field(default_factory=list)
    resumed: int | None = None
    side_effects: str | None = None

    @property
    def growth_mb(self) -> float:
        return (self.rss_peak - self.rss_start) / MB


DAEMONS: dict[int, RunMonitorDaemon] = {}  # one per instance, kept across passes like the real one


def one_pass(kind: str, scenario: str, instance, context, counter: SqlCounter) -> PassResult:
    """One pass of ``kind``. Ours is one daemon object for all passes on an instance, as under
    ``dagster-daemon run``: its first pass reads every run, later ones only changed runs."""
    launcher = instance.run_launcher
    checks_before = launcher.health_checks
    daemon = None
    if kind == "ours":
        daemon = DAEMONS.setdefault(id(instance), RunMonitorDaemon.from_instance(instance))
    logger = get_default_daemon_logger("MonitoringDaemon")  # the built-in daemon's logger
    release_memory()
    sampler = RssSampler()
    with counter.counting():
        started = time.perf_counter()
        if daemon is not None:
            results = list(daemon.monitor_runs(context))
        else:
            results = list(execute_run_monitoring_iteration(context, logger))
        seconds = time.perf_counter() - started
    rss_start, rss_peak = sampler.stop()
    counter.name_engines(instance)  # our daemon's first pass gives its storages pooled engines
    errors = [r.message.strip() for r in results if isinstance(r, SerializableErrorInfo)]
    return PassResult(
        kind,
        scenario,
        seconds,
        counter.total,
        dict(counter.by_storage),
        dict(counter.by_thread),
        counter.connections,
        dict(counter.statements),
        launcher.health_checks - checks_before,
        rss_start,
        rss_peak,
        errors,
    )


def fingerprint(instance: DagsterInstance) -> tuple:
    """Run statuses and update times, and (Postgres) the event log's size: a pass that changed
    nothing leaves this as it was."""
    storage = instance.run_storage
    with storage.connect() as conn:
        runs = tuple(
            conn.execute(
                db.select(
                    RunsTable.c.status,
                    db.func.count(),
                    db.func.max(RunsTable.c.update_timestamp),
                ).group_by(RunsTable.c.status)
            ).all()
        )
    events: tuple = ()
    if not isinstance(instance.event_log_storage, SqliteEventLogStorage):
        with instance.event_log_storage.index_connection() as conn:
            events = tuple(
                conn.execute(
                    db.select(db.func.count(), db.func.max(SqlEventLogStorageTable.c.id))
                ).one()
            )
    return tuple(sorted(map(tuple, runs), key=str)), events


def mark_crashed(instance: DagsterInstance, run_ids: Sequence[str]) -> None:
    with cached_schema_checks(instance):
        for run_id in run_ids:
            instance.add_run_tags(run_id, {HEALTH_TAG: "FAILED"})


def count_resumed(instance: DagsterInstance, run_ids: Sequence[str], before: dict[str, int]):
    """Runs that got one more "Launching a new run worker to resume run" event, are still
    STARTED, and whose (new) worker is healthy again."""
    from dagster_run_monitor.eventlog import count_resume_attempts

    after = count_resume_attempts(instance.event_log_storage, list(run_ids))
    resumed = 0
    records = {
        r.dagster_run.run_id: r.dagster_run
        for r in instance.get_run_records(filters=RunsFilter(run_ids=list(run_ids)))
    }
    for run_id in run_ids:
        run = records.get(run_id)
        if (
            after[run_id] == before[run_id] + 1
            and run is not None
            and run.status == DagsterRunStatus.STARTED
            and run.tags.get(HEALTH_TAG) == "RUNNING"
        ):
            resumed += 1
    return resumed, after


# --------------------------------------------------------------------------------------------
# One N on one storage


@dataclass
class Row:
    storage: str
    n: int
    steady: list[PassResult] = field(default_factory=list)
    crash: list[PassResult] = field(default_factory=list)
    crashed: int = 0
    child: dict[str, dict] = field(default_factory=dict)
    setup_seconds: float = 0.0
    events: int = 0
    health_check_threads: int = 0  # as our daemon read it from the instance


def builtin_reps_for(n: int, args: argparse.Namespace) -> int:
    return args.builtin_reps_large if n >= args.large_n else args.builtin_reps


def bench_one(storage: str, n: int, args: argparse.Namespace, counter: SqlCounter) -> Row:
    rng = random.Random(args.seed + n)
    row = Row(storage, n)
    home = tempfile.mkdtemp(prefix=f"run_monitor_bench_{storage}_{n}_")
    if storage == "postgres":
        pg_admin(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        pg_admin(f'CREATE DATABASE "{args.database}"')
    instance = builtin = None
    try:
        write_home(home, storage, args)
        instance = DagsterInstance.from_config(home)
        if args.pool_size and storage == "postgres":
            pool_connections(instance, args.pool_size)
        counter.name_engines(instance)
        row.health_check_threads = read_settings(instance).health_check_threads
        say(f"{storage} N={n}: building the runs (DAGSTER_HOME={home})")
        started = time.perf_counter()
        population = build_population(instance, n, args, rng)
        verify_population(instance, population)
        row.setup_seconds = time.perf_counter() - started
        row.events = population.events
        say(f"{storage} N={n}: data ready and verified in {row.setup_seconds:.0f}s")
        # The built-in monitor gets an instance of its own on the same storage, with Dagster's
        # defaults (our daemon pools its instance's Postgres connections).
        builtin = DagsterInstance.from_config(home)
        if args.pool_size and storage == "postgres":
            pool_connections(builtin, args.pool_size)
        log = os.path.join(home, "daemon.log")
        with daemon_context(instance, log) as context, daemon_context(builtin, log) as b_context:
            envs = {"ours": (instance, context), "builtin": (builtin, b_context)}
            # Steady state: alternate ours and the built-in on the same data.
            reps, builtin_reps = args.reps, builtin_reps_for(n, args)
            before = fingerprint(instance)
            for rep in range(max(reps, builtin_reps)):
                kinds = [k for k, r in (("ours", reps), ("builtin", builtin_reps)) if rep < r]
                if rep % 2:
                    kinds.reverse()
                for kind in kinds:
                    result = one_pass(kind, "steady", *envs[kind], counter)
                    after = fingerprint(instance)
                    if after != before:
                        result.side_effects = f"{before} -> {after}"
                        before = after
                    row.steady.append(result)
                    say(
                        f"{storage} N={n} steady {kind}: {result.seconds:.2f}s,"
                        f" {result.sql} SQL, {result.health_checks} health checks,"
                        f" +{result.growth_mb:.0f} MB RSS, {len(result.errors)} errors"
                        + (" SIDE EFFECTS" if result.side_effects else "")
                    )
            # A fresh daemon process: peak RSS of start-up + one pass.
            for kind in ("ours", "builtin"):
                if kind == "builtin" and n > args.child_builtin_max_n:
                    continue
                row.child[kind] = run_child(kind, home, args.pool_size)
                say(f"{storage} N={n} fresh process {kind}: {row.child[kind]}")
            if n in crash_sizes(storage, args):
                crash_storm(envs, population, row, args, counter)
            if args.profile_dir and n == max(args.runs) and storage == args.storage[0]:
                profile_ours(instance, context, population, row, args)
    finally:
        if instance is not None:
            instance.dispose()
        if builtin is not None:
            builtin.dispose()
        if storage == "postgres" and not args.keep_database:
            pg_admin(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)
    return row


def crash_sizes(storage: str, args: argparse.Namespace) -> set[int]:
    if args.crash_at:
        return set(args.crash_at)
    return {max(args.runs)}


def next_crash_set(population: Population, k: int) -> list[str]:
    pool = population.crash_candidates
    start = getattr(population, "_crash_cursor", 0)
    chosen = [pool[(start + i) % len(pool)] for i in range(min(k, len(pool)))]
    population._crash_cursor = start + len(chosen)  # type: ignore[attr-defined]
    return chosen


def crash_storm(envs, population, row: Row, args, counter: SqlCounter) -> None:
    instance = envs["ours"][0]
    from dagster_run_monitor.eventlog import count_resume_attempts

    builtin_reps = 0 if args.no_crash_builtin else builtin_reps_for(row.n, args)
    # a fresh set of K healthy runs for every repetition (none resumed before)
    k = min(args.crashed, len(population.crash_candidates) // (args.crash_reps + builtin_reps + 1))
    row.crashed = k
    for rep in range(max(args.crash_reps, builtin_reps)):
        kinds = [k_ for k_, r in (("ours", args.crash_reps), ("builtin", builtin_reps)) if rep < r]
        if rep % 2:
            kinds.reverse()
        for kind in kinds:
            crashed = next_crash_set(population, k)
            mark_crashed(instance, crashed)
            before = count_resume_attempts(instance.event_log_storage, crashed)
            result = one_pass(kind, "crash", *envs[kind], counter)
            result.resumed, _ = count_resumed(instance, crashed, before)
            row.crash.append(result)
            say(
                f"{row.storage} N={row.n} crash of {k} workers, {kind}: {result.seconds:.2f}s,"
                f" {result.resumed}/{k} resumed, {result.sql} SQL,"
                f" +{result.growth_mb:.0f} MB RSS, {len(result.errors)} errors"
            )


def profile_ours(instance, context, population, row: Row, args) -> None:
    """Profiles of one more steady pass and one more crash-storm pass of ours (not timed in
    the tables): pyinstrument samples the pass's main thread; work the daemon hands to
    threads of its own (health checks, actions) shows there as waiting, so each call of
    run's actions (``actions._apply``) are also profiled with cProfile in whatever thread runs
    them, and the calls are summed."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        say("pyinstrument is not installed: no profile (pip install pyinstrument)")
        return
    import cProfile
    import pstats

    from dagster_run_monitor import actions as actions_module

    os.makedirs(args.profile_dir, exist_ok=True)
    for scenario in ("steady", "crash"):
        if scenario == "crash":
            crashed = next_crash_set(population, row.crashed or args.crashed)
            mark_crashed(instance, crashed)
        action_profiles: list[cProfile.Profile] = []
        lock = threading.Lock()
        apply_actions = actions_module._apply

        def profiled_apply_actions(
            *a, apply_actions=apply_actions, lock=lock, action_profiles=action_profiles, **k
        ):
            profile = cProfile.Profile()
            profile.enable()
            try:
                return apply_actions(*a, **k)
            finally:
                profile.disable()
                with lock:
                    action_profiles.append(profile)

        daemon = DAEMONS.setdefault(id(instance), RunMonitorDaemon.from_instance(instance))
        profiler = Profiler(interval=0.001 if scenario == "steady" else 0.005)
        actions_module._apply = profiled_apply_actions
        try:
            profiler.start()
            started = time.perf_counter()
            list(daemon.monitor_runs(context))
            seconds = time.perf_counter() - started
            session = profiler.stop()
        finally:
            actions_module._apply = apply_actions
        base = os.path.join(args.profile_dir, f"ours_{row.storage}_{row.n}_{scenario}")
        with open(base + ".txt", "w") as f:
            f.write(f"pass under the profilers: {seconds:.2f}s\n\n")
            f.write(profiler.output_text(unicode=False, color=False, show_all=False))
        session.save(base + ".pyisession")  # pyinstrument --load base.pyisession -r html
        with open(base + "_top.txt", "w") as f:
            f.write(top_functions(session))
        written = f"{base}.txt, {base}_top.txt, {base}.pyisession"
        if action_profiles:
            with open(base + "_actions.txt", "w") as f:
                stats = pstats.Stats(*action_profiles, stream=f)
                f.write(
                    f"{len(action_profiles)} runs' actions, cProfile summed over the"
                    " action threads (times are per-thread wall times, so they add up to more"
                    " than the pass)\n"
                )
                stats.sort_stats("cumulative").print_stats(40)
                stats.sort_stats("tottime").print_stats(25)
            written += f", {base}_actions.txt"
        say(f"profile of ours ({scenario}): {written}")


def top_functions(session, limit: int = 25) -> str:
    """Self and inclusive time per function of a pyinstrument session (main thread)."""
    root = session.root_frame()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()

    def walk(frame, ancestors: frozenset) -> None:
        name = f"{frame.function} ({frame.file_path_short}:{frame.line_no})"
        self_time[name] += frame.total_self_time
        if name not in ancestors:
            inclusive[name] += frame.time
        for child in frame.children:
            walk(child, ancestors | {name})

    if root is not None:
        walk(root, frozenset())
    total = root.time if root is not None else 0.0
    lines = [f"total {total:.3f}s", "", "self time:"]
    lines += [f"  {t:8.3f}s  {name}" for name, t in self_time.most_common(limit)]
    lines += ["", "inclusive time:"]
    lines += [f"  {t:8.3f}s  {name}" for name, t in inclusive.most_common(limit)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# A fresh daemon process


def run_child(kind: str, home: str, pool_size: int = 0) -> dict:
    env = {**os.environ, "DAGSTER_HOME": home}
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.monitor_pass", "--child", kind, "--home", home]
        + (["--pool-size", str(pool_size)] if pool_size else []),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(kind: str, home: str, pool_size: int = 0) -> None:
    counter = SqlCounter()
    instance = DagsterInstance.from_config(home)
    if pool_size and not isinstance(instance.event_log_storage, SqliteEventLogStorage):
        pool_connections(instance, pool_size)
    counter.name_engines(instance)
    with daemon_context(instance, os.path.join(home, "daemon.log")) as context:
        instance.run_launcher  # noqa: B018 -- loaded before the baseline, as a daemon would
        rss_ready = rss_bytes()
        result = one_pass(kind, "steady", instance, context, counter)
    peak = peak_rss_bytes()
    print(
        json.dumps(
            {
                "rss_ready_mb": round(rss_ready / MB, 1),
                "peak_rss_mb": round(peak / MB, 1),
                "first_pass_s": round(result.seconds, 2),
                "first_pass_sql": result.sql,
                "errors": len(result.errors),
            }
        )
    )
    instance.dispose()


# --------------------------------------------------------------------------------------------
# Report


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def span(values: Sequence[int]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def code_version() -> str:
    """The commit of this clone, and whether the monitor's code differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "dagster_run_monitor"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown commit"
    return f"commit {head or 'unknown'}" + (" + uncommitted changes" if dirty else "")


def report(rows: list[Row], args: argparse.Namespace, wall: float, version: str) -> str:
    out = []
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    out.append("## Monitoring pass: dagster-run-monitor vs Dagster's built-in run monitoring")
    out.append("")
    out.append(f"Command: `{command}` (wall time {wall / 60:.1f} min)")
    out.append("")
    out.append(
        f"Health check latency {args.latency * 1000:g} ms (no SQL); {args.events_per_run}"
        " events per STARTED/CANCELING run; mix 5% QUEUED, 10% STARTING, 80% STARTED,"
        " 5% CANCELING; our health_check_threads "
        + ", ".join(sorted({str(r.health_check_threads) for r in rows}))
        + (" (set by --health-check-threads)" if args.health_check_threads else " (default)")
        + f"; dagster {dagster.__version__}; dagster-run-monitor at {version} (at the start)."
        + (
            f" EXPERIMENT: both monitors' Postgres storages use a pool of {args.pool_size}"
            " connections (--pool-size)."
            if args.pool_size
            else " Postgres storages: the built-in monitor's as Dagster configures them for the"
            " daemon (a new connection per query, NullPool); ours pooled by our daemon"
            " (storage_pool_size, default 8)."
        )
    )
    out.append("")
    out.append("### Steady state (every worker healthy, nothing to do; repeatable, alternating)")
    out.append("")
    out.append(
        "| storage | N | ours median s | built-in median s | built-in / ours |"
        " SQL per pass ours / built-in | DB connections ours / built-in |"
        " health checks ours / built-in | RSS growth in pass MB ours / built-in |"
        " reps ours / built-in |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ours = [p for p in row.steady if p.kind == "ours"]
        builtin = [p for p in row.steady if p.kind == "builtin"]
        o, b = median([p.seconds for p in ours]), median([p.seconds for p in builtin])
        ratio = f"{b / o:.1f}x" if builtin and ours else "-"
        b_text = f"{b:.2f}" if builtin else "-"
        out.append(
            f"| {row.storage} | {row.n:,} | {o:.2f} | {b_text} | {ratio} |"
            f" {span([p.sql for p in ours])} / {span([p.sql for p in builtin])} |"
            f" {span([p.connections for p in ours])} / {span([p.connections for p in builtin])} |"
            f" {span([p.health_checks for p in ours])} /"
            f" {span([p.health_checks for p in builtin])} |"
            f" {max(p.growth_mb for p in ours):.0f} / "
            + (f"{max(p.growth_mb for p in builtin):.0f}" if builtin else "-")
            + f" | {len(ours)} / {len(builtin)} |"
        )
    crash_rows = [r for r in rows if r.crash]
    if crash_rows:
        out.append("")
        out.append(
            "### Crash storm (K workers of STARTED runs crash at once; one pass; a fresh set of"
            " K runs marked crashed before each repetition)"
        )
        out.append("")
        out.append(
            "| storage | N | K crashed | ours median s | resumed by ours | SQL (connections) ours |"
            " built-in median s | resumed by built-in | SQL (connections) built-in |"
            " reps ours / built-in |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in crash_rows:
            ours = [p for p in row.crash if p.kind == "ours"]
            builtin = [p for p in row.crash if p.kind == "builtin"]
            out.append(
                f"| {row.storage} | {row.n:,} | {row.crashed:,} |"
                f" {median([p.seconds for p in ours]):.2f} |"
                f" {span([p.resumed for p in ours])} | {span([p.sql for p in ours])}"
                f" ({span([p.connections for p in ours])}) |"
                + (
                    f" {median([p.seconds for p in builtin]):.2f} |"
                    f" {span([p.resumed for p in builtin])} | {span([p.sql for p in builtin])}"
                    f" ({span([p.connections for p in builtin])}) |"
                    if builtin
                    else " - | - | - |"
                )
                + f" {len(ours)} / {len(builtin)} |"
            )
    child_rows = [r for r in rows if r.child]
    if child_rows:
        out.append("")
        out.append(
            "### A fresh daemon process: start-up + one (cold) steady pass;"
            " peak RSS = VmHWM of the process"
        )
        out.append("")
        out.append(
            "| storage | N | ours: RSS before pass MB | ours: peak RSS MB | ours: first pass s /"
            " SQL | built-in: RSS before pass MB | built-in: peak RSS MB | built-in: first pass"
            " s / SQL |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in child_rows:
            cells = []
            for kind in ("ours", "builtin"):
                c = row.child.get(kind)
                if not c:
                    cells += ["-", "-", "-"]
                elif "error" in c:
                    cells += ["error", str(c["error"]), "-"]
                else:
                    cells += [
                        f"{c['rss_ready_mb']:.0f}",
                        f"{c['peak_rss_mb']:.0f}",
                        f"{c['first_pass_s']:.2f} / {c['first_pass_sql']}",
                    ]
            out.append(f"| {row.storage} | {row.n:,} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("### Every pass")
    out.append("")
    for row in rows:
        for p in row.steady + row.crash:
            extra = f", resumed {p.resumed}" if p.resumed is not None else ""
            threads: Counter[str] = Counter()
            for name, count in p.sql_threads.items():
                if name != "MainThread":
                    threads[name.rstrip("0123456789").rstrip("_") + "_*"] += count
            threads = dict(threads)
            out.append(
                f"- {row.storage} N={row.n:,} {p.scenario} {p.kind}: {p.seconds:.3f}s,"
                f" SQL {p.sql} {p.sql_by_storage}, {p.connections} new connections"
                + (f" (from other threads: {threads})" if threads else "")
                + f", health checks {p.health_checks}, RSS {p.rss_start / MB:.0f}"
                f" -> peak {p.rss_peak / MB:.0f} MB, errors {len(p.errors)}{extra}"
                + (f", SIDE EFFECTS {p.side_effects}" if p.side_effects else "")
            )
            for e in p.errors[:3]:
                out.append(f"    - error: {e[:300]}")
            if args.show_statements:
                for statement, count in sorted(p.statements.items(), key=lambda x: -x[1]):
                    out.append(f"    - {count} x `{statement}`")
        out.append(
            f"- {row.storage} N={row.n:,}: data set-up and verification {row.setup_seconds:.0f}s"
        )
    out.append("")
    out.append("### How to read this")
    out.append("")
    large = ", ".join(
        f"N={r.n:,}" for r in rows if builtin_reps_for(r.n, args) != args.builtin_reps
    )
    notes = [
        "Times are wall-clock seconds of one pass, medians over the repetitions; ours and the"
        " built-in alternate on the same data (the order flips every repetition).",
        f"The built-in pass runs {args.builtin_reps} time(s) per N"
        + (
            f", but only {args.builtin_reps_large} time(s) at {large} (N >= {args.large_n:,}):"
            " its health checks run one after another, so a pass takes about"
            " (STARTED runs) x latency by design"
            if large
            else ""
        )
        + ".",
        "Steady state is the recurring cost (one pass per poll_interval_seconds): no worker is"
        " unhealthy and no limit is reached, so neither monitor acts and the data stays the"
        " same for every repetition (checked: run statuses, update times and, on Postgres, the"
        " event log's size and last id are unchanged after each pass; a change is flagged as"
        " SIDE EFFECTS). The limits are start/cancel timeout 3600 s and max runtime 86400 s so"
        " that no run crosses one during the benchmark; what a check costs does not depend on"
        " the limit's value. Action cost is measured in the crash storm, for both monitors.",
        "Both monitors see the same runs but not the same set: ours also reads QUEUED runs and"
        " health-checks STARTING runs (the built-in does neither), see 'health checks'.",
        "SQL per pass: statements sent to the database during the pass (SQLAlchemy"
        " before_cursor_execute on every Engine), including Dagster's own schema reflection"
        " queries inside get_run_records. The health check issues none.",
        "RSS growth in pass: peak RSS of the benchmark process during the pass (sampled every"
        " 5 ms from /proc/self/statm) minus RSS at its start, after gc.collect() and"
        " malloc_trim(0); it is what the pass allocates beyond what earlier passes left in the"
        " heap, not the daemon's total. The daemon's total is the fresh-process table:"
        " the peak RSS (VmHWM) of a new Python process that loads the instance and runs one pass.",
        "Data: one run per job is made through Dagster's API (helpers.make_run: create_run_for_job,"
        " then report_dagster_event / report_run_canceling), the rest are copies of it written in"
        " bulk with Dagster's own row builders (run rows from _get_run_insertion_values with the"
        " final status and start_time; status events from _event_to_row) and the filler events"
        " (engine, step and user-log events) by COPY; the set-up checks statuses, start times,"
        " run stats and event counts against the API before any pass.",
    ]
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.monitor_pass",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, nargs="+", default=[100, 1000], help="values of N")
    p.add_argument("--storage", nargs="+", choices=("postgres", "sqlite"), default=["postgres"])
    p.add_argument("--reps", type=int, default=3, help="passes of ours per N (default 3)")
    p.add_argument("--builtin-reps", type=int, default=3, help="built-in passes per N")
    p.add_argument(
        "--builtin-reps-large",
        type=int,
        default=1,
        help="built-in passes at N >= --large-n (default 1: ~N x 0.8 x latency each)",
    )
    p.add_argument("--large-n", type=int, default=5000)
    p.add_argument("--latency", type=float, default=0.02, help="health check seconds (0.02)")
    p.add_argument("--events-per-run", type=int, default=200)
    p.add_argument("--jobs", type=int, default=10, help="distinct jobs (execution plans)")
    p.add_argument("--health-check-threads", type=int, default=0, help="0: our default")
    p.add_argument("--crashed", type=int, default=1000, help="workers crashing at once")
    p.add_argument(
        "--crash-at", type=int, nargs="*", default=None, help="N values (default: the largest)"
    )
    p.add_argument("--crash-reps", type=int, default=3)
    p.add_argument("--no-crash-builtin", action="store_true")
    p.add_argument(
        "--child-builtin-max-n",
        type=int,
        default=1000,
        help="measure the built-in in a fresh process only up to this N",
    )
    p.add_argument("--sqlite-max-n", type=int, default=2000)
    p.add_argument("--database", default=DEFAULT_DATABASE, help="Postgres database to create")
    p.add_argument("--keep-database", action="store_true")
    p.add_argument(
        "--profile-dir",
        default=None,
        help="write pyinstrument profiles of ours at the largest N (first storage) here",
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=0,
        help="experiment: pooled Postgres connections for both monitors (default 0: Dagster's"
        " NullPool, a new connection per statement group, as in dagster-daemon)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--show-statements", action="store_true", help="list each pass's SQL statements")
    p.add_argument("--output", default=None, help="also write the report to this file")
    p.add_argument("--child", choices=("ours", "builtin"), help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.home, args.pool_size)
        return
    check_database_name(args.database)
    if "sqlite" in args.storage and max(args.runs) > args.sqlite_max_n:
        raise SystemExit(
            f"SQLite is for small N (<= {args.sqlite_max_n}; --sqlite-max-n to change):"
            " one event-log file per run."
        )
    counter = SqlCounter()
    rows = []
    version = code_version()
    wall = time.perf_counter()
    for storage in args.storage:
        for n in args.runs:
            rows.append(bench_one(storage, n, args, counter))
    text = report(rows, args, time.perf_counter() - wall, version)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
