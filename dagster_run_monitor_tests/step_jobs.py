"""A code location for the step-retry tests: steps whose worker dies, or whose code raises.

Each op appends a line to ``<DAGSTER_HOME>/markers/<root run id>`` when it completes, so a test
counts how many times each step ran across a run group."""

import os
import signal
import time
from pathlib import Path

from dagster import Definitions, OpExecutionContext, job, multiprocess_executor, op

from dagster_run_monitor import process_step_executor

FAST_PROCESS_STEPS = process_step_executor.configured(
    {"health_check_interval_seconds": 1}, name="fast_process_step"
)


def _marker(context: OpExecutionContext) -> Path:
    folder = Path(context.instance.root_directory) / "markers"
    folder.mkdir(exist_ok=True)
    return folder / (context.run.root_run_id or context.run.run_id)


def done(context: OpExecutionContext) -> None:
    with open(_marker(context), "a") as markers:
        markers.write(f"{context.op.name}\n")


@op
def first(context: OpExecutionContext) -> int:
    done(context)
    return 1


@op
def dies_once(context: OpExecutionContext, value: int) -> int:
    """SIGKILLs its own worker on the run group's first attempt, succeeds on the next."""
    crashed = _marker(context).with_suffix(".crashed")
    if not crashed.exists():
        crashed.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    done(context)
    return value + 1


@op
def always_dies(context: OpExecutionContext, value: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return value


@op
def raises(context: OpExecutionContext, value: int) -> int:
    raise ValueError("a bug in the op")


@job(executor_def=FAST_PROCESS_STEPS)
def process_dies_once():
    dies_once(first())


@job(executor_def=multiprocess_executor)
def multiprocess_dies_once():
    dies_once(first())


@job(executor_def=FAST_PROCESS_STEPS)
def process_always_dies():
    always_dies(first())


@job(executor_def=FAST_PROCESS_STEPS)
def process_raises():
    raises(first())


@op
def oom_once(context: OpExecutionContext, value: int) -> int:
    """On the run group's first attempt, joins the memory cgroup named in
    ``<DAGSTER_HOME>/oom_cgroup`` and allocates past its limit: the kernel kills it."""
    crashed = _marker(context).with_suffix(".crashed")
    if not crashed.exists():
        crashed.touch()
        cgroup = (Path(context.instance.root_directory) / "oom_cgroup").read_text().strip()
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
        time.sleep(3)  # its run worker sees it there (health checks every second)
        hog = bytearray(400 * 2**20)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
    done(context)
    return value + 1


@job(executor_def=process_step_executor)
def process_oom_once():
    oom_once(first())


@job(executor_def=multiprocess_executor)
def multiprocess_oom_once():
    oom_once(first())


defs = Definitions(
    jobs=[
        process_dies_once,
        multiprocess_dies_once,
        process_always_dies,
        process_raises,
        process_oom_once,
        multiprocess_oom_once,
    ]
)
