"""The system under test: a private PostgreSQL cluster, two DAGSTER_HOMEs on it (the first
with Dagster's run queue), two stock ``dagster-daemon run`` processes with our monitor, the
code location of ``jobs.py``, and a run launcher under faketime for the skewed runs; with
``--launcher k8s``, a namespace of the one-node cluster for the run worker and step pods."""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster_run_monitor.config.dagster_yaml import instance_config, write_dagster_yaml
from dagster_run_monitor_tests.support import k8s
from dagster_run_monitor_tests.support.home import NO_COMPUTE_LOG_CAPTURE
from dagster_run_monitor_tests.support.postgres import PrivateCluster
from dagster_run_monitor_tests.support.subprocesses import BIN, REPO_ROOT
from dagster_run_monitor_tests.support.workspace import write_workspace

JOBS = Path(__file__).with_name("jobs.py")
LOCATION = "soak"
BEAT_INTERVAL = 2
BEAT_TIMEOUT = 20
HANG_TIMEOUT = 20
POLL_SECONDS = 2
MAX_RESUMES = 3
MAX_STEP_RETRIES = 3
PROCESS_LAUNCHER = {
    "module": "dagster_run_monitor",
    "class": "ProcessRunLauncher",
    "config": {"terminate_grace_seconds": 5},
}


def monitoring(launcher: str) -> dict[str, Any]:
    """The monitor's settings, the same in both daemons."""
    return {
        "poll_interval_seconds": POLL_SECONDS,
        "max_resume_run_attempts": MAX_RESUMES if launcher in ("process", "k8s") else 0,
        "step_retries": {"enabled": True, "max_retries": MAX_STEP_RETRIES},
        "worker_heartbeats": {"interval_seconds": BEAT_INTERVAL, "timeout_seconds": BEAT_TIMEOUT},
        "alerts": {
            "log": True,
            "on": ["warning", "failed", "resumed", "canceled"],
            "callable": {"module": "benchmarks.soak.alerts", "function": "record"},
        },
    }


QUEUE = {
    "module": "dagster._core.run_coordinator",
    "class": "QueuedRunCoordinator",
    # a code server that is down (a lost host) delays a launch instead of failing the run
    "config": {
        "dequeue_interval_seconds": 1,
        "max_user_code_failure_retries": 30,
        "user_code_failure_retry_delay": 5,
    },
}


def k8s_launcher(root: Path) -> dict[str, Any]:
    """K8sRunLauncher in the soak's namespace: the soak's directory writable in every pod,
    and the host's process ids in them (the faults find a step's process by its pid file)."""
    env = [f"SOAK_DIR={root}", "PYTHONDONTWRITEBYTECODE=1"]
    return k8s.launcher_config(namespace(), [str(root)], env, pod_spec={"host_pid": True})


def namespace() -> str:
    return f"soak-{os.getpid()}"


def write_homes(root: Path, launcher: str, url: str) -> tuple[Path, Path]:
    """Home ``a`` (Dagster's run queue: its daemon dequeues and launches) and ``b``; the same
    storage and monitor settings."""
    launch = {"process": PROCESS_LAUNCHER, "k8s": k8s_launcher(root)}.get(launcher)
    shared: dict[str, Any] = {  # one place for the steps' outputs, whichever worker writes them
        "local_artifact_storage": {
            "module": "dagster._core.storage.root",
            "class": "LocalArtifactStorage",
            "config": {"base_dir": str(root / "artifacts")},
        }
    }
    if launcher == "k8s":  # a pod's DAGSTER_HOME is its read-only ConfigMap
        shared["compute_logs"] = NO_COMPUTE_LOG_CAPTURE
    homes = []
    # only ``a`` dequeues: Dagster's queue daemons do not share the queue (two would launch
    # a run twice), so ``b`` has the default coordinator
    direct = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
    homes_config = (("a", {"run_coordinator": QUEUE}), ("b", {"run_coordinator": direct}))
    for name, more in ((n, {**c, **shared}) for n, c in homes_config):
        home = write_dagster_yaml(
            root / f"home-{name}", instance_config(monitoring(launcher), launch, url, **more)
        )
        write_workspace(home, JOBS, LOCATION)
        homes.append(home)
    return homes[0], homes[1]


