"""Building runs in a given state at given times, and reading what a user would see."""

import datetime
import os
from typing import Any

from dagster import DagsterInstance, JobDefinition
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.test_utils import create_run_for_test, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import IWorkspaceProcessContext
from dagster._utils.error import SerializableErrorInfo

from dagster_run_monitor.daemon import RunMonitorDaemon

PG_SERVER = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
PG_DATABASE = os.environ.get("DAGSTER_RUN_MONITOR_PG_DATABASE", f"run_monitor_test_{os.getpid()}")
T0 = 1_800_000_000.0  # a fixed "now" for tests that freeze time


def pg_url() -> str:
    """This test session's own database, so that parallel sessions do not wipe each other."""
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{PG_DATABASE}"


def create_pg_database() -> None:
    pg_admin(f'CREATE DATABASE "{PG_DATABASE}"')


def drop_pg_database() -> None:
    pg_admin(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')


def pg_admin(statement: str, dbname: str = "test", connect_timeout: int = 3) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE) on the local server."""
    import psycopg2

    connection = psycopg2.connect(dbname=dbname, connect_timeout=connect_timeout, **PG_SERVER)
    connection.autocommit = True
    try:
        connection.cursor().execute(statement)
    finally:
        connection.close()


def postgres_unavailable() -> str | None:
    """None if Postgres answers at 127.0.0.1:5432, else why not."""
    try:
        import psycopg2
    except ImportError as exc:
        return f"psycopg2 is not installed: {exc}"
    try:
        psycopg2.connect(dbname="test", connect_timeout=3, **PG_SERVER).close()
    except Exception as exc:
        return f"cannot connect: {str(exc).strip()}"
    return None


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
    created: float = T0 - 1000,
    launched: float | None = None,
    started: float | None = None,
    canceling: float | None = None,
    job_name: str = "monitored_job",
    job_def: JobDefinition | None = None,
    location: str | None = None,
) -> DagsterRun:
    """A run brought to ``status`` through the events Dagster writes, at the given times.
    ``job_def`` stores its execution plan (op tags); ``location`` names its code location."""
    first = DagsterRunStatus.QUEUED if status == DagsterRunStatus.QUEUED else None
    origin = remote_origin(job_def.name if job_def else job_name, location or "test_location")
    with at(created):
        if job_def is not None:
            run = instance.create_run_for_job(
                job_def, tags=tags or {}, status=first, remote_job_origin=origin
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


def status_of(instance: DagsterInstance, run_id: str) -> DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def tags_of(instance: DagsterInstance, run_id: str) -> dict[str, Any]:
    return dict(instance.get_run_by_id(run_id).tags)
