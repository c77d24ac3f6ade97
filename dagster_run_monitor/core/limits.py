"""Which limits apply to a run, and where each comes from: a tag on the run beats the first
matching rule, which beats the instance default; a limit learned from the job's history
(``with_history``) applies where it is smaller than the configured one, never over a tag."""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from dagster import DagsterRun

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.durations import parse_duration
from dagster_run_monitor.core.learned import Factors, History, Learned, LearnedLimits, learn
from dagster_run_monitor.core.limit_table import LIMITS, MAX_RUNTIME, STEP_RUNTIME
from dagster_run_monitor.core.settings import MonitorSettings

DEFAULT_SOURCE = "instance default"
TAG_SOURCE = "tag "  # how a tag's limit's source begins
LEARNING_TAG_VALUES = ("on", "off")


@dataclass(frozen=True)
class Limit:
    seconds: float  # 0: no limit
    source: str  # "tag dagster/max_runtime", "rule 2 (job etl_*)", "instance default", ...
    learned: Learned | None = None  # what the job's history gives, in force or not
    configured: "Limit | None" = None  # the configured limit a learned one is smaller than

    @property
    def from_tag(self) -> bool:
        return self.source.startswith(TAG_SOURCE)

    @property
    def is_learned(self) -> bool:
        return self.configured is not None

    def note(self) -> str:
        """`` (learned: ...)`` for a learned limit's messages, else nothing."""
        return f" ({self.source})" if self.is_learned else ""

    def smaller(self, learned: Learned | None) -> "Limit":
        """This configured limit, or ``learned`` where it is smaller (a tag always wins)."""
        if learned is None:
            return self
        if self.from_tag or (self.seconds and self.seconds <= learned.seconds):
            return replace(self, learned=learned)
        return Limit(learned.seconds, f"learned: {learned.describe()}", learned, self)


@dataclass(frozen=True)
class BadTag:
    """A tag whose value is not a duration; the rule's or the instance's limit applies."""

    tag: str
    value: str
    fallback: Limit


@dataclass(frozen=True)
class Limits:
    by_key: Mapping[str, Limit]
    warn_after_fraction: float
    bad_tags: tuple[BadTag, ...] = ()
    factors: Factors = Factors()  # what to learn for the run (a rule's, or the instance's)
    bad_learning_tag: str | None = None  # a run_monitor/learned_limits value not on/off
    slower_than: Learned | None = None  # the "slower than usual" threshold
    steps: Mapping[str, Learned] = field(default_factory=dict)  # step key -> learned limit

    def __getitem__(self, key: str) -> Limit:
        return self.by_key[key]

    def step(self, step: str, op_tag: str | None) -> Limit:
        """A step's limit: its op's tag, else a run tag, else the smaller of the configured
        and the learned one."""
        if op_tag is not None:
            try:
                return Limit(parse_duration(op_tag), f"op tag {c.MAX_STEP_RUNTIME_TAG}")
            except ValueError:
                pass  # the run's limit applies; the tag is shown in `dagster-run-monitor explain`
        return self[STEP_RUNTIME.key].smaller(self.steps.get(step))

    @property
    def watches_steps(self) -> bool:
        return bool(self[STEP_RUNTIME.key].seconds or self.steps)


def resolve_limits(
    job_name: str, location: str | None, tags: Mapping[str, str], settings: MonitorSettings
) -> Limits:
    rule = next((r for r in settings.rules if r.matches(job_name, location, tags)), None)
    by_key: dict[str, Limit] = {}
    bad: list[BadTag] = []
    for kind in LIMITS:
        key = kind.key
        limit = Limit(getattr(settings, key), DEFAULT_SOURCE)
        if rule is not None and key in rule.limits:
            limit = Limit(rule.limits[key], rule.describe())
        for tag in kind.tags:
            raw = tags.get(tag)
            if raw is None or raw == "":
                continue
            try:
                limit = Limit(parse_duration(raw), f"tag {tag}")
            except ValueError:
                bad.append(BadTag(tag, raw, limit))
            break
        by_key[key] = limit
    fraction = settings.warn_after_fraction
    if rule is not None and rule.warn_after_fraction is not None:
        fraction = rule.warn_after_fraction
    factors = replace(settings.learned.factors, **(rule.factors if rule is not None else {}))
    learning = tags.get(c.LEARNED_LIMITS_TAG, "on")
    if learning == "off":
        factors = Factors()
    bad_learning = learning if learning not in LEARNING_TAG_VALUES else None
    return Limits(by_key, fraction, tuple(bad), factors, bad_learning)


def with_history(limits: Limits, found: History | None, settings: LearnedLimits) -> Limits:
    """``limits`` with what the job's history teaches: a smaller max runtime, the "slower than
    usual" threshold, the steps' limits (each only where its factor is set)."""
    factors = limits.factors
    if found is None or not (factors.runs or factors.max_step_runtime_factor):
        return limits
    runtime = learn(found.runs, factors.max_runtime_factor, settings, found.job)
    by_key = {**limits.by_key, MAX_RUNTIME.key: limits[MAX_RUNTIME.key].smaller(runtime)}
    steps = {
        key: learned
        for key, step in found.steps.items()
        if (learned := learn(step, factors.max_step_runtime_factor, settings, found.job, key))
    }
    slower = learn(found.runs, factors.warn_factor, settings, found.job)
    return replace(limits, by_key=by_key, slower_than=slower, steps=steps)


def run_limits(run: DagsterRun, settings: MonitorSettings) -> Limits:
    """``resolve_limits`` for a run: its job, its code location, its tags."""
    return resolve_limits(run.job_name, location_of(run), run.tags, settings)


def location_of(run: DagsterRun) -> str | None:
    """The name of the run's code location, if it has one."""
    origin = run.remote_job_origin
    return origin.location_name if origin is not None else None
