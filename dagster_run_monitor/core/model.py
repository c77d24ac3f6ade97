"""The decision core's vocabulary: what is known about a run (facts, worker health), and the
actions and alerts decided for it. Plain frozen data, no I/O: ``policy`` and the modules that
report on decisions (``alerts.sender``, ``metrics``) import this, never the storage readers."""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from dagster import DagsterRunStatus
from dagster._core.events import RunFailureReason
from dagster._core.launcher import WorkerStatus

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.alert_settings import BREAKER, CANCELED, FAILED, RESUMED, WARNING
from dagster_run_monitor.core.crash_cause import CrashCause
from dagster_run_monitor.core.heartbeats import Sight
from dagster_run_monitor.core.learned import History
from dagster_run_monitor.core.limits import Limits

HEALTHY = frozenset({WorkerStatus.RUNNING.value, WorkerStatus.SUCCESS.value})


@dataclass(frozen=True)
class Health:
    """One worker health result, as plain data."""

    status: str  # a WorkerStatus value: RUNNING, SUCCESS, FAILED, NOT_FOUND, UNKNOWN
    message: str = ""
    transient: bool = False
    answered: bool = True  # False: the check raised or timed out, which proves nothing
    seconds: float = field(default=0.0, compare=False)  # how long the check took
    cause: CrashCause | None = None  # why an unhealthy worker died, where the launcher tells
    unseen: bool = False  # a verdict of not seeing the worker (stale heartbeats), no evidence
    fence: bool = False  # lost, though the launcher sees it running: stop it before a resume

    @property
    def healthy(self) -> bool:
        return self.status in HEALTHY

    @property
    def blind(self) -> bool:
        """A verdict the monitor's own blindness could produce (the breaker counts these): a
        stale heartbeat, a worker not found; never a crash with evidence (an exit, a signal)."""
        return self.answered and (self.unseen or self.status == WorkerStatus.NOT_FOUND.value)

    def __str__(self) -> str:  # Dagster's CheckRunHealthResult text, then the cause
        return f"{self.status}: '{self.message}'" + (f" ({self.cause})" if self.cause else "")


# Dagster 1.13 added SUSPENDED (a run paused by its code, no worker running); 1.12 has none.
SUSPENDED = getattr(DagsterRunStatus, "SUSPENDED", None)
MONITORED_STATUSES = tuple(
    status
    for status in (
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        SUSPENDED,
        DagsterRunStatus.CANCELING,
    )
    if status is not None
)
HEALTH_CHECKED_STATUSES = (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED)
HEALTH_CHECKED = frozenset(HEALTH_CHECKED_STATUSES)


@dataclass(frozen=True)
class RunFacts:
    """What the decision core knows about one in-progress run. Times are UNIX seconds."""

    run_id: str
    job_name: str
    status: DagsterRunStatus
    created_at: float
    updated_at: float
    tags: Mapping[str, str] = field(default_factory=dict)
    location: str | None = None  # code location name
    enqueued_at: float | None = None  # latest RUN_ENQUEUED event (QUEUED runs)
    last_event_at: float | None = None  # latest event of any kind (STARTED runs, for stalls)
    running_steps: Mapping[str, float] = field(default_factory=dict)  # step key -> start time
    step_limits: Mapping[str, str] = field(default_factory=dict)  # step key -> op tag value
    started_at: float | None = None  # RUN_START
    launched_at: float | None = None  # latest PIPELINE_STARTING event
    canceling_at: float | None = None  # latest RUN_CANCELING event
    health: Health | None = None  # None where the launcher has no health check
    unhealthy_since: float | None = None  # first pass that saw this worker unhealthy
    resume_attempts: int = 0
    last_resume_at: float | None = None  # the latest resume event (unhealthy workers only)
    limits: "Limits | None" = None  # resolved once per pass (None: decide resolves them)
    workers: tuple[Sight, ...] = ()  # its workers' heartbeats as this daemon saw them
    quiet_since: float | None = None  # no event, same stacks, no CPU time since (hang clock)
    quiet_seen_until: float | None = None  # the latest beats that showed it (the evidence)
    history: History | None = None  # its job's recent successful runs (learned limits)
    steps_gone: frozenset[str] = frozenset()  # lost step workers the platform shows gone

    @property
    def oldest_step_started_at(self) -> float | None:
        return min(self.running_steps.values(), default=None)


