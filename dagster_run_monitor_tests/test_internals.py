"""The Dagster internals of ``dagster_run_monitor/internals.py``, one check each, so that a
Dagster release that changes one fails here with what changed and what it is used for, not
somewhere in a pass."""

import importlib
import inspect
import re

import dagster
import pytest

from dagster_run_monitor.integration import internals

WHY = "dagster-run-monitor relies on it for"


def test_the_daemon_factory_that_dagster_daemon_run_calls():
    controller = importlib.import_module(internals.DAEMON_CONTROLLER)
    factory = getattr(controller, internals.DAEMON_FACTORY, None)
    assert factory is not None, (
        f"dagster {dagster.__version__} has no {internals.DAEMON_CONTROLLER}."
        f"{internals.DAEMON_FACTORY}; {WHY} registering its daemon type"
    )
    parameters = list(inspect.signature(inspect.unwrap(factory)).parameters)
    assert parameters[:2] == ["daemon_type", "instance"], (
        f"{internals.DAEMON_FACTORY} now takes {parameters}; {WHY} building its daemon"
    )


def test_the_concurrency_slots_iteration_of_the_builtin_monitor():
    iteration = internals.concurrency_slots_iteration()
    parameters = list(inspect.signature(iteration).parameters)
    assert parameters[:2] == ["workspace_process_context", "logger"], (
        f"execute_concurrency_slots_iteration now takes {parameters}; {WHY} freeing"
        " concurrency slots as the built-in monitoring daemon does"
    )


@pytest.mark.parametrize(
    "table, columns, use",
    [
        (
            internals.EVENT_LOGS,
            {"run_id", "dagster_event_type", "timestamp", "event", "id"},
            "batched event-log reads (launch, cancel, resume and step times)",
        ),
        (internals.RUNS, {"run_id", "status", "update_timestamp"}, "re-reading changed runs"),
        (
            internals.RUNS,
            {"run_id", "run_body", "update_timestamp"},
            "writing the tags of a batch of runs (bulk_writes)",
        ),
        (
            internals.RUN_TAGS,
            {"run_id", "key", "value"},
            "writing the tags of a batch of runs (bulk_writes)",
        ),
    ],
)
def test_the_sql_tables_read_in_batches(table, columns, use):
    missing = columns - set(table.c.keys())
    assert not missing, f"Dagster's {table.name} table has no column {sorted(missing)}; {WHY} {use}"


@pytest.mark.parametrize(
    "cls, method, use",
    [
        (internals.SqlEventLogStorage, "index_connection", "batched event-log reads"),
        (internals.SqlRunStorage, "connect", "claims (advisory locks)"),
        (internals.SqlRunStorage, "fetchall", "re-reading changed runs"),
        (
            internals.SqlEventLogStorage,
            "prepare_insert_event_batch",
            "writing the events of a batch of runs (bulk_writes)",
        ),
    ],
)
def test_the_storage_connections(cls, method, use):
    assert callable(getattr(cls, method, None)), (
        f"{cls.__name__}.{method} is gone in dagster {dagster.__version__}; {WHY} {use}"
    )


def test_the_engine_of_a_postgres_storage():
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    for storage in (PostgresRunStorage, PostgresEventLogStorage):
        assert "self._engine = " in inspect.getsource(storage.__init__), (
            f"{storage.__name__} keeps no _engine in this dagster-postgres; {WHY} pooling the"
            " daemon's PostgreSQL connections (storage_pool_size)"
        )


def test_the_launchers_clients():
    from dagster_docker import DockerRunLauncher
    from dagster_k8s import K8sRunLauncher

    assert callable(getattr(DockerRunLauncher, "_get_container", None)), (
        f"DockerRunLauncher._get_container is gone; {WHY} the container's state and log tail"
        " in failure messages"
    )
    get_client = getattr(DockerRunLauncher, "_get_client", None)
    assert (
        callable(get_client) and "container_context" in inspect.signature(get_client).parameters
    ), (
        f"DockerRunLauncher._get_client(container_context) is gone; {WHY} keeping one docker"
        " client instead of a new one (and a GET /version) per call"
    )
    assert callable(getattr(K8sRunLauncher, "_get_resume_attempt_number", None)), (
        f"K8sRunLauncher._get_resume_attempt_number is gone; {WHY} naming the Job of a lost"
        " worker to stop before its run is resumed"
    )
    init = inspect.getsource(K8sRunLauncher.__init__)
    assert "self._api_client" in init, (
        f"K8sRunLauncher no longer keeps _api_client; {WHY} reading the run worker's pods"
    )
    from dagster._core.launcher import RunLauncher

    assert isinstance(inspect.getattr_static(RunLauncher, "_instance", None), property), (
        f"RunLauncher._instance is gone; {WHY} counting a run's resumes to name its K8s Job"
    )


def test_the_tags_a_k8s_container_context_reads():
    import dagster_k8s.job
    from dagster_k8s.container_context import K8sContainerContext

    create = inspect.getsource(K8sContainerContext.create_for_run)
    reads = [line.strip() for line in create.splitlines() if ".tags" in line]
    assert reads == ["user_defined_k8s_config = get_user_defined_k8s_config(dagster_run.tags)"], (
        f"K8sContainerContext.create_for_run reads run tags otherwise now ({reads}); {WHY}"
        " remembering each run's container context until the tags it reads change"
    )
    source = inspect.getsource(dagster_k8s.job.get_user_defined_k8s_config)
    keys = {
        getattr(dagster_k8s.job, name) for name in set(re.findall(r"\b[A-Z0-9_]+_KEY\b", source))
    }
    assert keys == set(internals.k8s_context_tags()), (
        f"get_user_defined_k8s_config reads the tags {sorted(keys)}; {WHY} the same"
    )
