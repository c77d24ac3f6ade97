"""Decide for a run whose worker died: resume it (counted or not, after its back-off, with
more memory after an OOM kill) or fail it, as ``crash_policy`` says. Pure."""

import datetime
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from dagster._core.events import RunFailureReason
from dagster._core.launcher import WorkerStatus

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.alert_settings import WARNING
from dagster_run_monitor.core.crash_cause import OOM_KILLED, UNKNOWN, WORKER_LOST, CrashCause
from dagster_run_monitor.core.heartbeats import (
    RUN_WORKER,
    STEP_WORKER_PREFIX,
    Sight,
    lost,
    lost_message,
    run_worker,
    steps_of,
)
from dagster_run_monitor.core.limits import Limit
from dagster_run_monitor.core.memory import raised_memory
from dagster_run_monitor.core.model import (
    Action,
    Alert,
    FailRun,
    Health,
    Notice,
    ResumeRun,
    RunFacts,
    TerminateAndFail,
)
from dagster_run_monitor.core.settings import FAIL, RESUME, RESUME_UNCOUNTED, MonitorSettings


def cause_of(run: RunFacts) -> CrashCause:
    health = run.health
    return health.cause if health is not None and health.cause else CrashCause(UNKNOWN)


def policy_entry(run: RunFacts, settings: MonitorSettings) -> str:
    """Which ``crash_policy`` entry applies to the run's crash, as ``explain`` shows it."""
    rule = settings.crash_rule(cause_of(run))
    return rule.describe() if rule else "no crash_policy entry matches: resume"


def start_failure(run: RunFacts, settings: MonitorSettings, now: float) -> list[Action]:
    """A STARTING run whose worker is already dead fails now, not at the start timeout; with
    ``resume_on_start_failure`` it is relaunched within the resume budget first, unless
    ``crash_policy`` says fail."""
    if not is_crashed(run, settings, now, starting=True):
        return []
    rule = settings.crash_rule(cause_of(run))
    action = rule.action if rule is not None else RESUME
    if settings.resume_on_start_failure and action != FAIL:
        resumed = next_resume(run, settings, now, action == RESUME_UNCOUNTED)
        if resumed is not None:
            return resumed
    says_fail = rule.describe() if rule is not None and action == FAIL else None
    message = c.start_failed_message(str(run.health), run.run_id, says_fail)
    return [
        crash_failure(
            run,
            message,
            c.REASON_START_FAILED,
            failure_reason=RunFailureReason.UNEXPECTED_TERMINATION,
            terminate_first=True,
            debug_info=True,
        )
    ]


def worker_crash(run: RunFacts, settings: MonitorSettings, now: float) -> list[Action]:
    """Resume a STARTED run whose worker died, or fail it once the attempts are used up or
    ``crash_policy`` says fail."""
    if not is_crashed(run, settings, now, starting=False):
        return []
    failed = run.health is not None and run.health.status == WorkerStatus.FAILED.value
    rule = settings.crash_rule(cause_of(run))
    action = rule.action if rule is not None else RESUME
    if rule is not None and action == FAIL:
        message = c.crash_policy_failed_message(str(run.health), run.run_id, rule.describe())
        return [crash_failure(run, message, c.REASON_WORKER_CRASH, debug_info=failed)]
    resumed = next_resume(run, settings, now, action == RESUME_UNCOUNTED)
    if resumed is not None:
        return resumed
    message = c.crash_failed_message(
        str(run.health), run.run_id, settings.max_resume_run_attempts, settings.can_resume
    )
    attempts = settings.resume_attempts
    return [
        crash_failure(
            run,
            message,
            c.REASON_WORKER_CRASH,
            debug_info=failed,
            limit=attempts,
            observed=counted_resumes(run),
        )
    ]


def crash_failure(run: RunFacts, message: str, reason: str, **fields: Any) -> FailRun:
    """The failure of a crashed run, with its cause (the tag, the alert)."""
    return FailRun(message, _reason(run, reason), cause=cause_of(run).kind, **fields)


def _reason(run: RunFacts, reason: str = c.REASON_WORKER_CRASH) -> str:
    """A lost worker's crash has its own reason tag (worker_lost)."""
    lost_worker = reason == c.REASON_WORKER_CRASH and cause_of(run).kind == WORKER_LOST
    return c.REASON_WORKER_LOST if lost_worker else reason


