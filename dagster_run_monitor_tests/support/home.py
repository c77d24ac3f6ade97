"""DAGSTER_HOMEs and instances that turn our monitor on (the dagster.yaml comes from
`dagster_run_monitor.config.dagster_yaml`, as for the demo and the benchmark)."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.test_utils import instance_for_test

from dagster_run_monitor.config.dagster_yaml import instance_config, write_dagster_yaml
from dagster_run_monitor.core.pause import PAUSE_KEY
from dagster_run_monitor.integration.internals import storage_engine
from dagster_run_monitor_tests.support.postgres import pg_url


def write_home_for_url(
    home: Path, run_monitoring: Mapping[str, Any], launcher: Mapping[str, Any], postgres_url: str
) -> Path:
    """``write_home`` with PostgreSQL storage at ``postgres_url``."""
    return write_dagster_yaml(home, instance_config(run_monitoring, launcher, postgres_url))


def write_home(
    home: Path,
    run_monitoring: Mapping[str, Any],
    storage: str = "sqlite",
    launcher: Mapping[str, Any] | None = None,
) -> Path:
    """A DAGSTER_HOME whose dagster.yaml turns our monitor on."""
    postgres_url = pg_url() if storage == "postgres" else None
    return write_dagster_yaml(home, instance_config(run_monitoring, launcher, postgres_url))


# A container's run worker is its PID 1, and Dagster mirrors captured output to it through a
# `tail -F` child that dies with PID 1: a worker's last lines before it exits may never reach
# the container's log. Without capture they are written to it directly (the Docker and
# Kubernetes tests read the log tail in the failure message).
NO_COMPUTE_LOG_CAPTURE = {
    "module": "dagster._core.storage.noop_compute_log_manager",
    "class": "NoOpComputeLogManager",
}


def write_container_home(
    home: Path, run_monitoring: Mapping[str, Any], launcher: Mapping[str, Any]
) -> Path:
    """``write_home`` on PostgreSQL for run workers in containers (output not captured)."""
    config = instance_config(run_monitoring, launcher, pg_url())
    return write_dagster_yaml(home, {**config, "compute_logs": NO_COMPUTE_LOG_CAPTURE})


def load_instance(home: Path) -> DagsterInstance:
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


SCRIPTED_LAUNCHER = {
    "module": "dagster_run_monitor_tests.support.launchers",
    "class": "ScriptedRunLauncher",
}


@contextmanager
def monitor_instance(
    storage: str = "sqlite",
    run_monitoring: Mapping[str, Any] | None = None,
    launcher: Mapping[str, Any] | None = SCRIPTED_LAUNCHER,
) -> Iterator[DagsterInstance]:
    """A test instance (``instance_for_test``) with our monitor on."""
    postgres_url = pg_url() if storage == "postgres" else None
    overrides = instance_config(run_monitoring, launcher, postgres_url)
    with instance_for_test(overrides=overrides) as instance:
        if storage == "postgres":  # the session's database: what earlier tests left
            instance.wipe()
            instance.wipe_daemon_heartbeats()
            instance.run_storage.set_cursor_values({PAUSE_KEY: ""})  # wipe() keeps the kvs
        try:
            yield instance
        finally:
            close_pools(instance)


def close_pools(instance: DagsterInstance) -> None:
    """Close the connections of the pools our daemon gave the instance's storages (Dagster's
    storages never dispose their engine, and a pool would hold its connections until garbage
    collection: a suite's leftover pools reached PostgreSQL's max_connections)."""
    for storage in (instance.run_storage, instance.event_log_storage):
        engine = storage_engine(storage)
        if engine is not None:
            engine.dispose()
