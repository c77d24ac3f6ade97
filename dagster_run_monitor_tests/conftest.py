"""Fixtures shared by the suites; the helpers themselves are in ``support/``."""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from dagster import DagsterInstance
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import EmptyWorkspaceTarget

from dagster_run_monitor_tests.support.home import monitor_instance
from dagster_run_monitor_tests.support.postgres import (
    create_pg_database,
    drop_pg_database,
    pg_url,
    require_postgres,
)


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
