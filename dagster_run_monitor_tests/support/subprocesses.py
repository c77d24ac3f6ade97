"""Real Dagster processes for tests, each in its own process group: `dagster-daemon run`,
`dagster dev`, and what their logs say."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


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


REPO_ROOT = Path(__file__).resolve().parents[2]


BIN = Path(sys.executable).parent


T = TypeVar("T")


def process_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("DAGSTER_CLI_API_GRPC_HOST", None)
    return env


@contextmanager
def running(args: list[str], home: Path, log_name: str) -> Iterator[subprocess.Popen]:
    """Run a Dagster command in its own process group; stop it (and its children) afterwards."""
    log_path = home / log_name
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            args,
            env=process_env(home),
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_group(proc)
        if os.environ.get("DAGSTER_RUN_MONITOR_SHOW_LOGS"):
            print(log_path.read_text())


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL what is left of it: nothing a test started (a
    code server waiting for a blocked run, its run workers, their watchers) outlives it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


@contextmanager
def daemon(home: Path, log_name: str = "daemon.log") -> Iterator[subprocess.Popen]:
    """The stock `dagster-daemon run`, as an operator starts it."""
    args = [str(BIN / "dagster-daemon"), "run", "--empty-workspace"]
    with running(args, home, log_name) as proc:
        yield proc


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
