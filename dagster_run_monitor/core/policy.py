"""Decide: facts + settings + now -> actions. Pure: no Dagster calls, no clock, no I/O."""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from dagster import DagsterRun, DagsterRunStatus
from dagster._core.events import RunFailureReason

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.alert_settings import WARNING
from dagster_run_monitor.core.crashes import (
    fails_for_a_crash,
    hang_shorter_than_beats,
    lost_step_workers,
    start_failure,
    worker_crash,
)
from dagster_run_monitor.core.limit_table import (
    BY_KEY,
    CANCEL_TIMEOUT,
    HANG_TIMEOUT,
    MAX_RUNTIME,
    QUEUE_TIMEOUT,
    STALL_TIMEOUT,
    START_TIMEOUT,
    WARNED,
    clock_start,
)
from dagster_run_monitor.core.limits import Limit, Limits, resolve_limits, with_history
from dagster_run_monitor.core.memory_use import memory_warnings
from dagster_run_monitor.core.model import (
    SUSPENDED,
    Action,
    Alert,
    CancelRun,
    FailRun,
    Notice,
    ResumeRun,
    RunFacts,
    TerminateAndFail,
)
from dagster_run_monitor.core.settings import MonitorSettings


def decide(run: RunFacts, settings: MonitorSettings, now: float) -> list[Action]:
    """Everything due for one run on this pass, in the order to apply it."""
    limits = limits_of(run, settings)
    actions: list[Action] = bad_tag_notices(run, limits)
    status = run.status
    if status == DagsterRunStatus.QUEUED:
        actions += queue_timeout(run, limits, now)
    elif status == DagsterRunStatus.NOT_STARTED:
        actions += start_timeout(run, run.created_at, limits, now, terminate=False)
    elif status == DagsterRunStatus.STARTING:
        actions += start_failure(run, settings, now) or start_timeout(
            run, clock_start(START_TIMEOUT, run), limits, now, terminate=True
        )
    elif status == DagsterRunStatus.STARTED:
        actions += (
            worker_crash(run, settings, now)
            or runtime_exceeded(run, limits[MAX_RUNTIME.key], now)
            or step_timeout(run, limits, now)
            or stalled(run, limits[STALL_TIMEOUT.key], settings, now)
            or hung(run, limits[HANG_TIMEOUT.key], settings, now)
            or lost_step_workers(run, settings, now)
        )
    elif status == SUSPENDED:  # (None before Dagster 1.13: no run has it)
        actions += runtime_exceeded(run, limits[MAX_RUNTIME.key], now)
    elif status == DagsterRunStatus.CANCELING:
        actions += cancel_timeout(run, limits, now)
    if not any(isinstance(a, (FailRun, CancelRun, TerminateAndFail)) for a in actions):
        actions += threshold_warnings(run, limits, settings, now)
        actions += slower_than_usual(run, limits, now)
        actions += memory_warnings(run, settings.memory.warn_fraction)
        if status == DagsterRunStatus.STARTED:
            actions += hang_shorter_than_beats(run, limits[HANG_TIMEOUT.key], settings)
    return actions


def bad_tag_notices(run: RunFacts, limits: Limits) -> list[Action]:
    """One warning per unusable tag value: the rule's or instance's limit applies instead."""
    notices: list[Action] = []
    for bad in limits.bad_tags:
        tag = f"{c.WARNED_TAG_PREFIX}{bad.tag}"
        if run.tags.get(tag) != bad.value:
            message = c.invalid_tag_message(
                bad.tag, bad.value, bad.fallback.seconds, bad.fallback.source
            )
            alert = Alert(run.run_id, run.job_name, "invalid_tag", message)
            notices.append(Notice(message, tag, bad.value, alert=alert))
    bad = limits.bad_learning_tag
    tag = f"{c.WARNED_TAG_PREFIX}{c.LEARNED_LIMITS_TAG}"
    if bad is not None and run.tags.get(tag) != bad:
        message = c.invalid_learning_tag_message(bad)
        alert = Alert(run.run_id, run.job_name, "invalid_tag", message)
        notices.append(Notice(message, tag, bad, alert=alert))
    return notices


