"""The instances: PostgreSQL databases of the benchmark's own or SQLite homes, the daemon."""

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterInstance
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import EmptyWorkspaceTarget

from benchmarks.monitor_pass.constants import RUN_MONITORING
from dagster_run_monitor.config.dagster_yaml import instance_config, write_dagster_yaml
from dagster_run_monitor_tests.support.postgres import pg_admin as support_pg_admin


def pg_url(database: str) -> str:
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"


def pg_admin(statement: str) -> None:
    support_pg_admin(statement, dbname="postgres", connect_timeout=5)


@contextlib.contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """A PostgreSQL database of the benchmark's own on the local server, dropped after; its
    URL."""
    check_database_name(name)
    pg_admin(f"DROP DATABASE IF EXISTS {name}")
    pg_admin(f"CREATE DATABASE {name}")
    try:
        yield pg_url(name)
    finally:
        pg_admin(f"DROP DATABASE IF EXISTS {name}")


def check_database_name(name: str) -> None:
    if name in ("test", "postgres", "template0", "template1") or name.startswith(
        "run_monitor_test_"
    ):
        raise SystemExit(
            f"Refusing to use database {name!r}: it belongs to the tests or the server"
        )


K8S_NAMESPACE = "dagster"
K8S_IMAGE = "example.com/etl:1.0"
LAUNCHERS = {
    "harness": lambda latency: {
        "module": "benchmarks.launcher",
        "class": "LatencyRunLauncher",
        "config": {"latency_seconds": latency},
    },
    "k8s": lambda latency: {  # as Dagster's Helm chart configures it
        "module": "benchmarks.k8s_launcher",
        "class": "LatencyK8sRunLauncher",
        "config": {
            "latency_seconds": latency,
            "service_account_name": "dagster",
            "instance_config_map": "dagster-instance",
            "dagster_home": "/opt/dagster/dagster_home",
            "job_image": K8S_IMAGE,
            "job_namespace": K8S_NAMESPACE,
            "load_incluster_config": False,
        },
    },
    "ecs": lambda latency: {  # a task definition per run, as without task_definition
        "module": "benchmarks.ecs_launcher",
        "class": "LatencyEcsRunLauncher",
        "config": {
            "latency_seconds": latency,
            "use_current_ecs_task_config": False,
            "secrets_tag": None,
        },
    },
}


def write_home(home: str, storage: str, args: argparse.Namespace, n: int) -> None:
    monitoring = dict(RUN_MONITORING)
    if args.health_check_threads:
        monitoring["health_check_threads"] = args.health_check_threads
    for setting in args.monitor or []:
        key, _, value = setting.partition("=")
        monitoring[key] = yaml.safe_load(value)
    if args.launcher == "docker":
        from benchmarks.monitor_pass.docker_workers import launcher_config

        launcher = launcher_config(args, n)
    else:
        launcher = LAUNCHERS[args.launcher](args.latency)
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
    from dagster_run_monitor.storage.pooling import pool_postgres_connections

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
                    patched.append((storage, name, vars(storage).get(name)))
                    setattr(storage, name, lambda value=value: value)
    known_snapshots: set[str] = set()
    has_job_snapshot = instance.run_storage.has_job_snapshot

    def cached_has_job_snapshot(snapshot_id: str) -> bool:
        if snapshot_id not in known_snapshots and has_job_snapshot(snapshot_id):
            known_snapshots.add(snapshot_id)
        return snapshot_id in known_snapshots

    patched.append((instance.run_storage, "has_job_snapshot", None))
    instance.run_storage.has_job_snapshot = cached_has_job_snapshot
    try:
        yield
    finally:
        for storage, name, previous in reversed(patched):  # the daemon's own, if it had one
            if previous is None:
                delattr(storage, name)
            else:
                setattr(storage, name, previous)
