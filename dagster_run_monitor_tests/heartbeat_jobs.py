"""A code location for the heartbeat tests: jobs whose workers block, hold the GIL or spin."""

import ctypes
import os
import threading
import time

from dagster import Definitions, in_process_executor, job, op


def wait_for_partner_api() -> None:
    threading.Event().wait(600)  # blocked on a lock, as on a socket that never answers


@op
def load():
    wait_for_partner_api()


@job(executor_def=in_process_executor)
def waits():
    load()


@job  # the multiprocess executor: the step runs in a step worker of its own
def waits_in_step_worker():
    load()


@op
def block_the_first_time():
    """Blocks in its first worker; returns at once in the worker of a resume."""
    flag = os.environ["BLOCK_ONCE_FLAG"]
    if not os.path.exists(flag):
        open(flag, "w").close()
        wait_for_partner_api()


@job(executor_def=in_process_executor)
def blocks_once():
    block_the_first_time()


@op
def hold_the_gil():
    seconds = int(os.environ.get("HOLD_THE_GIL_SECONDS", "12"))
    ctypes.PyDLL(None).sleep(seconds)  # a C call that keeps the GIL: no Python thread runs


@job(executor_def=in_process_executor)
def holds_the_gil():
    hold_the_gil()


@op
def spin():
    deadline = time.monotonic() + float(os.environ.get("SPIN_SECONDS", "12"))
    while time.monotonic() < deadline:  # pure Python, busy, no events
        pass


@job(executor_def=in_process_executor)
def spins():
    spin()


defs = Definitions(jobs=[waits, waits_in_step_worker, blocks_once, holds_the_gil, spins])