@dataclass(frozen=True)
class FailRun:
    """Mark the run FAILURE, optionally terminating its worker first."""

    message: str
    reason: str  # value of the run_monitor/reason tag
    failure_reason: RunFailureReason | None = None  # the dagster/failure_reason tag
    terminate_first: bool = False
    debug_info: bool = False  # append the launcher's get_run_worker_debug_info
    container_logs: bool = True
    cause: str | None = None  # a crash's cause (the run_monitor/crash_cause tag)
    # The limit passed and the value seen, for logs and metrics (not part of the decision).
    limit: float | None = field(default=None, compare=False)
    observed: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class CancelRun:
    """Mark the run CANCELED (a cancel that never finished, or a queue timeout)."""

    message: str
    reason: str = c.REASON_CANCEL_TIMEOUT
    debug_info: bool = True
    limit: float | None = field(default=None, compare=False)
    observed: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TerminateAndFail:
    """RUN_CANCELING, terminate the worker, FAILURE: Dagster's max-runtime sequence."""

    canceling_message: str
    failure_message: str
    reason: str
    limit: float | None = field(default=None, compare=False)
    observed: float | None = field(default=None, compare=False)
    tags: Mapping[str, str] = field(default_factory=dict)  # written with the reason tag


@dataclass(frozen=True)
class ResumeRun:
    """Launch a new worker for the run through ``instance.resume_run``."""

    attempt: int  # Dagster's attempt number: every resume so far, counted or not, plus one
    message: str
    kill_first: bool = False  # stop a hung worker first (stalled runs)
    reason: str = c.REASON_WORKER_CRASH
    cause: str | None = None  # a crash's cause (the run_monitor/crash_cause tag)
    tags: Mapping[str, str] = field(default_factory=dict)  # written before the resume
    note: str | None = None  # an event before the resume's (what the resume changes)


@dataclass(frozen=True)
class Alert:
    """What alert sinks receive (a logger, your function, a webhook as JSON, Slack, ...)."""

    run_id: str
    job_name: str
    kind: str  # "warning", "invalid_tag", "failed", "resumed" or "canceled"
    message: str
    limit: str | None = None  # e.g. "max_runtime_seconds"
    limit_seconds: float | None = None
    elapsed_seconds: float | None = None
    fraction: float | None = None
    cause: str | None = None  # a crashed worker's: oom_killed, preempted, ... (crash_cause)
    reason: str | None = None  # the action's run_monitor/reason tag: worker_crash, ...

    @property
    def event(self) -> str:
        """Which of ``alerts.on`` it is: warning (a bad tag too), failed, resumed, canceled."""
        return WARNING if self.kind == "invalid_tag" else self.kind

    @property
    def subject(self) -> str:
        """A run and the reason of its alert, as it is known across daemons and restarts: the
        key that makes one incident of one run's one cause (PagerDuty's dedup_key)."""
        detail = self.limit or self.reason or self.cause or ""
        return f"{self.run_id}/{self.event}/{detail}"


def breaker_alert(message: str) -> Alert:
    """The one alert when the breaker opens (about the monitor, so no run)."""
    return Alert("", "", BREAKER, message, reason="breaker")


def subject_event(subject: str) -> str:
    """The event of an ``Alert.subject``: warning, failed, resumed or canceled."""
    return subject.split("/")[1] if subject.count("/") >= 2 else ""


@dataclass(frozen=True)
class Notice:
    """One event on the run, remembered in a tag so it is written once per value."""

    message: str
    tag: str
    value: str
    level: int = logging.WARNING
    alert: Alert | None = None


Action = FailRun | CancelRun | TerminateAndFail | ResumeRun | Notice


def with_where(action: Action, where: str) -> Action:
    """The action with where the run's workers were appended to its event's message."""
    if isinstance(action, TerminateAndFail):  # on its first event too: it survives every path
        return replace(
            action,
            canceling_message=f"{action.canceling_message}\n{where}",
            failure_message=f"{action.failure_message}\n{where}",
        )
    if isinstance(action, (FailRun, ResumeRun)):
        return replace(action, message=f"{action.message}\n{where}")
    prefixes = (c.STEP_WORKER_LOST_TAG_PREFIX, c.MEMORY_WARNED_TAG_PREFIX)
    if isinstance(action, Notice) and action.tag.startswith(prefixes):
        alert = action.alert and replace(action.alert, message=f"{action.alert.message}\n{where}")
        return replace(action, message=f"{action.message}\n{where}", alert=alert)
    return action


def action_alert(run_id: str, job_name: str, action: Action) -> Alert | None:
    """The alert for an action once applied: a notice's own (a warning), else what the
    monitor did (failed, resumed, canceled), in the event-log message's words."""
    if isinstance(action, Notice):
        return action.alert
    kind, message = {
        FailRun: lambda a: (FAILED, a.message),
        TerminateAndFail: lambda a: (FAILED, a.failure_message),
        ResumeRun: lambda a: (RESUMED, a.message),
        CancelRun: lambda a: (CANCELED, a.message),
    }[type(action)](action)
    return Alert(
        run_id, job_name, kind, message, cause=getattr(action, "cause", None), reason=action.reason
    )