def queue_timeout(run: RunFacts, limits: Limits, now: float) -> list[Action]:
    limit = limits[QUEUE_TIMEOUT.key]
    since = clock_start(QUEUE_TIMEOUT, run) or run.created_at
    if not limit.seconds or now - since < limit.seconds:
        return []
    message = c.queue_timeout_message(limit.seconds, limit.source)
    return [
        CancelRun(message, c.REASON_QUEUE_TIMEOUT, False, limit=limit.seconds, observed=now - since)
    ]


def start_timeout(
    run: RunFacts, since: float | None, limits: Limits, now: float, terminate: bool
) -> list[Action]:
    limit = limits[START_TIMEOUT.key].seconds
    if not limit or since is None or now - since < limit:
        return []
    return [
        FailRun(
            c.start_timeout_message(limit),
            c.REASON_START_TIMEOUT,
            RunFailureReason.START_TIMEOUT,
            terminate_first=terminate,
            debug_info=True,
            limit=limit,
            observed=now - since,
        )
    ]


def runtime_exceeded(run: RunFacts, limit: Limit, now: float) -> list[Action]:
    seconds = limit.seconds
    if not seconds or run.started_at is None or now - run.started_at <= seconds:
        return []
    return [
        TerminateAndFail(
            c.max_runtime_canceling_message(seconds, limit.note()),
            c.max_runtime_failed_message(seconds, limit.note()),
            c.REASON_MAX_RUNTIME,
            seconds,
            now - run.started_at,
            _source_tags(limit),
        )
    ]


def step_timeout(run: RunFacts, limits: Limits, now: float) -> list[Action]:
    """A step running longer than its limit (``Limits.step``: its op's tag, the run's, or
    learned from the step's history) fails the run, naming the step."""
    for step, started in sorted(run.running_steps.items(), key=lambda item: item[1]):
        limit = limits.step(step, run.step_limits.get(step))
        elapsed = now - started
        if limit.seconds and elapsed > limit.seconds:
            message = c.step_timeout_message(step, elapsed, limit.seconds, limit.source)
            tags = _source_tags(limit)
            reason = c.REASON_STEP_TIMEOUT
            return [TerminateAndFail(message, message, reason, limit.seconds, elapsed, tags)]
    return []


def _source_tags(limit: Limit) -> dict[str, str]:
    return {c.LIMIT_SOURCE_TAG: "learned"} if limit.is_learned else {}


def slower_than_usual(run: RunFacts, limits: Limits, now: float) -> list[Action]:
    """One warning (and alert) when a started run has run longer than its job usually does:
    ``warn_factor`` x the percentile of its last successful runs."""
    learned = limits.slower_than
    if not is_slower_than_usual(run, limits, now) or learned is None:
        return []
    tag = f"{c.WARNED_TAG_PREFIX}{c.SLOWER_THAN_USUAL}"
    if tag in run.tags:
        return []
    elapsed = now - run.started_at  # type: ignore[operator]
    sample = learned.sample
    message = c.slower_than_usual_message(
        elapsed, learned.factor, learned.percentile, sample.value, sample.count
    )
    alert = Alert(
        run.run_id, run.job_name, WARNING, message, c.SLOWER_THAN_USUAL, learned.seconds, elapsed
    )
    return [Notice(message, tag, f"{learned.seconds:.0f}", alert=alert)]


def is_slower_than_usual(run: RunFacts, limits: Limits, now: float) -> bool:
    learned = limits.slower_than
    return (
        learned is not None
        and run.status == DagsterRunStatus.STARTED
        and run.started_at is not None
        and now - run.started_at > learned.seconds
    )


def stalled(run: RunFacts, limit: Limit, settings: MonitorSettings, now: float) -> list[Action]:
    """A healthy-looking worker whose run has written nothing for the stall timeout."""
    if not limit.seconds or run.last_event_at is None:
        return []
    idle = now - run.last_event_at
    if idle < limit.seconds:
        return []
    message = c.stall_message(limit.seconds, idle, limit.source)
    return resume_or_stop(run, message, c.REASON_STALLED, limit.seconds, idle, settings)