def lost_step_workers(run: RunFacts, settings: MonitorSettings, now: float) -> list[Action]:
    """For each step worker lost while its run worker beats on: a step that has not ended
    ``timeout`` after its worker was last seen (the executor had its chance to report it),
    whose worker is gone for sure (its watcher saw it end, or the platform shows none), fails
    the run, so it cannot hang until its max runtime (``step_lost``); otherwise one warning
    (the executor and the limits decide)."""
    timeout = settings.heartbeats.timeout_seconds
    beating = run_worker(run.workers)
    if beating is None or lost(beating, now, timeout):
        return []
    notices: list[Action] = []
    for sight in run.workers:
        why = lost(sight, now, timeout) if sight is not beating else None
        if not why:
            continue
        step = sight.beat.worker[len(STEP_WORKER_PREFIX) :]
        gone = sight.beat.ended or step in run.steps_gone
        if step in run.running_steps and gone and sight.age(now) >= timeout:
            cause = CrashCause(WORKER_LOST, why)
            return [
                TerminateAndFail(
                    c.step_lost_canceling_message(step, str(cause)),
                    c.step_lost_message(step, str(cause)),
                    c.REASON_STEP_LOST,
                    tags={c.CRASH_CAUSE_TAG: WORKER_LOST, c.LOST_STEP_TAG: step},
                )
            ]
        tag = f"{c.STEP_WORKER_LOST_TAG_PREFIX}{sight.beat.worker}"
        if run.tags.get(tag) != sight.beat.token:
            message = c.step_worker_lost_message(why)
            alert = Alert(run.run_id, run.job_name, WARNING, message, reason="step_worker_lost")
            notices.append(Notice(message, tag, sight.beat.token, alert=alert))
    return notices


def with_heartbeats(
    health: Health | None, workers: tuple[Sight, ...], now: float, timeout: float
) -> Health | None:
    """The run worker's health with what its heartbeats tell. A launcher's answered verdict of
    a dead worker stands (it acts first, heartbeats never act a second time). Otherwise a lost
    run worker reads FAILED with cause ``worker_lost`` (``fence``: the launcher still sees it
    running), and a beating one RUNNING where the launcher could not tell (UNKNOWN)."""
    definite = health is not None and health.answered and not health.healthy
    sight = run_worker(workers)
    if sight is None or (definite and health.status != WorkerStatus.UNKNOWN.value):  # type: ignore[union-attr]
        return health
    why = lost(sight, now, timeout)
    if why is None:
        if health is None or health.healthy:
            return health
        return Health(WorkerStatus.RUNNING.value, f"heartbeat {sight.age(now):.0f} s ago")
    return Health(
        WorkerStatus.FAILED.value,
        lost_message(why, steps_of(workers)),
        cause=CrashCause(WORKER_LOST),
        unseen=not sight.beat.ended,
        fence=health is not None and health.answered and health.healthy,
    )


def uncounted_attempts(tags: Mapping[str, str], resumes: int) -> int:
    """How many of the run's ``resumes`` were uncounted: the attempt numbers in its
    ``run_monitor/uncounted_resumes`` tag that happened (the tag is written before the resume,
    so a number past ``resumes`` is one that a stopped daemon never launched)."""
    return sum(1 for n in uncounted_numbers(tags) if 0 < n <= resumes)


def uncounted_numbers(tags: Mapping[str, str]) -> set[int]:
    """The attempt numbers in the run's ``run_monitor/uncounted_resumes`` tag."""
    parts = (part.strip() for part in tags.get(c.UNCOUNTED_RESUMES_TAG, "").split(","))
    return {int(part) for part in parts if part.isdigit()}


def counted_resumes(run: RunFacts) -> int:
    return run.resume_attempts - uncounted_attempts(run.tags, run.resume_attempts)


def next_resume(
    run: RunFacts, settings: MonitorSettings, now: float, uncounted: bool
) -> list[Action] | None:
    """The resume (or the wait before it) within the budget; None when it is used up.
    ``uncounted`` resumes use ``max_uncounted_resumes`` while it lasts, then the attempts."""
    used_uncounted = uncounted_attempts(run.tags, run.resume_attempts)
    if uncounted and used_uncounted < settings.uncounted_resumes:
        return resume_or_wait(run, settings, now, uncounted=True)
    if run.resume_attempts - used_uncounted < settings.resume_attempts:
        return resume_or_wait(run, settings, now)
    return None


