"""The faults the soak injects, each logged with its time in ``faults.jsonl``.

Immediate faults hit a step that is running now (its pid files under ``live/``): SIGKILL its
run worker, SIGKILL the step process, SIGKILL the run worker with the code server that
started it (a lost host, DefaultRunLauncher), SIGSTOP the run worker's whole process tree for
twice the heartbeat timeout (a partition that heals). Global faults: SIGKILL a daemon and start
it 10 to 60 s later; stop PostgreSQL for 5 to 20 s. Planned faults shape the next run: a step
OOM-killed by the kernel in a memory cgroup, a step that blocks (a hang), a run launched from
a host whose clock is 10 minutes off. On the cluster (``--launcher k8s``) a run worker is its
pod's container; a lost node is the kubelet frozen (SIGSTOP) while a run worker's container is
killed, for twice the heartbeat timeout; a step pod is deleted through the API; an OOM kill is
a step pod's own memory limit.
"""

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.soak.cpu import TICK
from benchmarks.soak.system import BEAT_TIMEOUT, descendants

IMMEDIATE = ("kill_run_worker", "kill_step", "kill_host", "partition", "node_loss", "delete_pod")
GLOBAL = ("daemon_restart", "pg_outage")
PLANNED = ("oom", "hang", "skew")
CLUSTER_ONLY = ("node_loss", "delete_pod")
WEIGHTS = {
    "kill_run_worker": 3,
    "kill_step": 3,
    "kill_host": 2,
    "partition": 1,
    "node_loss": 1,
    "delete_pod": 2,
    "daemon_restart": 1,
    "pg_outage": 0.5,
    "oom": 1,
    "hang": 1,
    "skew": 1,
}


def kinds_for(launcher: str, cgroups: bool) -> dict[str, float]:
    """The fault kinds this launcher meets (a lost host is DefaultRunLauncher's: there the
    code server starts the run worker; lost nodes and deleted pods the cluster's), OOM kills
    with memory cgroups or pods' limits; no skewed clock in a pod."""
    cluster = launcher == "k8s"
    return {
        kind: weight
        for kind, weight in WEIGHTS.items()
        if (kind != "kill_host" or launcher == "default")
        and (kind not in CLUSTER_ONLY or cluster)
        and (kind != "oom" or cgroups or cluster)
        and (kind != "skew" or not cluster)
    }


@dataclass
class Fault:
    kind: str
    time: float
    run_id: str | None = None
    step: str | None = None
    pids: list[int] = field(default_factory=list)
    detail: str = ""
    seconds: float = 0.0  # how long it lasts (partition, daemon down, database down)


@dataclass(frozen=True)
class LiveStep:
    run_id: str
    step: str
    pid: int
    worker: int


def live_steps(soak_dir: Path) -> list[LiveStep]:
    """The steps running now, by the files their ops write as they start (a killed step's
    stays: its pid, reused by a later process, is not the step's)."""
    found = []
    for path in sorted((soak_dir / "live").iterdir()):
        try:
            pid, worker = map(int, path.read_text().split())
            written = path.stat().st_mtime
        except (OSError, ValueError):
            continue
        run_id, _, step = path.name.partition(".")
        if _alive(pid, written) and (worker == 0 or _alive(worker, written)):  # 0: a step pod
            found.append(LiveStep(run_id, step, pid, worker))
    return found


def _alive(pid: int, before: float | None = None) -> bool:
    """Running (not a zombie, not stopped already), and started by ``before`` when given."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    if fields[0] in ("Z", "X", "T"):
        return False
    return before is None or _started(int(fields[19])) <= before + 1


def _started(ticks: int) -> float:
    """A process's start time (``/proc/<pid>/stat``'s field 22), as a timestamp."""
    return BOOTED + ticks / TICK


BOOTED = next(  # the machine's boot time (/proc/stat's btime)
    int(line.split()[1])
    for line in Path("/proc/stat").read_text().splitlines()
    if line.startswith("btime ")
)


def _kill(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def strike(kind: str, target: LiveStep, kubelet: int = 0) -> Fault:
    """Inject an immediate fault on ``target``'s run (not ``delete_pod``: the API's); the
    caller undoes a partition or a lost node."""
    now = time.time()
    fault = Fault(kind, now, target.run_id, target.step)
    if kind != "kill_step" and not target.worker:
        raise ProcessLookupError(f"no run worker of {target.run_id} found")
    if kind == "kill_step":
        fault.pids = [target.pid]
        _kill(fault.pids, signal.SIGKILL)
    elif kind == "kill_run_worker":
        fault.pids = [target.worker]
        _kill(fault.pids, signal.SIGKILL)
    elif kind == "kill_host":
        server = parent_of(target.worker)
        if server <= 1:
            raise ProcessLookupError(f"run worker {target.worker} has no code server left")
        fault.pids = [target.worker, server]
        fault.detail = f"code server {server}"
        _kill(fault.pids, signal.SIGKILL)
    elif kind == "partition":
        fault.pids = descendants(target.worker)
        fault.seconds = 2 * BEAT_TIMEOUT
        _kill(fault.pids, signal.SIGSTOP)
    elif kind == "node_loss":  # healed: SIGCONT to the kubelet (the worker stays dead)
        fault.pids = [kubelet]
        fault.detail = f"run worker {target.worker} killed"
        fault.seconds = 2 * BEAT_TIMEOUT
        _kill([kubelet], signal.SIGSTOP)
        _kill([target.worker], signal.SIGKILL)
    else:
        raise ValueError(kind)
    return fault


def heal(fault: Fault) -> None:
    _kill(fault.pids, signal.SIGCONT)


class FaultLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, fault: Fault) -> None:
        with open(self.path, "a") as log:
            log.write(json.dumps(asdict(fault)) + "\n")


def read_faults(path: Path) -> list[Fault]:
    if not path.exists():
        return []
    return [Fault(**json.loads(line)) for line in path.read_text().splitlines() if line]