def hung(run: RunFacts, limit: Limit, settings: MonitorSettings, now: float) -> list[Action]:
    """A run whose workers wrote no event, kept their stacks and used no CPU time for the hang
    timeout (``quiet_since``), as beats seen that long after it show (``quiet_seen_until``):
    a beat not yet come is no evidence."""
    quiet, seen = run.quiet_since, run.quiet_seen_until
    if not limit.seconds or quiet is None or seen is None or seen - quiet < limit.seconds:
        return []
    message = c.hang_message(limit.seconds, now - quiet, limit.source)
    return resume_or_stop(run, message, c.REASON_HUNG, limit.seconds, now - quiet, settings)


def resume_or_stop(
    run: RunFacts,
    message: str,
    reason: str,
    limit: float,
    observed: float,
    settings: MonitorSettings,
) -> list[Action]:
    """A stuck worker (stalled, hung): killed and the run resumed where ``stall_action:
    resume`` and the attempts allow, else Dagster's sequence: canceling, terminate, FAILURE."""
    if settings.stall_action == "resume" and run.resume_attempts < settings.resume_attempts:
        attempt = run.resume_attempts + 1
        message = f"{message} Resuming run {run.run_id} with a new worker."
        return [ResumeRun(attempt, message, True, reason)]
    return [TerminateAndFail(message, message, reason, limit, observed)]


def cancel_timeout(run: RunFacts, limits: Limits, now: float) -> list[Action]:
    limit = limits[CANCEL_TIMEOUT.key].seconds
    since = clock_start(CANCEL_TIMEOUT, run)
    if not limit or since is None or now - since < limit:
        return []
    failing = run.tags.get(c.FAILING_TAG)
    if failing:  # the daemon that was failing it stopped between terminate and the failure
        message = c.failing_left_message(failing, limit)
        return [FailRun(message, failing, limit=limit, observed=now - since)]
    return [CancelRun(c.cancel_timeout_message(limit), limit=limit, observed=now - since)]


def threshold_warnings(
    run: RunFacts, limits: Limits, settings: MonitorSettings, now: float
) -> list[Action]:
    """One warning (and alert) when a run has used ``warn_after_fraction`` of a limit."""
    passed = warning_threshold_passed(run, limits, settings, now)
    if passed is None:
        return []
    key, elapsed, limit, fraction = passed
    tag = f"{c.WARNED_TAG_PREFIX}{key}"
    if run.tags.get(tag) == str(fraction):
        return []
    message = c.threshold_message(BY_KEY[key].label, fraction, elapsed, limit)
    alert = Alert(run.run_id, run.job_name, WARNING, message, key, limit, elapsed, fraction)
    return [Notice(message, tag, str(fraction), alert=alert)]


def warning_threshold_passed(
    run: RunFacts, limits: Limits, settings: MonitorSettings, now: float
) -> tuple[str, float, float, float] | None:
    """(limit key, elapsed, limit, fraction) once the run has used ``warn_after_fraction`` of
    the limit that applies to its status."""
    fraction = limits.warn_after_fraction
    if not fraction:
        return None
    kind = WARNED.get(run.status)
    if kind is None:
        return None
    since, limit = clock_start(kind, run), limits[kind.key].seconds
    if not limit or since is None or now - since < fraction * limit:
        return None
    return kind.key, now - since, limit, fraction


def over_warning_threshold(run: RunFacts, settings: MonitorSettings, now: float) -> bool:
    return warning_threshold_passed(run, limits_of(run, settings), settings, now) is not None


def limits_of(run: RunFacts, settings: MonitorSettings) -> Limits:
    """The limits observed with the run, or resolved now (facts built by hand)."""
    if run.limits is not None:
        return run.limits
    limits = resolve_limits(run.job_name, run.location, run.tags, settings)
    return with_history(limits, run.history, settings.learned)


@dataclass(frozen=True)
class Plan:
    """Every decision of one pass, and what the pass reports about itself."""

    due: list[tuple[str, list[Action]]]  # (run id, its actions), in the order observed
    errors: list[tuple[str, Exception]]  # runs ``decide`` raised on (each reported, no action)
    unhealthy_since: dict[str, float]  # the clocks to carry to the next pass
    unanswered: str | None  # the heartbeat's one error for health checks with no answer
    over_warning_threshold: int | None  # runs past warn_after_fraction (full passes only)
    slower_than_usual: int | None = None  # runs past their learned warning (full passes only)
    breaker: str | None = None  # open: why no verdict of a blind monitor was acted on


