"""Worker health checks, run concurrently, each with a time limit."""

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
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
    launcher: RunLauncher,
    runs: Iterable[DagsterRun],
    pool: ThreadPoolExecutor,
    timeout_seconds: float,
) -> dict[str, Health]:
    """Health of each run's worker. A check that raises or outlives its limit is UNKNOWN."""
    started: dict[str, float] = {}

    def check(run: DagsterRun) -> Health:
        started[run.run_id] = time.monotonic()
        result = launcher.check_run_worker_health(run)
        return Health(result.status.value, result.msg or "", bool(result.transient))

    futures: Mapping[Future, str] = {pool.submit(check, run): run.run_id for run in runs}
    results: dict[str, Health] = {}
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
        for future in done:
            results[futures[future]] = _result(future)
        now = time.monotonic()
        for future in list(pending):
            began = started.get(futures[future])
            if began is not None and now - began > timeout_seconds:
                pending.discard(future)
                results[futures[future]] = Health(
                    WorkerStatus.UNKNOWN.value,
                    f"Health check did not answer within {timeout_seconds:g} seconds",
                )
    return results


def _result(future: Future) -> Health:
    error = future.exception()
    if error is None:
        return future.result()
    return Health(
        WorkerStatus.UNKNOWN.value, f"Health check raised {type(error).__name__}: {error}"
    )
