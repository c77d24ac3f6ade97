"""A code location for the Docker step-retry test: each step its own container
(``docker_executor``), one step that needs more memory than its container's first limit.

Each op appends a line to ``$DAGSTER_HOME/markers/<root run id>`` (DAGSTER_HOME is the
instance's root directory, mounted into the containers at the same path), so the test counts
which steps ran, and which attempt of the run group each run was, across the group."""

from pathlib import Path

from dagster import Definitions, OpExecutionContext, job, op
from dagster_docker import docker_executor

ALLOCATE_MIB = 640  # over a 256m container, well within the retry's 1024m


def _marker(context: OpExecutionContext) -> Path:
    folder = Path(context.instance.root_directory) / "markers"
    folder.mkdir(exist_ok=True)
    return folder / (context.run.root_run_id or context.run.run_id)


def done(context: OpExecutionContext, line: str) -> None:
    with open(_marker(context), "a") as markers:
        markers.write(f"{line}\n")


@op
def first(context: OpExecutionContext) -> int:
    done(context, "first")
    return 1


@op
def outgrows_memory(context: OpExecutionContext, value: int) -> int:
    """Allocates and touches ``ALLOCATE_MIB`` on every attempt: the kernel kills its container
    over a 256m limit, and the attempt fits once the retry raised the limit. The marker says
    which attempt of the run group this is (the first one is expected to die)."""
    attempts = _marker(context).with_suffix(".attempts")
    attempt = len(attempts.read_text().split()) + 1 if attempts.exists() else 1
    with open(attempts, "a") as written:
        written.write(f"{context.run_id}\n")
    context.log.info(f"attempt {attempt}: allocating {ALLOCATE_MIB} MiB")
    hog = bytearray(ALLOCATE_MIB << 20)
    for i in range(0, len(hog), 4096):  # touch every page
        hog[i] = 1
    del hog
    done(context, f"outgrows_memory attempt {attempt}")
    return value + 1


@job(executor_def=docker_executor)
def docker_outgrows_memory():
    outgrows_memory(first())


defs = Definitions(jobs=[docker_outgrows_memory])
