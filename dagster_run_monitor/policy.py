"""Decide: facts + settings + now -> actions. Pure: no Dagster calls, no clock, no I/O."""

from collections.abc import Mapping
from dataclasses import dataclass

from dagster._core.events import RunFailureReason
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRunStatus

from dagster_run_monitor import constants as c
from dagster_run_monitor.durations import parse_duration
from dagster_run_monitor.facts import RunFacts
from dagster_run_monitor.health import Health
from dagster_run_monitor.settings import MonitorSettings


@dataclass(frozen=True)
class FailRun:
    """Mark the run FAILURE, optionally terminating its worker first."""

    message: str
    reason: str  # value of the run_monitor/reason tag
    failure_reason: RunFailureReason | None = None  # the dagster/failure_reason tag
    terminate_first: bool = False
    debug_info: bool = False  # append the launcher's get_run_worker_debug_info
    container_logs: bool = True


@dataclass(frozen=True)
class CancelRun:
    """Mark a run that did not finish canceling as CANCELED."""

    message: str


@dataclass(frozen=True)
class EnforceMaxRuntime:
    """RUN_CANCELING, terminate the worker, FAILURE (Dagster's sequence)."""

    limit_seconds: float


@dataclass(frozen=True)
class ResumeRun:
    """Launch a new worker for the run through ``instance.resume_run``."""

    attempt: int
    message: str


@dataclass(frozen=True)
class WarnRun:
    """One warning event on the run, remembered in a tag so it is written once per value."""

    message: str
    tag: str
    value: str


Action = FailRun | CancelRun | EnforceMaxRuntime | ResumeRun | WarnRun


def decide(run: RunFacts, settings: MonitorSettings, now: float) -> list[Action]:
    """Everything due for one run on this pass, in the order to apply it."""
    limit, warning = max_runtime(run.tags, settings)
    actions: list[Action] = [warning] if warning else []
    status = run.status
    if status == DagsterRunStatus.NOT_STARTED:
        actions += start_timeout(run, run.created_at, settings, now, terminate=False)
    elif status == DagsterRunStatus.STARTING:
        actions += start_failure(run, settings, now) or start_timeout(
            run, run.launched_at or run.updated_at, settings, now, terminate=True
        )
    elif status == DagsterRunStatus.STARTED:
        actions += worker_crash(run, settings, now) or runtime_exceeded(run, limit, now)
    elif status == DagsterRunStatus.SUSPENDED:
        actions += runtime_exceeded(run, limit, now)
    elif status == DagsterRunStatus.CANCELING:
        actions += cancel_timeout(run, settings, now)
    return actions


def max_runtime(tags: Mapping[str, str], settings: MonitorSettings) -> tuple[float, WarnRun | None]:
    """The run's limit in seconds (0 = none) from its tag or the instance, and a warning if the
    tag is unusable and has not been warned about yet."""
    for tag in (c.MAX_RUNTIME_TAG, c.MAX_RUNTIME_ALIAS_TAG):
        raw = tags.get(tag)
        if raw is None or raw == "":
            continue
        try:
            return parse_duration(raw), None
        except ValueError:
            warned_tag = f"{c.WARNED_TAG_PREFIX}{tag}"
            warning = None
            if tags.get(warned_tag) != raw:
                message = c.invalid_tag_message(tag, raw, settings.max_runtime_seconds)
                warning = WarnRun(message, warned_tag, raw)
            return settings.max_runtime_seconds, warning
    return settings.max_runtime_seconds, None


def start_timeout(
    run: RunFacts, since: float, settings: MonitorSettings, now: float, terminate: bool
) -> list[Action]:
    limit = settings.start_timeout_seconds
    if not limit or now - since < limit:
        return []
    return [
        FailRun(
            c.start_timeout_message(limit),
            c.REASON_START_TIMEOUT,
            RunFailureReason.START_TIMEOUT,
            terminate_first=terminate,
            debug_info=True,
        )
    ]


def start_failure(run: RunFacts, settings: MonitorSettings, now: float) -> list[Action]:
    """A STARTING run whose worker is already dead fails now, not at the start timeout."""
    if not is_crashed(run, settings, now, starting=True):
        return []
    return [
        FailRun(
            c.start_failed_message(str(run.health), run.run_id),
            c.REASON_START_FAILED,
            RunFailureReason.UNEXPECTED_TERMINATION,
            terminate_first=True,
            debug_info=True,
        )
    ]


def worker_crash(run: RunFacts, settings: MonitorSettings, now: float) -> list[Action]:
    """Resume a STARTED run whose worker died, or fail it once the attempts are used up."""
    if not is_crashed(run, settings, now, starting=False):
        return []
    health = str(run.health)
    attempts = settings.resume_attempts
    if run.resume_attempts < attempts:
        return [ResumeRun(run.resume_attempts + 1, c.resuming_message(health, run.run_id))]
    message = c.crash_failed_message(
        health, run.run_id, settings.max_resume_run_attempts, settings.can_resume
    )
    failed = run.health is not None and run.health.status == WorkerStatus.FAILED.value
    return [FailRun(message, c.REASON_WORKER_CRASH, debug_info=failed)]


def is_crashed(run: RunFacts, settings: MonitorSettings, now: float, starting: bool) -> bool:
    """A definite failure of a started worker counts at once. UNKNOWN, transient results, and
    anything unhealthy while the run is still STARTING (a worker being created can look
    missing or not running yet) count once they have lasted the grace period."""
    health: Health | None = run.health
    if health is None or health.healthy:
        return False
    uncertain = starting or health.transient or health.status == WorkerStatus.UNKNOWN.value
    if not uncertain:
        return True
    since = now if run.unhealthy_since is None else run.unhealthy_since
    return now - since >= settings.worker_unknown_grace_seconds


def runtime_exceeded(run: RunFacts, limit: float, now: float) -> list[Action]:
    if not limit or run.started_at is None or now - run.started_at <= limit:
        return []
    return [EnforceMaxRuntime(limit)]


def cancel_timeout(run: RunFacts, settings: MonitorSettings, now: float) -> list[Action]:
    limit = settings.cancel_timeout_seconds
    since = run.canceling_at if run.canceling_at is not None else run.updated_at
    if not limit or now - since < limit:
        return []
    return [CancelRun(c.cancel_timeout_message(limit))]
