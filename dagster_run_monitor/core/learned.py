"""Limits learned from a job's history: a factor times a percentile of the durations of its
last successful runs (and of each step's successful executions). Pure: the daemon reads the
durations (``storage.history``), this turns them into limits."""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

FACTOR_KEYS = ("max_runtime_factor", "warn_factor", "max_step_runtime_factor")


@dataclass(frozen=True)
class Factors:
    """What to learn for a run (0: nothing): its max runtime, its "slower than usual"
    warning, its steps' max runtime; each a multiple of the percentile."""

    max_runtime_factor: float = 0.0
    warn_factor: float = 0.0
    max_step_runtime_factor: float = 0.0

    @property
    def runs(self) -> bool:
        """Anything learned from whole runs."""
        return bool(self.max_runtime_factor or self.warn_factor)


@dataclass(frozen=True)
class LearnedLimits:
    """``learned_limits:``; the factors are the instance's (rules may set their own)."""

    runs: int = 30  # the job's last N successful runs
    min_runs: int = 10  # fewer: nothing is learned
    percentile: float = 95.0
    min_seconds: float = 60.0  # a learned limit is never below this
    max_runtime_factor: float = 0.0
    warn_factor: float = 0.0
    max_step_runtime_factor: float = 0.0
    refresh_seconds: float = 600.0  # the daemon reads the history again this often

    @property
    def factors(self) -> Factors:
        return Factors(self.max_runtime_factor, self.warn_factor, self.max_step_runtime_factor)


@dataclass(frozen=True)
class Sample:
    """The percentile of some durations, and how many there were."""

    value: float
    count: int


@dataclass(frozen=True)
class History:
    """A job's history as the limits need it: the percentile of its counted runs' durations,
    and of each step's (None / absent: fewer than ``min_runs``)."""

    job: str
    runs: Sample | None = None
    steps: Mapping[str, Sample] = field(default_factory=dict)
    peaks: Mapping[str, Sample] = field(default_factory=dict)  # worker -> p95 of its peaks


@dataclass(frozen=True)
class Learned:
    """One learned limit, with what it was learned from (for messages and ``explain``)."""

    seconds: float
    factor: float
    percentile: float
    sample: Sample
    job: str
    step: str | None = None

    def short(self) -> str:
        """e.g. ``3 x p95 of 30 runs of job etl = 600 s`` (for ``explain``)."""
        of = f"executions of step {self.step} in" if self.step else "runs of"
        return (
            f"{self.factor:g} x p{self.percentile:g} of {self.sample.count} {of} job"
            f" {self.job} = {self.sample.value:.0f} s"
        )

    def describe(self) -> str:
        """e.g. ``3 x p95 of the last 30 successful runs of job etl, 600 s``."""
        of = f"executions of step {self.step} in" if self.step else "runs of"
        return (
            f"{self.factor:g} x p{self.percentile:g} of the last {self.sample.count} successful"
            f" {of} job {self.job}, {self.sample.value:.0f} s"
        )


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile: the smallest value with at least p% of the values at or
    below it (always one of the values: a duration some run really took)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def sample(durations: Sequence[float], settings: LearnedLimits) -> Sample | None:
    if len(durations) < settings.min_runs:
        return None
    return Sample(percentile(durations, settings.percentile), len(durations))


def history(
    job: str,
    runs: Sequence[float],
    steps: Mapping[str, Sequence[float]],
    settings: LearnedLimits,
    peaks: Mapping[str, Sample] | None = None,
) -> History:
    """A job's history from its counted runs' durations (newest first, at most ``runs``), its
    steps' durations in those runs, and its workers' usual peaks (``memory_sizing``)."""
    step_samples = {k: s for k, v in steps.items() if (s := sample(v, settings)) is not None}
    return History(job, sample(runs[: settings.runs], settings), step_samples, dict(peaks or {}))


def learn(
    found: Sample | None, factor: float, settings: LearnedLimits, job: str, step: str | None = None
) -> Learned | None:
    """``factor`` x the percentile, never below ``min_seconds``; None when nothing is learned."""
    if not factor or found is None:
        return None
    seconds = max(settings.min_seconds, factor * found.value)
    return Learned(seconds, factor, settings.percentile, found, job, step)