def soak_env(home: Path, soak_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DAGSTER_HOME=str(home), SOAK_DIR=str(soak_dir), PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("DAGSTER_CLI_API_GRPC_HOST", None)
    return env


@dataclass
class Daemon:
    """One of the two daemons (started again after a kill: a new process)."""

    name: str
    home: Path
    soak_dir: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.soak_dir / f"daemon-{self.name}.log", "a")  # noqa: SIM115
        with log:
            self.process = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-w", str(self.home / "workspace.yaml")],
                env=soak_env(self.home, self.soak_dir),
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    def kill(self) -> None:
        """SIGKILL the daemon process alone, as a lost container does (its code server is
        left to its own heartbeat timeout)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(30)


def faketime() -> str | None:
    return shutil.which("faketime")


class Skewed:
    """A process whose clock is 10 minutes behind (Debian's faketime) that launches the runs
    it is given on stdin: their run workers, watchers and steps inherit the skewed clock."""

    def __init__(self, home: Path, soak_dir: Path) -> None:
        faketime = shutil.which("faketime")
        if faketime is None:
            raise RuntimeError("faketime is missing (scripts/faketime installs Debian's)")
        env = soak_env(home, soak_dir)  # (DONT_FAKE_MONOTONIC=1 makes time.sleep fail: EINVAL)
        log = open(soak_dir / "skewed.log", "a")  # noqa: SIM115
        with log:
            self.process = subprocess.Popen(
                [faketime, "-f", "-10m", sys.executable, "-m", "benchmarks.soak.skewed"],
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )

    def launch(self, run_id: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(run_id + "\n")
        self.process.stdin.flush()


class Namespace:
    """The soak's namespace of the one-node cluster (scripts/k8s-cluster): the service
    account run workers use, the instance ConfigMap; its pods' containers and the kubelet."""

    def __init__(self, home: Path) -> None:
        reason = k8s.cluster_unavailable()
        if reason:
            raise RuntimeError(reason)
        self.name = namespace()
        k8s.create_namespace(self.name)
        k8s.put_instance_config_map(self.name, (home / "dagster.yaml").read_text())
        self.core, self.batch, _ = k8s.apis()

    def worker_pid(self, run_id: str) -> int:
        """The host pid of the run's live run worker (its container's first process), or 0."""
        for container in k8s.worker_containers(self.name, run_id):
            pid = container.attrs.get("State", {}).get("Pid") or 0
            if pid:
                return int(pid)
        return 0

    def delete_step_pod(self, run_id: str, step: str) -> str:
        """Delete the step's running pod through the API (its default grace period)."""
        pods = self.core.list_namespaced_pod(
            self.name, label_selector=f"dagster/run-id={run_id},dagster/op={step}"
        ).items
        running = [p for p in pods if p.status.phase == "Running"]
        if not running:
            raise ProcessLookupError(f"no running pod of step {step}")
        self.core.delete_namespaced_pod(running[0].metadata.name, self.name)
        return running[0].metadata.name

    def delete(self) -> None:
        k8s.delete_namespace(self.name)


def start_database(soak_dir: Path) -> PrivateCluster:
    cluster = PrivateCluster()
    cluster.init()
    cluster.start()
    return cluster


def ours(soak_dir: Path) -> list[int]:
    """Every process started for this soak (its environment names ``soak_dir``)."""
    needle = f"SOAK_DIR={soak_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def stop_everything(soak_dir: Path, daemons: list[Daemon], skewed: Skewed | None) -> None:
    """SIGTERM the daemons, then SIGKILL (and SIGCONT) whatever of the soak is left."""
    for daemon in daemons:
        if daemon.process and daemon.process.poll() is None:
            os.killpg(daemon.process.pid, signal.SIGTERM)
    for daemon in daemons:
        if daemon.process:
            try:
                daemon.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
    if skewed is not None:
        skewed.process.kill()
        skewed.process.wait(10)
    for _ in range(3):
        for pid in ours(soak_dir):
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        time.sleep(0.5)


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found
