"""The demo's code location: four steps, each in its own process (process_step_executor)."""

import os
import time

from dagster import Definitions, OpExecutionContext, job, op

from dagster_run_monitor import process_step_executor

STEP_SECONDS = float(os.environ.get("DEMO_STEP_SECONDS", "2"))


def _step(name: str):
    @op(name=name)
    def _op(context: OpExecutionContext, upstream=None):
        context.log.info(f"{name}: working for {STEP_SECONDS:g}s in process {os.getpid()}")
        time.sleep(STEP_SECONDS)
        return name

    return _op


extract, transform, load, report = (_step(n) for n in ("extract", "transform", "load", "report"))


@job(executor_def=process_step_executor)
def crash_demo():
    report(load(transform(extract())))


defs = Definitions(jobs=[crash_demo])
