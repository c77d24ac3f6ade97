"""Every Dagster internal this package relies on, in one place.

Each stands in for a public API that Dagster (or one of its integrations) does not have;
``dagster_run_monitor_tests/test_internals.py`` fails, naming the internal and what it is used
for, when a Dagster release changes one. Checked against the range ``setup.py`` pins.
"""

from typing import Any

from dagster._core.launcher import RunLauncher
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.event_log import SqlEventLogStorage, SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.schema import KeyValueStoreTable, RunsTable, RunTagsTable
from dagster._core.storage.runs.sql_run_storage import SqlRunStorage

# The SQL tables of Dagster's storages, for reads and writes batched across runs (the public
# API reads and writes one run at a time): event_logs (run_id, dagster_event_type, timestamp,
# event), runs (run_id, status, run_body, update_timestamp) and run_tags (run_id, key, value).
# Connections: SqlEventLogStorage.index_connection(), SqlRunStorage.connect() and .fetchall();
# rows of events: SqlEventLogStorage.prepare_insert_event_batch (bulk_writes.py).
EVENT_LOGS = SqlEventLogStorageTable
RUNS = RunsTable
RUN_TAGS = RunTagsTable
KVS = KeyValueStoreTable  # key, value: workers' heartbeats (core.heartbeats)
__all__ = [
    "EVENT_LOGS",
    "KVS",
    "RUNS",
    "RUN_TAGS",
    "SqlEventLogStorage",
    "SqlRunStorage",
    "SqliteEventLogStorage",
]

# The factory `dagster-daemon run` and `dagster dev` build daemons with: there is no plugin
# API for a daemon type, so ours is added by wrapping this function (registration.py).
DAEMON_CONTROLLER = "dagster._daemon.controller"
DAEMON_FACTORY = "create_daemon_of_type"


def daemon_controller() -> Any:
    import dagster._daemon.controller as controller

    return controller


def concurrency_slots_iteration() -> Any:
    """The built-in monitoring daemon's freeing of concurrency slots, which ours replaces."""
    from dagster._daemon.monitoring import execute_concurrency_slots_iteration

    return execute_concurrency_slots_iteration


def storage_engine(storage: Any) -> Any:
    """A SQL storage's SQLAlchemy engine (no API to pool a storage's connections outside the
    webserver, which Dagster pools with ``optimize_for_webserver``)."""
    return getattr(storage, "_engine", None)


def replace_storage_engine(storage: Any, engine: Any) -> None:
    storage._engine = engine


def pg_engine(url: str, token_provider: Any, **kwargs: Any) -> Any:
    """A PostgreSQL engine as dagster-postgres makes its storages' (``create_pg_engine``, with
    its token provider, from dagster-postgres 0.29.3; SQLAlchemy's ``create_engine`` before)."""
    try:
        from dagster_postgres.utils import create_pg_engine
    except ImportError:
        import sqlalchemy

        return sqlalchemy.create_engine(url, **kwargs)
    return create_pg_engine(url, token_provider, **kwargs)


def docker_container(launcher: RunLauncher, run: DagsterRun) -> Any:
    """The run worker's container of a ``DockerRunLauncher`` (which has no debug info)."""
    return launcher._get_container(run)  # type: ignore[attr-defined]


def replace_docker_client_factory(launcher: RunLauncher, factory: Any) -> None:
    """A ``DockerRunLauncher`` builds a docker client for every call with its ``_get_client``
    (``container_context -> DockerClient``); the daemon's keeps one
    (``launchers/docker/launcher.py``)."""
    launcher._get_client = factory  # type: ignore[attr-defined]


def k8s_client(launcher: RunLauncher) -> Any:
    """The ``DagsterKubernetesClient`` a ``K8sRunLauncher`` calls: its ``get_job_status(job_name,
    namespace)`` is what a health check reads, its ``batch_api`` and ``core_api`` are the
    Kubernetes API objects (so Jobs and pods are read with the launcher's config)."""
    return launcher._api_client  # type: ignore[attr-defined]


def k8s_worker_job_name(launcher: RunLauncher, run: DagsterRun) -> str:
    """The name of the run's current run worker Job, as ``K8sRunLauncher.terminate`` names it
    (the run id and its resume attempt number)."""
    from dagster_k8s.job import get_job_name_from_run_id

    attempt = launcher._get_resume_attempt_number(run)  # type: ignore[attr-defined]
    return get_job_name_from_run_id(run.run_id, resume_attempt_number=attempt)


def k8s_context_tags() -> tuple[str, ...]:
    """The run tags a ``K8sRunLauncher``'s container context reads (``create_for_run`` reads
    tags only through ``get_user_defined_k8s_config``): ``dagster-k8s/config`` and the older
    ``dagster-k8s/resource_requirements``."""
    from dagster_k8s.job import K8S_RESOURCE_REQUIREMENTS_KEY, USER_DEFINED_K8S_CONFIG_KEY

    return (USER_DEFINED_K8S_CONFIG_KEY, K8S_RESOURCE_REQUIREMENTS_KEY)


def k8s_core_api(launcher: RunLauncher) -> Any:
    return k8s_client(launcher).core_api


def launcher_instance(launcher: RunLauncher) -> Any:
    """The instance a run launcher belongs to."""
    return launcher._instance  # type: ignore[attr-defined]


def run_storage_database(instance: Any) -> tuple[str, str] | None:
    """Where the instance's run storage is, for a worker's watcher to reach with the bare
    driver: ("sqlite", the runs.db path) or ("postgres", the URL); None for others."""
    storage = instance.run_storage
    url = getattr(storage, "postgres_url", None)  # dagster_postgres.PostgresRunStorage
    if isinstance(url, str):
        return "postgres", url
    conn = getattr(storage, "_conn_string", None)  # SqliteRunStorage
    if isinstance(conn, str) and conn.startswith("sqlite:///"):
        return "sqlite", conn[len("sqlite:///") :]
    return None


def missing() -> list[str]:
    """The internals above that the installed Dagster lacks (none in the supported range)."""
    gaps = []
    if getattr(daemon_controller(), DAEMON_FACTORY, None) is None:
        gaps.append(f"{DAEMON_CONTROLLER}.{DAEMON_FACTORY} (to run our daemon)")
    try:
        concurrency_slots_iteration()
    except ImportError:
        gaps.append("execute_concurrency_slots_iteration (to free concurrency slots)")
    for table, columns in (
        (EVENT_LOGS, {"run_id", "dagster_event_type", "timestamp", "event", "id"}),
        (RUNS, {"run_id", "status", "run_body", "update_timestamp"}),
        (RUN_TAGS, {"run_id", "key", "value"}),
        (KVS, {"key", "value"}),
    ):
        gaps += [f"the column {table.name}.{c}" for c in sorted(columns - set(table.c.keys()))]
    for cls, method in (
        (SqlEventLogStorage, "index_connection"),
        (SqlEventLogStorage, "prepare_insert_event_batch"),
        (SqlRunStorage, "connect"),
        (SqlRunStorage, "fetchall"),
    ):
        if not callable(getattr(cls, method, None)):
            gaps.append(f"{cls.__name__}.{method}")
    return gaps
