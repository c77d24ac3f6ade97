"""A code location for the Docker tests: the demo's steps, each step its own container."""

import os
import time
from pathlib import Path

from dagster import Definitions, OpExecutionContext, in_process_executor, job, op
from dagster_docker import docker_executor

from dagster_run_monitor.demo_job import extract, load, report, transform


@job(executor_def=docker_executor)
def docker_steps():
    report(load(transform(extract())))


@op
def exit_the_container():
    print("run worker about to exit with code 3", flush=True)
    os._exit(3)  # in_process: the op runs in the run worker container


@job(executor_def=in_process_executor)
def docker_dies():
    exit_the_container()


@op
def sleep_long():
    time.sleep(300)


@job(executor_def=in_process_executor)
def docker_sleeps():
    sleep_long()


@op(config_schema={"marker": str})
def allocate_once(context: OpExecutionContext) -> None:
    """Allocates 1 GiB the first time (the container's mem_limit OOM-kills the worker),
    nothing on a resume."""
    marker = Path(context.op_config["marker"])
    if marker.exists():
        context.log.info("second attempt: not allocating")
        return
    marker.write_text(context.run_id)
    hog = bytearray(1 << 30)
    for i in range(0, len(hog), 4096):  # touch every page
        hog[i] = 1


@job(executor_def=in_process_executor)
def docker_oom():
    allocate_once()


defs = Definitions(jobs=[docker_steps, docker_dies, docker_sleeps, docker_oom])
