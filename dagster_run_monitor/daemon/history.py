"""The daemon's memory of jobs' histories (learned limits): read for every job with a run in
progress that learns something, again every ``refresh_seconds``; a job seen for the first time
is read on the pass it appears."""

from collections.abc import Mapping

from dagster import DagsterInstance, DagsterRun

from dagster_run_monitor.core.learned import History, LearnedLimits, history
from dagster_run_monitor.core.limits import Limits
from dagster_run_monitor.storage.history import JobKey, job_key, run_durations, step_history


class JobHistories:
    """Histories by job, kept across passes."""

    def __init__(self) -> None:
        self._known: dict[JobKey, History] = {}
        self._read_at: float | None = None
        self._read_for: LearnedLimits | None = None
        self.error: str | None = None  # why the last read failed (the known histories stand)

    def read(
        self,
        instance: DagsterInstance,
        settings: LearnedLimits,
        runs: Mapping[str, DagsterRun],
        limits: Mapping[str, Limits],
        now: float,
    ) -> dict[str, History]:
        """The history of each run in ``runs`` whose ``limits`` learn something."""
        learning = {i: job_key(runs[i]) for i, lim in limits.items() if _learns(lim)}
        steps = {
            job_key(runs[i]) for i, lim in limits.items() if lim.factors.max_step_runtime_factor
        }
        due = (
            self._read_at is None
            or now - self._read_at >= settings.refresh_seconds
            or settings != self._read_for
        )
        keys = set(learning.values()) if due else set(learning.values()) - set(self._known)
        if keys:
            try:
                fresh = _read(instance, settings, keys, steps)
            except Exception as error:  # learned limits wait; every other check goes on
                self.error = f"Reading jobs' histories failed: {type(error).__name__}: {error}"
                fresh = {}
            else:
                self.error = None
                if due:
                    self._read_at, self._read_for = now, settings
            self._known.update(fresh)
        wanted = set(learning.values())
        self._known = {k: h for k, h in self._known.items() if k in wanted}
        return {i: self._known[k] for i, k in learning.items() if k in self._known}


def _learns(limits: Limits) -> bool:
    factors = limits.factors
    return factors.runs or bool(factors.max_step_runtime_factor)


def _read(
    instance: DagsterInstance, settings: LearnedLimits, keys: set[JobKey], steps: set[JobKey]
) -> dict[JobKey, History]:
    """One statement for the runs of all ``keys``, one more for the steps of those in ``steps``."""
    runs = run_durations(instance, keys, settings.runs)
    step_runs = {key: [run_id for run_id, _ in runs[key]] for key in keys & steps}
    by_step = step_history(instance, step_runs) if step_runs else {}
    return {
        key: history(key[0], [d for _, d in found], by_step.get(key, {}), settings)
        for key, found in runs.items()
    }
