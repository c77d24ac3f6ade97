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
from dagster._core.storage.runs.schema import RunsTable
from dagster._core.storage.runs.sql_run_storage import SqlRunStorage

# The SQL tables of Dagster's storages, for reads batched across runs (the public API reads
# one run at a time): event_logs (run_id, dagster_event_type, timestamp, event) and runs
# (run_id, status, update_timestamp). Connections: SqlEventLogStorage.index_connection(),
# SqlRunStorage.connect() and .fetchall().
EVENT_LOGS = SqlEventLogStorageTable
RUNS = RunsTable
__all__ = ["EVENT_LOGS", "RUNS", "SqlEventLogStorage", "SqlRunStorage", "SqliteEventLogStorage"]

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


def docker_container(launcher: RunLauncher, run: DagsterRun) -> Any:
    """The run worker's container of a ``DockerRunLauncher`` (which has no debug info)."""
    return launcher._get_container(run)  # type: ignore[attr-defined]


def k8s_core_api(launcher: RunLauncher) -> Any:
    """The ``CoreV1Api`` a ``K8sRunLauncher`` calls (so the pods are read with its config)."""
    return launcher._api_client.core_api  # type: ignore[attr-defined]


def launcher_instance(launcher: RunLauncher) -> Any:
    """The instance a run launcher belongs to."""
    return launcher._instance  # type: ignore[attr-defined]
