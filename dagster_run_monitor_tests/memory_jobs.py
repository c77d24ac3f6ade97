"""A code location for the memory tests: ops that touch a given amount of memory, optionally
after moving their own process into a memory cgroup (root: the tests make the cgroup)."""

import os
import time

from dagster import Config, Definitions, in_process_executor, job, multiprocess_executor, op

from dagster_run_monitor import process_step_executor

FAST_PROCESS_STEPS = process_step_executor.configured(
    {"health_check_interval_seconds": 1}, name="fast_process_step"
)


class Touch(Config):
    megabytes: int = 0  # allocated and written, page by page
    hold_seconds: float = 0.0  # kept that long (the watcher samples it)
    cgroup: str = ""  # a cgroup directory to join first ("": stay)


@op
def touch(config: Touch) -> int:
    if config.cgroup:
        with open(os.path.join(config.cgroup, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
        time.sleep(2)  # its watcher sees it there (a container's worker is there from its start)
    hog = bytearray(config.megabytes * 10**6)
    for i in range(0, len(hog), 4096):
        hog[i] = 1
    time.sleep(config.hold_seconds)
    return len(hog)


@job(executor_def=in_process_executor)
def in_process_touch():
    touch()


@job(executor_def=multiprocess_executor)
def multiprocess_touch():
    touch()


@job(executor_def=FAST_PROCESS_STEPS)
def process_touch():
    touch()


defs = Definitions(jobs=[in_process_touch, multiprocess_touch, process_touch])
