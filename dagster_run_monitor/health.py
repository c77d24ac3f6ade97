"""Worker health checks, run concurrently, each with a time limit."""

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from dagster._core.launcher import RunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

HEALTHY = frozenset({WorkerStatus.RUNNING.value, WorkerStatus.SUCCESS.value})


@dataclass(frozen=True)
class Health:
    """One worker health result, as plain data."""

    status: str  # a WorkerStatus value: RUNNING, SUCCESS, FAILED, NOT_FOUND, UNKNOWN
    message: str = ""
    transient: bool = False

    @property
    def healthy(self) -> bool:
        return self.status in HEALTHY

    def __str__(self) -> str:  # the same text as Dagster's CheckRunHealthResult
        return f"{self.status}: '{self.message}'"


def check_workers(
    launcher: RunLauncher, runs: Sequence[DagsterRun], threads: int, timeout_seconds: float
) -> dict[str, Health]:
    """Health of each run's worker, ``threads`` checks at a time. A check that raises or
    outlives ``timeout_seconds`` is UNKNOWN. The threads are daemon threads of this call: a
    check that hangs holds only its own thread, never this pass, the next one, or the
    process's exit; checks still queued when the batch's time is up (every thread hung) are
    UNKNOWN too."""
    queue = deque(runs)
    started: dict[str, float] = {}
    results: dict[str, Health] = {}
    pending = {run.run_id for run in runs}
    changed = threading.Condition()

    def worker() -> None:
        while True:
            with changed:
                if not queue:
                    return
                run = queue.popleft()
                started[run.run_id] = time.monotonic()
            health = _check(launcher, run)
            with changed:
                if run.run_id in pending:  # a late answer is ignored
                    pending.discard(run.run_id)
                    results[run.run_id] = health
                    changed.notify()

    for _ in range(min(threads, len(runs))):
        threading.Thread(target=worker, daemon=True, name="run_monitor_health").start()
    batch_deadline = time.monotonic() + timeout_seconds * (1 + math.ceil(len(runs) / threads))
    next_scan = 0.0
    with changed:
        while pending:
            changed.wait(0.1)
            now = time.monotonic()
            if now < next_scan:
                continue
            next_scan = now + 0.1  # look for late checks ten times a second, not per answer
            for run_id in list(pending):
                began = started.get(run_id)
                if began is not None and now - began > timeout_seconds:
                    message = f"Health check did not answer within {timeout_seconds:g} seconds"
                elif began is None and now > batch_deadline:
                    queue.clear()
                    message = "Health check could not start: every check thread was busy"
                else:
                    continue
                pending.discard(run_id)
                results[run_id] = Health(WorkerStatus.UNKNOWN.value, message)
    return results


def _check(launcher: RunLauncher, run: DagsterRun) -> Health:
    try:
        result = launcher.check_run_worker_health(run)
    except Exception as error:
        return Health(
            WorkerStatus.UNKNOWN.value, f"Health check raised {type(error).__name__}: {error}"
        )
    return Health(result.status.value, result.msg or "", bool(result.transient))
