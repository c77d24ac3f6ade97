"""PostgreSQL for tests: the shared server on 127.0.0.1:5432 (a database per test session),
and private throw-away clusters a test may stop and start."""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dagster_run_monitor_tests.support.subprocesses import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivateCluster:
    """A throw-away PostgreSQL 15 cluster of this test's own, run by the ``postgres`` OS user,
    that the test may stop and start (never the shared one on port 5432)."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="pgchaos-"))
        shutil.chown(self.directory, "postgres", "postgres")
        self.data = self.directory / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, *args: str, timeout: float = 120) -> None:
        command = ["runuser", "-u", "postgres", "--", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stdout}{result.stderr}")

    def init(self) -> None:
        self._pg(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-N"
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c max_connections=200"
        )
        log = str(self.directory / "server.log")
        self._pg(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start"
        )

    def stop(self) -> None:
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        command = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"]
        result = subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True)
        return result.returncode == 0

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


def require_private_postgres() -> None:
    """Skip with the reason on a developer's machine without PostgreSQL 15's server binaries
    (or without root to run them as ``postgres``); fail in CI."""
    reason = None
    if not (PG_BIN / "initdb").exists():
        reason = f"{PG_BIN / 'initdb'} not found (apt-get install postgresql-15)"
    elif os.geteuid() != 0 or shutil.which("runuser") is None:
        reason = "a private cluster needs root and runuser to run initdb as the postgres user"
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the PostgreSQL restart test, but {reason}")
    pytest.skip(reason)


@contextmanager
def private_postgres() -> Iterator[PrivateCluster]:
    require_private_postgres()
    cluster = PrivateCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


PG_SERVER = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


PG_DATABASE = os.environ.get("DAGSTER_RUN_MONITOR_PG_DATABASE", f"run_monitor_test_{os.getpid()}")


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


def require_postgres() -> None:
    """Skip with the reason on a developer's machine without Postgres; fail in CI."""
    reason = postgres_unavailable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Postgres tests, but {reason}")
    pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432 ({reason})")
