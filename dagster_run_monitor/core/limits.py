"""Which limits apply to a run, and where each comes from: a tag on the run beats the first
matching rule, which beats the instance default."""

from collections.abc import Mapping
from dataclasses import dataclass

from dagster import DagsterRun

from dagster_run_monitor.core.durations import parse_duration
from dagster_run_monitor.core.limit_table import LIMITS
from dagster_run_monitor.core.settings import MonitorSettings

DEFAULT_SOURCE = "instance default"


@dataclass(frozen=True)
class Limit:
    seconds: float  # 0: no limit
    source: str  # "tag dagster/max_runtime", "rule 2 (job etl_*)", "instance default"


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

    def __getitem__(self, key: str) -> Limit:
        return self.by_key[key]


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
    return Limits(by_key, fraction, tuple(bad))


def run_limits(run: DagsterRun, settings: MonitorSettings) -> Limits:
    """``resolve_limits`` for a run: its job, its code location, its tags."""
    return resolve_limits(run.job_name, location_of(run), run.tags, settings)


def location_of(run: DagsterRun) -> str | None:
    """The name of the run's code location, if it has one."""
    origin = run.remote_job_origin
    return origin.location_name if origin is not None else None
