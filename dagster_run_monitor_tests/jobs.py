"""A code location for the process-launcher tests: real jobs run by real worker processes."""

import os
import signal
import time

from dagster import Definitions, in_process_executor, job, multiprocess_executor, op

from dagster_run_monitor import process_step_executor
from dagster_run_monitor.demo_job import crash_demo  # four steps, each its own process


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


@job(executor_def=multiprocess_executor)
def sleeps_in_a_child():
    sleep_long()


@op
def ignore_sigterm():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(300)


@job(executor_def=in_process_executor)
def ignores_sigterm():
    ignore_sigterm()


@op
def hang_silently():
    time.sleep(300)  # no events: a stall


@job(executor_def=in_process_executor)
def hangs():
    hang_silently()


@op
def exit_three():
    print("run worker about to exit with code 3", flush=True)
    os._exit(3)  # in_process: the worker process itself exits


@job(executor_def=in_process_executor)
def exits_three():
    exit_three()


@op
def main_thread_exits_first():
    """The worker's main thread exits (its /proc entry reads zombie) while another thread runs
    on for a second, then ends the process with code 3: as a killed worker with many threads
    looks for a moment."""
    import ctypes
    import threading

    def exit_later():
        time.sleep(1)
        os._exit(3)

    threading.Thread(target=exit_later).start()
    ctypes.CDLL(None).pthread_exit(None)


@job(executor_def=in_process_executor)
def main_thread_exits_first_job():
    main_thread_exits_first()


defs = Definitions(
    jobs=[
        crash_demo,
        always_dies,
        sleeps,
        sleeps_in_a_child,
        ignores_sigterm,
        hangs,
        exits_three,
        main_thread_exits_first_job,
    ]
)
