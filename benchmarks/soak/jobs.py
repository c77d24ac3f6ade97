"""The soak's code location: chains of 1 to 6 steps under ``process_step_executor``,
``multiprocess`` and ``k8s_job_executor`` (step pods, in-cluster config), each step told by its
op config how long to run and what to do.

Every step records itself under ``$SOAK_DIR`` so that the fault injector and the checks need
no access to Dagster's internals:
- ``live/<run id>.<step>``: ``<its pid> <its run worker's pid>`` while the step runs;
- ``markers/<root run id>``: a line ``<step>`` each time the step completes (appended in one
  write), so that a step run twice in a run group shows;
- ``once/<root run id>.<step>.<what>``: a planned OOM kill or hang happens once per run group.
"""

import os
import threading
import time
from pathlib import Path
from typing import Any

from dagster import (
    Config,
    Definitions,
    Field,
    OpExecutionContext,
    Permissive,
    job,
    multiprocess_executor,
    op,
)
from dagster_k8s import k8s_job_executor

from dagster_run_monitor import process_step_executor

MAX_STEPS = 6
PROCESS_STEPS = process_step_executor.configured(
    {"health_check_interval_seconds": 2}, name="soak_process_steps"
)


def _in_cluster(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "load_incluster_config": True, "kubeconfig_file": None}


# Step pods created by the run worker's pod (in-cluster config, as in a Helm deployment); the
# run config's per_step_k8s_config gives a step its memory limit (a planned OOM kill).
K8S_STEPS = k8s_job_executor.configured(
    _in_cluster,
    config_schema={"per_step_k8s_config": Field(Permissive(), is_required=False)},
    name="soak_k8s_steps",
)
IN_POD = "pod"  # oom_cgroup: allocate under the step pod's own memory limit


class StepConfig(Config):
    seconds: float = 1.0
    fail: bool = False  # raise: a failure of the op's own code
    hang: bool = False  # block forever (once per run group): a hang
    oom_cgroup: str = ""  # join this memory cgroup (or IN_POD) and allocate past its limit (once)


def soak_dir() -> Path:
    return Path(os.environ["SOAK_DIR"])


def _root(context: OpExecutionContext) -> str:
    return context.run.root_run_id or context.run.run_id


def _once(context: OpExecutionContext, what: str) -> bool:
    """True the first time a step of this run group asks for ``what``."""
    path = soak_dir() / "once" / f"{_root(context)}.{context.op.name}.{what}"
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _run_worker_pid() -> int:
    """The run worker: this step's parent (a step process's, a multiprocess child's); 0 in a
    step pod, whose parent is its container's runtime (a shim whose command line may name
    this machine's Docker directory, so the run worker is told by its command: ``dagster api
    execute_run`` or ``resume_run``, or under DefaultRunLauncher a code server's
    ``multiprocessing`` child)."""
    parent = os.getppid()
    argv = _command(parent)
    if b"execute_run" in argv or b"resume_run" in argv:
        return parent
    if b"spawn_main" in argv and b"api\0grpc" in _command(_parent_of(parent)):
        return parent
    return 0


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _oom(cgroup: str) -> None:
    if cgroup != IN_POD:
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    time.sleep(2)  # its watcher samples it in the cgroup before the kill
    hog = bytearray(512 * 2**20)
    for i in range(0, len(hog), 4096):
        hog[i] = 1


def run_step(context: OpExecutionContext, config: StepConfig) -> None:
    live = soak_dir() / "live" / f"{context.run.run_id}.{context.op.name}"
    live.write_text(f"{os.getpid()} {_run_worker_pid()}")
    try:
        if config.oom_cgroup and _once(context, "oom"):
            _oom(config.oom_cgroup)
        if config.hang and _once(context, "hang"):
            threading.Event().wait()  # blocked: no event, the same stack, no CPU
        time.sleep(config.seconds)
        if config.fail:
            raise RuntimeError(f"a bug in {context.op.name} (planned by the soak)")
        with open(soak_dir() / "markers" / _root(context), "a") as markers:
            markers.write(f"{context.op.name}\n")
    finally:
        live.unlink(missing_ok=True)


def _step(index: int):
    @op(name=f"s{index}")
    def step(context: OpExecutionContext, config: StepConfig, after: int = 0) -> int:
        run_step(context, config)
        return index

    return step


STEPS = [_step(i) for i in range(1, MAX_STEPS + 1)]


def _chain(name: str, steps: int, executor):
    @job(name=name, executor_def=executor)
    def chain():
        value = STEPS[0]()
        for step in STEPS[1:steps]:
            value = step(value)

    return chain


EXECUTORS = {"process": PROCESS_STEPS, "multiprocess": multiprocess_executor, "k8s": K8S_STEPS}


def job_name(executor: str, steps: int) -> str:
    return f"soak_{executor}_{steps}"


defs = Definitions(
    jobs=[
        _chain(job_name(executor, n), n, definition)
        for executor, definition in EXECUTORS.items()
        for n in range(1, MAX_STEPS + 1)
    ]
)
