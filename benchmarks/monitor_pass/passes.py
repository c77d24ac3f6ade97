"""One pass of either monitor, and what it changed."""

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as db
from dagster import DagsterInstance, RunsFilter
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.storage.event_log import SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.schema import RunsTable
from dagster._daemon.daemon import get_default_daemon_logger
from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration
from dagster._utils.error import SerializableErrorInfo

from benchmarks.monitor_pass.measure import MB, RssSampler, SqlCounter, cpu_seconds, release_memory
from benchmarks.monitor_pass.storage import K8S_NAMESPACE, cached_schema_checks
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor_tests.support.launchers import HEALTH_TAG


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
    api_calls: int  # the launcher's remote calls (harness: one per health check)
    rss_start: int
    rss_peak: int
    errors: list[str] = field(default_factory=list)
    api_by_call: dict[str, int] = field(default_factory=dict)  # Docker: per request kind
    resumed: int | None = None
    side_effects: str | None = None
    cpu: float = 0.0  # CPU seconds of the benchmark process (the daemon) in the pass
    server_cpu: float | None = None  # ... and of the PostgreSQL server (None: not visible)

    @property
    def growth_mb(self) -> float:
        return (self.rss_peak - self.rss_start) / MB


DAEMONS: dict[int, RunMonitorDaemon] = {}  # one per instance, kept across passes like the real one


def one_pass(kind: str, scenario: str, instance, context, counter: SqlCounter) -> PassResult:
    """One pass of ``kind``. Ours is one daemon object for all passes on an instance, as under
    ``dagster-daemon run``: its first pass reads every run, later ones only changed runs."""
    launcher = instance.run_launcher
    checks_before, calls_before = launcher.health_checks, api_calls(launcher)
    by_call_before = Counter(getattr(launcher, "api_by_call", {}))
    daemon = None
    if kind == "ours":
        daemon = DAEMONS.setdefault(id(instance), RunMonitorDaemon.from_instance(instance))
    logger = get_default_daemon_logger("MonitoringDaemon")  # the built-in daemon's logger
    release_memory()
    sampler = RssSampler()
    cpu_before, server_before = cpu_seconds()
    with counter.counting():
        started = time.perf_counter()
        if daemon is not None:
            results = list(daemon.monitor_runs(context))
        else:
            results = list(execute_run_monitoring_iteration(context, logger))
        seconds = time.perf_counter() - started
    cpu_after, server_after = cpu_seconds()
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
        api_calls(launcher) - calls_before,
        rss_start,
        rss_peak,
        errors,
        api_by_call=dict(Counter(getattr(launcher, "api_by_call", {})) - by_call_before),
        cpu=cpu_after - cpu_before,
        server_cpu=None if server_after is None else server_after - (server_before or 0.0),
    )


def api_calls(launcher) -> int:
    return getattr(launcher, "api_calls", launcher.health_checks)


def launcher_kind(instance: DagsterInstance) -> str:
    """``k8s``, ``docker``, ``ecs`` or ``harness``: the benchmark launcher the instance runs."""
    module = type(instance.run_launcher).__module__
    kinds = {
        "benchmarks.k8s_launcher": "k8s",
        "benchmarks.docker_launcher": "docker",
        "benchmarks.ecs_launcher": "ecs",
    }
    return kinds.get(module, "harness")


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
    """The workers of ``run_ids`` (none resumed before) die: the harness reads a tag; on the
    fake Kubernetes API their Jobs fail, their pods OOMKilled; on the fake ECS their tasks
    stop (exit code 137); Docker: ``docker_workers``."""
    kind = launcher_kind(instance)
    if kind == "docker":
        from benchmarks.monitor_pass.docker_workers import crash_workers

        crash_workers(instance, run_ids)
        return
    if kind == "k8s":
        from dagster_k8s.job import get_job_name_from_run_id

        from dagster_run_monitor_tests.support.fake_k8s import CLUSTER

        for run_id in run_ids:
            CLUSTER.put_job(get_job_name_from_run_id(run_id), K8S_NAMESPACE, "failed")
        return
    if kind == "ecs":
        from benchmarks.ecs_launcher import ECS

        runs = instance.get_runs(RunsFilter(run_ids=list(run_ids)))
        ECS.stopped.update(run.tags["ecs/task_arn"] for run in runs)
        return
    with cached_schema_checks(instance):
        for run_id in run_ids:
            instance.add_run_tags(run_id, {HEALTH_TAG: "FAILED"})


def count_resumed(instance: DagsterInstance, run_ids: Sequence[str], before: dict[str, int]):
    """Runs that got one more "Launching a new run worker to resume run" event, are still
    STARTED, and whose (new) worker is healthy again (harness: its tag; Kubernetes: the Job
    of the resume was created, active; Docker: a new container id tag, that container
    running)."""
    from dagster_k8s.job import get_job_name_from_run_id

    from dagster_run_monitor.storage.eventlog import count_resume_attempts
    from dagster_run_monitor_tests.support.fake_k8s import CLUSTER

    after = count_resume_attempts(instance.event_log_storage, list(run_ids))
    resumed = 0
    records = {
        r.dagster_run.run_id: r.dagster_run
        for r in instance.get_run_records(filters=RunsFilter(run_ids=list(run_ids)))
    }
    kind = launcher_kind(instance)
    if kind == "docker":
        from benchmarks.monitor_pass.docker_workers import running_again

        running = running_again(instance, list(records.values()))
    for run_id in run_ids:
        run = records.get(run_id)
        if kind == "docker":
            healthy = run_id in running
        elif kind == "k8s":
            healthy = CLUSTER.state(get_job_name_from_run_id(run_id, after[run_id])) == "active"
        elif kind == "ecs":  # a new task (the launcher's tag), running
            from benchmarks.ecs_launcher import ECS

            healthy = run is not None and run.tags["ecs/task_arn"] not in ECS.stopped
        else:
            healthy = run is not None and run.tags.get(HEALTH_TAG) == "RUNNING"
        if (
            after[run_id] == before[run_id] + 1
            and run is not None
            and run.status == DagsterRunStatus.STARTED
            and healthy
        ):
            resumed += 1
    return resumed, after