def breaker(facts: Sequence[RunFacts], settings: MonitorSettings) -> str | None:
    """Why the breaker is open this pass (None: closed): at least ``min_runs`` runs, and more
    than ``fraction`` of the runs whose workers were checked, got a verdict that the
    monitor's own blindness could produce (``Health.blind``)."""
    checked = [f for f in facts if f.health is not None]
    blind = [f for f in checked if f.health.blind]  # type: ignore[union-attr]
    limit = settings.breaker
    if len(blind) < limit.min_runs or len(blind) <= limit.fraction * len(checked):
        return None
    return (
        f"Breaker open: {len(blind)} of {len(checked)} checked runs look lost or missing at once"
        f" (more than {limit.fraction:.0%}, at least {limit.min_runs}), more likely the"
        f" monitor's sight than the workers; none of those verdicts is acted on this pass"
        f" (first: run {blind[0].run_id}: {blind[0].health})"
    )


def plan(
    facts: Sequence[RunFacts],
    settings: MonitorSettings,
    now: float,
    crashes_only: bool = False,
    count_warnings: bool = False,
) -> Plan:
    """Decide for every run; ``crashes_only`` (the cheap checks between full passes) decides
    only for runs whose worker is unhealthy. ``count_warnings``: count the runs past a
    warning threshold (for the metrics; full passes only)."""
    unanswered = [f for f in facts if f.health is not None and not f.health.answered]
    summary = None
    if unanswered:  # one error a pass in the heartbeat, not one per run of an API outage
        first = unanswered[0]
        summary = (
            f"{len(unanswered)} worker health check(s) had no answer; those runs are checked"
            f" again next pass (run {first.run_id}: {first.health.message})"  # type: ignore[union-attr]
        )
    over = slower = None
    if count_warnings and not crashes_only:
        over = sum(over_warning_threshold(f, settings, now) for f in facts)
        slower = sum(is_slower_than_usual(f, limits_of(f, settings), now) for f in facts)
    tripped = breaker(facts, settings)
    if tripped:  # decide as if those runs' workers had not been checked
        facts = [replace(f, health=None) if f.health and f.health.blind else f for f in facts]
    decided = [f for f in facts if f.health is not None and not f.health.healthy]
    due, errors = [], []
    for run in decided if crashes_only else facts:
        try:
            actions = decide(run, settings, now)
        except Exception as error:  # a bug or a value decide cannot take: this run only
            errors.append((run.run_id, error))
            continue
        if actions:
            due.append((run.run_id, actions))
    since = {f.run_id: f.unhealthy_since for f in facts if f.unhealthy_since is not None}
    return Plan(due, errors, since, summary, over, slower, tripped)


class Observed(Protocol):
    """What the re-check under a claim compares: a run as this pass saw it (RunFacts, or a
    DagsterRun)."""

    run_id: str
    status: DagsterRunStatus


def resume_of(actions: Sequence[Action]) -> ResumeRun | None:
    return next((a for a in actions if isinstance(a, ResumeRun)), None)


def still_due(
    observed: DagsterRunStatus,
    actions: Sequence[Action],
    current: DagsterRun | None,
    resumes: int,
    last_resume_at: float | None = None,
    observed_at: float | None = None,
) -> Sequence[Action] | None:
    """The actions to apply now that the run was re-read under its claim: None if it changed
    since this pass observed it (its status; for a resume, its resume count, or a resume
    written since ``observed_at``: another daemon resumed it after this pass checked its
    worker; for a crash's failure, such a resume), the actions otherwise, less the notices
    already written. A changed run's notices
    are left to the next pass."""
    if current is None or current.status != observed:
        return None
    resume = resume_of(actions)
    resumed_during_pass = (
        observed_at is not None and last_resume_at is not None and last_resume_at >= observed_at
    )
    if resume and (resumed_during_pass or resumes != resume.attempt - 1):
        return None
    if resumed_during_pass and fails_for_a_crash(actions):  # about a worker since replaced
        return None
    return [a for a in actions if not isinstance(a, Notice) or current.tags.get(a.tag) != a.value]
