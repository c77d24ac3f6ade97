"""Helpers for the reliability tests: a launcher that records each worker it launches, fast
run creation, what the event log shows per run, daemons to SIGKILL, a private PostgreSQL."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, ResumeRunContext, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun, RunsFilter
from dagster._core.test_utils import create_run_for_test
from dagster._time import get_current_timestamp

from dagster_run_monitor import constants as c
from dagster_run_monitor.pooling import pool_postgres_connections
from dagster_run_monitor_tests.launchers import (
    AFTER_RESUME_TAG,
    HEALTH_TAG,
    ScriptedRunLauncher,
    scripted_health,
)
from dagster_run_monitor_tests.processes import BIN, free_port, process_env, write_home

LAUNCHED_TAG = "test/launched_attempts"  # attempt numbers whose new worker was launched: "1,2"
RESUME_SLEEP_TAG = "test/resume_sleep"  # seconds resume_run takes before the worker is launched
RACE_TAG = "test/race"  # RacingRunLauncher: another daemon acts during this run's health check
RECORDING_LAUNCHER = {
    "module": "dagster_run_monitor_tests.chaos",
    "class": "RecordingRunLauncher",
}
RACING_LAUNCHER = {"module": "dagster_run_monitor_tests.chaos", "class": "RacingRunLauncher"}
PG_BIN = Path("/usr/lib/postgresql/15/bin")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RecordingRunLauncher(ScriptedRunLauncher):
    """ScriptedRunLauncher whose resume records the attempt it launched, in the same tag write
    that starts the "new worker": a resume event without its launch is a resume cut short."""

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """ScriptedRunLauncher's answer, read in one query instead of two (``get_run_by_id``
        also checks the schema): three daemons check hundreds of runs a second."""
        fresh = self._instance.get_runs(RunsFilter(run_ids=[run.run_id]))
        return scripted_health(fresh[0] if fresh else run)

    def resume_run(self, context: ResumeRunContext) -> None:
        run = self._instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
        if RESUME_SLEEP_TAG in run.tags:  # a launcher's API call takes time
            time.sleep(float(run.tags[RESUME_SLEEP_TAG]))
        launched = [a for a in run.tags.get(LAUNCHED_TAG, "").split(",") if a]
        launched.append(str(context.resume_attempt_number))
        after = run.tags.get(AFTER_RESUME_TAG, WorkerStatus.RUNNING.value)
        tags = {HEALTH_TAG: after, LAUNCHED_TAG: ",".join(launched)}
        self._instance.add_run_tags(run.run_id, tags)


def launched_attempts(run: DagsterRun) -> list[int]:
    return [int(a) for a in run.tags.get(LAUNCHED_TAG, "").split(",") if a]


# --- runs ---------------------------------------------------------------------------------


def pool_connections(instance: DagsterInstance, size: int = 8) -> None:
    """Give this test process's Postgres storages a connection pool, as our daemon does for
    itself (Dagster's NullPool opens a connection per statement group: ~300 ms per run
    created on a busy machine)."""
    pool_postgres_connections(instance, size)


def started_runs(
    instance: DagsterInstance,
    count: int,
    tags: Mapping[str, str] | None = None,
    started: float | None = None,
    threads: int = 4,
) -> list[DagsterRun]:
    """``count`` STARTED runs, through the events Dagster writes (launched a second before
    ``started``, default now), a few at a time. The times go into the events themselves:
    ``helpers.make_run`` freezes Dagster's clock, which is not safe from several threads."""

    def one(_: int) -> DagsterRun:
        run = create_run_for_test(instance, job_name="monitored_job", tags=dict(tags or {}))
        at = started if started is not None else get_current_timestamp()
        for event_type, timestamp in (
            (DagsterEventType.PIPELINE_STARTING, at - 1),
            (DagsterEventType.RUN_START, at),
        ):
            event = DagsterEvent(event_type_value=event_type.value, job_name=run.job_name)
            instance.report_dagster_event(event, run_id=run.run_id, timestamp=timestamp)
        return run

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def current_runs(instance: DagsterInstance, run_ids: Sequence[str]) -> dict[str, DagsterRun]:
    """The runs as stored now, in one query per 500 ids."""
    runs: dict[str, DagsterRun] = {}
    for start in range(0, len(run_ids), 500):
        chunk = list(run_ids[start : start + 500])
        runs.update({r.run_id: r for r in instance.get_runs(RunsFilter(run_ids=chunk))})
    return runs


