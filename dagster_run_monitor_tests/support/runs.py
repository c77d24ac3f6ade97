"""Building runs in a given state at given times, and reading what a user would see."""

import datetime
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dagster import DagsterInstance, JobDefinition
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.test_utils import create_run_for_test, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import IWorkspaceProcessContext
from dagster._time import get_current_timestamp
from dagster._utils.error import SerializableErrorInfo

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor.storage.pooling import pool_postgres_connections


def pool_connections(instance: DagsterInstance, size: int = 8) -> None:
    """Give this test process's Postgres storages a connection pool, as our daemon does for
    itself (Dagster's NullPool opens a connection per statement group: ~300 ms per run
    created on a busy machine)."""
    pool_postgres_connections(instance, size)


def started_runs(
    instance: DagsterInstance,
    count: int,
    tags: Mapping[str, str] | None = None,
    started: float | None = None,
    threads: int = 4,
) -> list[DagsterRun]:
    """``count`` STARTED runs, through the events Dagster writes (launched a second before
    ``started``, default now), a few at a time. The times go into the events themselves:
    ``helpers.make_run`` freezes Dagster's clock, which is not safe from several threads."""

    def one(_: int) -> DagsterRun:
        run = create_run_for_test(instance, job_name="monitored_job", tags=dict(tags or {}))
        at = started if started is not None else get_current_timestamp()
        for event_type, timestamp in (
            (DagsterEventType.PIPELINE_STARTING, at - 1),
            (DagsterEventType.RUN_START, at),
        ):
            event = DagsterEvent(event_type_value=event_type.value, job_name=run.job_name)
            instance.report_dagster_event(event, run_id=run.run_id, timestamp=timestamp)
        return run

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def current_runs(instance: DagsterInstance, run_ids: Sequence[str]) -> dict[str, DagsterRun]:
    """The runs as stored now, in one query per 500 ids."""
    runs: dict[str, DagsterRun] = {}
    for start in range(0, len(run_ids), 500):
        chunk = list(run_ids[start : start + 500])
        runs.update({r.run_id: r for r in instance.get_runs(RunsFilter(run_ids=chunk))})
    return runs


@dataclass(frozen=True)
class RunLog:
    """What a user reads in one run's event log."""

    events: list[tuple[str, str, float]]  # (event type or LOG, message, timestamp)

    def count(self, message: str) -> int:
        return sum(m == message for _, m, _ in self.events)

    def times(self, message: str) -> list[float]:
        return [t for _, m, t in self.events if m == message]

    def of_type(self, event_type: DagsterEventType) -> list[str]:
        return [m for t, m, _ in self.events if t == event_type.value]

    @property
    def resumes(self) -> int:
        return self.count(c.RESUME_RUN_LOG_MESSAGE)

    @property
    def failures(self) -> list[str]:
        return self.of_type(DagsterEventType.RUN_FAILURE)


def run_logs(
    instance: DagsterInstance, run_ids: Sequence[str], threads: int = 8
) -> dict[str, RunLog]:
    """Each run's event log, read as the UI reads it (``instance.all_logs``)."""

    def read(run_id: str) -> RunLog:
        return RunLog(
            [
                (
                    e.dagster_event.event_type_value if e.dagster_event else "LOG",
                    e.message,
                    e.timestamp,
                )
                for e in instance.all_logs(run_id)
            ]
        )

    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(run_ids, pool.map(read, run_ids), strict=True))


T0 = 1_800_000_000.0  # a fixed "now" for tests that freeze time


def at(timestamp: float):
    return freeze_time(datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc))


def report(instance: DagsterInstance, run: DagsterRun, event_type: DagsterEventType) -> None:
    event = DagsterEvent(event_type_value=event_type.value, job_name=run.job_name)
    instance.report_dagster_event(event, run_id=run.run_id)


def make_run(
    instance: DagsterInstance,
    status: DagsterRunStatus,
    *,
    tags: dict[str, str] | None = None,
    created: float | None = None,
    launched: float | None = None,
    started: float | None = None,
    canceling: float | None = None,
    job_name: str = "monitored_job",
    job_def: JobDefinition | None = None,
    location: str | None = None,
    code_origin: Any = None,
) -> DagsterRun:
    """A run brought to ``status`` through the events Dagster writes, at the given times.
    ``job_def`` stores its execution plan (op tags); ``location`` names its code location;
    ``code_origin`` (a ``JobPythonOrigin``, with ``job_def``) is what launchers resume. It is
    created at ``created`` (by default ``T0 - 1000``, or before the earliest time given: no
    run starts before it exists)."""
    if created is None:
        given = [t for t in (launched, started, canceling) if t is not None]
        created = min([T0 - 1000, *(t - 3 for t in given)])
    first = DagsterRunStatus.QUEUED if status == DagsterRunStatus.QUEUED else None
    origin = remote_origin(job_def.name if job_def else job_name, location or "test_location")
    with at(created):
        if job_def is not None:
            run = instance.create_run_for_job(
                job_def,
                tags=tags or {},
                status=first,
                remote_job_origin=origin,
                job_code_origin=code_origin,
            )
        else:
            run = create_run_for_test(
                instance,
                job_name=job_name,
                status=first or DagsterRunStatus.NOT_STARTED,
                tags=tags or {},
                remote_job_origin=origin if location or first else None,
            )
    if status in (DagsterRunStatus.NOT_STARTED, DagsterRunStatus.QUEUED):
        if status == DagsterRunStatus.QUEUED:
            with at(created):
                report(instance, run, DagsterEventType.PIPELINE_ENQUEUED)
        return instance.get_run_by_id(run.run_id)
    with at(launched if launched is not None else created + 1):
        report(instance, run, DagsterEventType.PIPELINE_STARTING)
    if status in (DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING):
        with at(started if started is not None else created + 2):
            report(instance, run, DagsterEventType.RUN_START)
    if status == DagsterRunStatus.CANCELING:
        with at(canceling if canceling is not None else created + 3):
            instance.report_run_canceling(instance.get_run_by_id(run.run_id))
    run = instance.get_run_by_id(run.run_id)
    assert run.status == status
    return run


def remote_origin(job_name: str, location: str) -> RemoteJobOrigin:
    code_location = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(python_file=__file__), location_name=location
    )
    return RemoteJobOrigin(RemoteRepositoryOrigin(code_location, "__repository__"), job_name)


def monitor_pass(
    instance: DagsterInstance,
    context: IWorkspaceProcessContext,
    now: float = T0,
    daemon: RunMonitorDaemon | None = None,
) -> list[SerializableErrorInfo]:
    """One pass of our daemon at time ``now``; the errors it reported."""
    daemon = daemon or RunMonitorDaemon.from_instance(instance)
    with at(now):
        results = list(daemon.monitor_runs(context))
    return [r for r in results if isinstance(r, SerializableErrorInfo)]


def events(instance: DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    """(event type, message) for each event of the run, as the UI lists them."""
    return [
        (e.dagster_event.event_type_value if e.dagster_event else "LOG", e.message)
        for e in instance.all_logs(run_id)
    ]


def messages(instance: DagsterInstance, run_id: str) -> list[str]:
    return [message for _, message in events(instance, run_id)]


def first_lines(log: list[str]) -> list[str]:
    """Each message's first line: an action on a run whose workers beat appends where they
    were (their stacks) below it."""
    return [m.split("\n", 1)[0] for m in log]


def status_of(instance: DagsterInstance, run_id: str) -> DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def tags_of(instance: DagsterInstance, run_id: str) -> dict[str, Any]:
    return dict(instance.get_run_by_id(run_id).tags)