def resume_or_wait(
    run: RunFacts,
    settings: MonitorSettings,
    now: float,
    kill_first: bool = False,
    uncounted: bool = False,
) -> list[Action]:
    """The next resume, once the back-off for its attempt number has passed since the later
    of the crash's first sighting and the previous resume (in a crash loop the new worker dies
    before any pass sees it healthy, so the sighting alone would shrink the back-off); until
    then one event saying when it will happen."""
    attempt = run.resume_attempts + 1
    wait = settings.resume_backoff.wait_seconds(attempt, run.run_id)
    since = max(
        (t for t in (run.unhealthy_since, run.last_resume_at) if t is not None), default=now
    )
    if now - since >= wait:
        return [crash_resume(run, settings, attempt, kill_first, uncounted)]
    if run.tags.get(c.RESUME_SCHEDULED_TAG) == str(attempt):
        return []
    at = datetime.datetime.fromtimestamp(since + wait, datetime.timezone.utc).isoformat()
    scheduled = c.resume_scheduled_message(attempt, since + wait - now, at)
    return [Notice(scheduled, c.RESUME_SCHEDULED_TAG, str(attempt), logging.INFO)]


def crash_resume(
    run: RunFacts, settings: MonitorSettings, attempt: int, kill_first: bool, uncounted: bool
) -> ResumeRun:
    """The resume of a crashed worker: its cause in a tag, uncounted attempts in another, and
    after an OOM kill on Kubernetes (``oom_memory``) the raised memory."""
    cause = cause_of(run)
    message = c.resuming_message(str(run.health), run.run_id, cause.kind if uncounted else None)
    tags: dict[str, str] = {c.CRASH_CAUSE_TAG: cause.kind}
    if uncounted:
        numbers = uncounted_numbers(run.tags) | {attempt}
        tags[c.UNCOUNTED_RESUMES_TAG] = ",".join(map(str, sorted(numbers)))
    note = None
    if cause.kind == OOM_KILLED and settings.oom_memory is not None:
        usual = run.history.peaks.get(RUN_WORKER) if run.history else None
        raised = raised_memory(run.tags, cause.memory, settings.oom_memory, usual)
        if raised is not None:
            tags.update(raised.tags)
            note = raised.note
    kill_first = kill_first or bool(run.health and run.health.fence)
    reason = _reason(run)
    return ResumeRun(attempt, message, kill_first, reason, cause.kind, tags, note)


def is_crashed(run: RunFacts, settings: MonitorSettings, now: float, starting: bool) -> bool:
    """A definite failure of a started worker counts at once. UNKNOWN, transient results, and
    anything unhealthy while the run is still STARTING (a worker being created can look
    missing or not running yet) count once they have lasted the grace period. A check that
    raised or timed out never counts: it says nothing about the worker."""
    health: Health | None = run.health
    if health is None or health.healthy or not health.answered:
        return False
    uncertain = starting or health.transient or health.status == WorkerStatus.UNKNOWN.value
    if not uncertain:
        return True
    since = now if run.unhealthy_since is None else run.unhealthy_since
    return now - since >= settings.worker_unknown_grace_seconds


def hang_shorter_than_beats(run: RunFacts, limit: Limit, settings: MonitorSettings) -> list:
    """Once per run: its hang timeout is shorter than the beats' interval (see ``hung``)."""
    interval, tag = settings.heartbeats.interval_seconds, f"{c.WARNED_TAG_PREFIX}hang_timeout"
    if not limit.seconds or limit.seconds >= interval or tag in run.tags or not run.workers:
        return []
    message = c.hang_shorter_than_beats_message(limit.seconds, interval)
    return [Notice(message, tag, f"{limit.seconds:g}", level=logging.INFO)]


def unhealthy_clock(health: Health | None, since: float | None, now: float) -> float | None:
    """When the worker was first seen unhealthy: now for a new result, as before while a
    check has no answer (a hung API call neither starts nor resets the clock)."""
    if health is None or health.healthy:
        return None
    if since is None:
        return now if health.answered else None
    return since


def fails_for_a_crash(actions: Sequence[Action]) -> bool:
    """A failure for a crashed or lost worker (no resume left, or ``crash_policy: fail``)."""
    crash = (c.REASON_WORKER_CRASH, c.REASON_WORKER_LOST)
    return any(isinstance(a, FailRun) and a.reason in crash for a in actions)
