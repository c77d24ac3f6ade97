"""Real Dagster processes for tests: a DAGSTER_HOME, `dagster-daemon run`, `dagster dev`."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from dagster_run_monitor_tests.helpers import pg_url

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T = TypeVar("T")


def write_home(
    home: Path,
    run_monitoring: Mapping[str, Any],
    storage: str = "sqlite",
    launcher: Mapping[str, Any] | None = None,
) -> Path:
    """A DAGSTER_HOME whose dagster.yaml turns our monitor on."""
    config: dict[str, Any] = {
        "instance_class": {"module": "dagster_run_monitor", "class": "RunMonitorInstance"},
        "run_monitoring": {"enabled": True, **run_monitoring},
        "telemetry": {"enabled": False},
    }
    if launcher:
        config["run_launcher"] = dict(launcher)
    if storage == "postgres":
        config["storage"] = {"postgres": {"postgres_url": pg_url()}}
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def load_instance(home: Path) -> DagsterInstance:
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


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
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
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
