"""A code location for the process-launcher tests: real jobs run by real worker processes."""

import os
import signal
import time

from dagster import Definitions, OpExecutionContext, in_process_executor, job, op

from dagster_run_monitor import process_step_executor

STEP_SECONDS = float(os.environ.get("DAGSTER_RUN_MONITOR_TEST_STEP_SECONDS", "1.5"))


def _step(name: str):
    @op(name=name)
    def _op(context: OpExecutionContext, upstream=None):
        context.log.info(f"{name} working for {STEP_SECONDS}s in process {os.getpid()}")
        time.sleep(STEP_SECONDS)
        return name

    return _op


extract, transform, load, report = (_step(n) for n in ("extract", "transform", "load", "report"))


@job(executor_def=process_step_executor)
def four_steps():
    report(load(transform(extract())))


@op
def kill_own_worker():
    os.kill(os.getpid(), signal.SIGKILL)  # in_process: the op runs inside the run worker


@job(executor_def=in_process_executor)
def always_dies():
    kill_own_worker()


@op
def sleep_long():
    time.sleep(300)


@job(executor_def=process_step_executor)
def sleeps():
    sleep_long()


defs = Definitions(jobs=[four_steps, always_dies, sleeps])
