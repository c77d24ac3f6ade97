"""A run worker, or a run worker and its ``multiprocess``-style child (spawned), beating as
Dagster's would; the one named writes an engine event into its run for each line it reads from
a named pipe: for the fencing tests, which stop it (SIGSTOP), take its run over or end it, thaw
it, then tell it to write.
``python -m dagster_run_monitor_tests.support.frozen_worker RUN_ID run|child FIFO``."""

import multiprocessing
import sys

from dagster import DagsterInstance

from dagster_run_monitor.core.heartbeats import RUN_WORKER, STEP_WORKER_PREFIX
from dagster_run_monitor.worker import beats

CHILD = STEP_WORKER_PREFIX + "s1"


def serve(run_id: str, worker: str, fifo: str) -> None:
    """Beat as ``worker``; write one event for each line read from ``fifo``."""
    instance = DagsterInstance.get()
    beats.start(instance, run_id, worker)
    run = instance.get_run_by_id(run_id)
    with open(fifo) as told:
        for _ in told:
            instance.report_engine_event(f"written by {worker}", run)


def main() -> None:
    run_id, kind, fifo = sys.argv[1:4]
    if kind == "run":
        serve(run_id, RUN_WORKER, fifo)
        return
    beats.start(DagsterInstance.get(), run_id, RUN_WORKER)
    child = multiprocessing.get_context("spawn").Process(target=serve, args=(run_id, CHILD, fifo))
    child.start()
    child.join()


if __name__ == "__main__":
    main()