@dataclass(frozen=True)
class RunLog:
    """What a user reads in one run's event log."""

    events: list[tuple[str, str, float]]  # (event type or LOG, message, timestamp)

    def count(self, message: str) -> int:
        return sum(m == message for _, m, _ in self.events)

    def times(self, message: str) -> list[float]:
        return [t for _, m, t in self.events if m == message]

    def of_type(self, event_type: DagsterEventType) -> list[str]:
        return [m for t, m, _ in self.events if t == event_type.value]

    @property
    def resumes(self) -> int:
        return self.count(c.RESUME_RUN_LOG_MESSAGE)

    @property
    def failures(self) -> list[str]:
        return self.of_type(DagsterEventType.RUN_FAILURE)


def run_logs(
    instance: DagsterInstance, run_ids: Sequence[str], threads: int = 8
) -> dict[str, RunLog]:
    """Each run's event log, read as the UI reads it (``instance.all_logs``)."""

    def read(run_id: str) -> RunLog:
        return RunLog(
            [
                (
                    e.dagster_event.event_type_value if e.dagster_event else "LOG",
                    e.message,
                    e.timestamp,
                )
                for e in instance.all_logs(run_id)
            ]
        )

    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(run_ids, pool.map(read, run_ids), strict=True))


# --- daemon processes ---------------------------------------------------------------------


def start_daemon(home: Path, log_name: str) -> subprocess.Popen:
    """The stock ``dagster-daemon run`` in its own process group; the caller stops it
    (``kill_group`` or ``processes.stop_group``)."""
    with open(home / log_name, "w") as log:
        return subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "--empty-workspace"],
            env=process_env(home),
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group: no clean-up of any kind runs in the daemon."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


def log_text(path: Path) -> str:
    """A daemon's log without its colour codes."""
    try:
        return _ANSI.sub("", path.read_text(errors="replace"))
    except FileNotFoundError:
        return ""


_RUN_LINE = re.compile(r"RunMonitorDaemon - INFO - Run [0-9a-f-]{36}\b(.*)")
_NOT_AN_ACTION = ("another daemon", "changed during the pass")


def action_lines(text: str) -> int:
    """How many actions a daemon's log records: its INFO lines about one run, less those
    saying it left the run alone."""
    return sum(not any(skip in rest for skip in _NOT_AN_ACTION) for rest in _RUN_LINE.findall(text))


def write_home_for_url(
    home: Path, run_monitoring: Mapping[str, Any], launcher: Mapping[str, Any], postgres_url: str
) -> Path:
    """``processes.write_home`` with Postgres storage at ``postgres_url``."""
    write_home(home, run_monitoring, "sqlite", launcher)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["storage"] = {"postgres": {"postgres_url": postgres_url}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


# --- a private PostgreSQL cluster ---------------------------------------------------------


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


class RacingRunLauncher(RecordingRunLauncher):
    """RecordingRunLauncher that runs ``race`` (once per run carrying ``RACE_TAG``) inside a
    health check, after reading the worker's health: another daemon acting at that moment."""

    race: Callable[[DagsterRun], None] | None = None
    _raced: set[str] = set()

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        result = super().check_run_worker_health(run)
        race = type(self).race
        if race is not None and RACE_TAG in run.tags and run.run_id not in self._raced:
            self._raced.add(run.run_id)
            race(run)
        return result
