"""The daemon's memory of jobs' histories (learned limits): read for every job with a run in
progress that learns something, again every ``refresh_seconds``; a job seen for the first time
is read on the pass it appears. A finished run's steps never change: each counted run's step
durations are read once, so a refresh reads the steps of the runs that ended since."""

from collections.abc import Mapping
from dataclasses import dataclass

from dagster import DagsterInstance, DagsterRun

from dagster_run_monitor.core.learned import History, LearnedLimits, history
from dagster_run_monitor.core.limits import Limits
from dagster_run_monitor.core.memory_sizing import usual_peaks
from dagster_run_monitor.storage.history import (
    JobKey,
    by_step,
    job_key,
    job_keys,
    oom_recoveries,
    run_durations,
    step_durations,
    step_history,
)


class JobHistories:
    """Histories by job, kept across passes."""

    def __init__(self) -> None:
        self._known: dict[JobKey, History] = {}
        self._read_at: float | None = None
        self._read_for: LearnedLimits | None = None
        self._steps: dict[str, dict[str, float]] = {}  # counted run id -> step -> seconds
        self.error: str | None = None  # why the last read failed (the known histories stand)

    def read(
        self,
        instance: DagsterInstance,
        settings: LearnedLimits,
        runs: Mapping[str, DagsterRun],
        limits: Mapping[str, Limits],
        now: float,
        every: bool = False,
    ) -> dict[str, History]:
        """The history of each run in ``runs`` whose ``limits`` learn something (``every``:
        of each, for the memory of a worker resumed after an OOM kill)."""
        learning = {i: job_key(runs[i]) for i, lim in limits.items() if every or _learns(lim)}
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
                fresh = _read(instance, settings, keys, steps, self._steps, prune=due)
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

    def for_runs(
        self, instance: DagsterInstance, settings: LearnedLimits, runs: Mapping[str, DagsterRun]
    ) -> dict[str, History]:
        """The histories of ``runs``' jobs (finished runs whose steps are retried): those
        known, the others read now (one statement)."""
        keys = {i: job_key(run) for i, run in runs.items()}
        missing = set(keys.values()) - set(self._known)
        if missing:
            try:
                self._known.update(_read(instance, settings, missing, set(), {}, prune=False))
            except Exception as error:  # sized without history
                self.error = f"Reading jobs' histories failed: {type(error).__name__}: {error}"
        return {i: self._known[k] for i, k in keys.items() if k in self._known}


def _learns(limits: Limits) -> bool:
    factors = limits.factors
    return factors.runs or bool(factors.max_step_runtime_factor)


def _read(
    instance: DagsterInstance,
    settings: LearnedLimits,
    keys: set[JobKey],
    steps: set[JobKey],
    known: dict[str, dict[str, float]],
    prune: bool = True,
) -> dict[JobKey, History]:
    """One statement for the runs of all ``keys``; for those in ``steps``, the step durations
    of their counted runs, read for the runs not ``known`` yet (and kept there; ``prune``:
    ``keys`` are all the jobs, forget the runs no longer counted)."""
    runs = run_durations(instance, keys, settings.runs)
    step_runs = {key: [run.run_id for run in runs[key]] for key in keys & steps}
    counted = {run_id for run_ids in step_runs.values() for run_id in run_ids}
    known.update(step_durations(instance, sorted(counted - set(known))))
    for run_id in set(known) - counted if prune else ():
        del known[run_id]
    return {
        key: history(
            key[0],
            [run.seconds for run in found],
            by_step(known.get(run_id, {}) for run_id in step_runs.get(key, ())),
            settings,
            usual_peaks([run.memory for run in found], settings.min_runs),
        )
        for key, found in runs.items()
    }


@dataclass(frozen=True)
class JobRecord:
    """What ``dagster-run-monitor history`` shows of one job."""

    key: JobKey
    durations: list[float]  # its counted runs', newest first
    steps: dict[str, list[float]]  # step key -> durations in those runs
    oom_recovered: list[Mapping[str, str]]  # tags of its runs that succeeded after an OOM kill
    memory: list[str | None]  # its counted runs' run_monitor/memory tags


def job_records(instance: DagsterInstance, runs: int, job: str | None = None) -> list[JobRecord]:
    """Every job with a successful run (or ``job``): four statements for all of them."""
    keys = job_keys(instance, job)
    durations = run_durations(instance, keys, runs)
    steps = step_history(instance, {k: [run.run_id for run in durations[k]] for k in keys})
    ooms = oom_recoveries(instance)
    return [
        JobRecord(
            k,
            [run.seconds for run in durations[k]],
            steps.get(k, {}),
            ooms.get(k[0], []),
            [run.memory for run in durations[k]],
        )
        for k in keys
    ]
