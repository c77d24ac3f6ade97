import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
from dagster import DagsterInstance
from dagster._core.test_utils import create_test_daemon_workspace_context, instance_for_test
from dagster._core.workspace.load_target import EmptyWorkspaceTarget

from dagster_run_monitor_tests.helpers import (
    create_pg_database,
    drop_pg_database,
    pg_url,
    postgres_unavailable,
)

INSTANCE_CLASS = {"module": "dagster_run_monitor", "class": "RunMonitorInstance"}
SCRIPTED_LAUNCHER = {
    "module": "dagster_run_monitor_tests.launchers",
    "class": "ScriptedRunLauncher",
}


@pytest.fixture(autouse=True)
def clock_not_left_frozen() -> Iterator[None]:
    """Fail the test that leaves Dagster's clock frozen (``freeze_time`` entered in two
    threads at once restores the wrong function), instead of every later test that needs
    time to pass."""
    import dagster._time as clock

    def current():
        return clock._mockable_get_current_timestamp, clock._mockable_get_current_datetime

    real = current()
    yield
    if current() != real:
        clock._mockable_get_current_timestamp, clock._mockable_get_current_datetime = real
        pytest.fail("this test left Dagster's clock frozen (freeze_time used from two threads?)")


def require_postgres() -> None:
    """Skip with the reason on a developer's machine without Postgres; fail in CI."""
    reason = postgres_unavailable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Postgres tests, but {reason}")
    pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432 ({reason})")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of this session's own on the local server, dropped at the end."""
    require_postgres()
    create_pg_database()
    try:
        yield pg_url()
    finally:
        drop_pg_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request) -> str:
    if request.param == "postgres":
        request.getfixturevalue("postgres_database")
    return request.param


@contextmanager
def monitor_instance(
    storage: str = "sqlite",
    run_monitoring: Mapping[str, Any] | None = None,
    launcher: Mapping[str, Any] | None = SCRIPTED_LAUNCHER,
) -> Iterator[DagsterInstance]:
    overrides: dict[str, Any] = {
        "instance_class": INSTANCE_CLASS,
        "run_monitoring": {"enabled": True, **(run_monitoring or {})},
    }
    if launcher:
        overrides["run_launcher"] = dict(launcher)
    if storage == "postgres":
        overrides["storage"] = {"postgres": {"postgres_url": pg_url()}}
    with instance_for_test(overrides=overrides) as instance:
        if storage == "postgres":
            instance.wipe()
            instance.wipe_daemon_heartbeats()
        yield instance


@pytest.fixture
def make_instance(storage):
    """Factory: ``with make_instance(run_monitoring={...}) as instance``."""
    return lambda **kwargs: monitor_instance(storage, **kwargs)


@pytest.fixture
def instance(make_instance) -> Iterator[DagsterInstance]:
    with make_instance() as instance:
        yield instance


@pytest.fixture
def workspace_context():
    """A daemon workspace context factory for an instance (no code locations)."""

    @contextmanager
    def factory(instance: DagsterInstance):
        with create_test_daemon_workspace_context(EmptyWorkspaceTarget(), instance) as context:
            yield context

    return factory
