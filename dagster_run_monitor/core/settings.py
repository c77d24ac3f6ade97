"""What a monitoring pass knows of the ``run_monitoring:`` block: frozen, typed settings
(``config.parse`` builds them from dagster.yaml and validates them)."""

import fnmatch
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from dagster_run_monitor.core.alert_settings import AlertSettings
from dagster_run_monitor.core.crash_cause import CrashCause
from dagster_run_monitor.core.learned import LearnedLimits
from dagster_run_monitor.core.limit_table import (
    CANCEL_TIMEOUT,
    HANG_TIMEOUT,
    LIMITS,
    MAX_RUNTIME,
    QUEUE_TIMEOUT,
    STALL_TIMEOUT,
    START_TIMEOUT,
    STEP_RUNTIME,
)
from dagster_run_monitor.core.memory import OomMemory

# Dagster's documented defaults. `max_resume_run_attempts` is documented as 3 while Dagster's
# code defaults to 0; we follow the documentation, for launchers that can resume.
DEFAULT_MAX_RESUME_RUN_ATTEMPTS = 3
DEFAULT_POLL_INTERVAL_SECONDS = 120

# Our numeric keys: name -> (default, description).
OUR_KEYS: dict[str, tuple[int, str]] = {
    "worker_unknown_grace_seconds": (
        60,
        "How long a worker health result of UNKNOWN, a transient failure, or any unhealthy"
        " result while the run is STARTING must persist before it counts as a crash.",
    ),
    "health_check_timeout_seconds": (
        30,
        "Time limit for one run's worker health check; a slower check has no answer and is"
        " retried next pass.",
    ),
    "health_check_threads": (128, "How many worker health checks run at once."),
    "action_threads": (16, "How many runs are acted on at once (each under its own claim)."),
    "storage_pool_size": (
        8,
        "PostgreSQL: connections the daemon keeps open per storage (run, event log) instead of"
        " a new connection for each query (0: Dagster's default, no pool).",
    ),
    "max_uncounted_resumes": (
        10,
        "Resumes a run may have under crash_policy's resume_uncounted (preemptions, lost"
        " nodes), besides max_resume_run_attempts; past it such crashes count.",
    ),
    **{kind.key: (int(kind.default), kind.description) for kind in LIMITS if not kind.dagsters},
}
STALL_ACTIONS = ("fail", "resume")
RESUME, FAIL, RESUME_UNCOUNTED = "resume", "fail", "resume_uncounted"
CRASH_ACTIONS = (RESUME, FAIL, RESUME_UNCOUNTED)


@dataclass(frozen=True)
class CrashRule:
    """One entry of ``crash_policy:``: what to do for the crashes it matches. First match
    wins; no match: resume."""

    index: int  # 1-based, as in rules
    action: str  # one of CRASH_ACTIONS
    causes: frozenset[str] | None = None  # None: any cause
    exit_codes: frozenset[int] | None = None  # None: any (or no) exit code

    def matches(self, cause: CrashCause) -> bool:
        return (self.causes is None or cause.kind in self.causes) and (
            self.exit_codes is None or cause.exit_code in self.exit_codes
        )

    def describe(self) -> str:
        what = [f"causes {', '.join(sorted(self.causes))}"] if self.causes else []
        if self.exit_codes:
            what.append(f"exit codes {', '.join(map(str, sorted(self.exit_codes)))}")
        return f"crash_policy[{self.index}] ({'; '.join(what) or 'any crash'}: {self.action})"


@dataclass(frozen=True)
class Rule:
    """One entry of ``rules:``: limits for the runs it matches. First match wins."""

    index: int  # 1-based, as people count them in the file
    job: str | None = None  # glob on the job name
    location: str | None = None  # glob on the code location name
    tags: Mapping[str, str] = field(default_factory=dict)  # all must be on the run
    limits: Mapping[str, float] = field(default_factory=dict)  # limit_table.RULE_KEYS -> seconds
    warn_after_fraction: float | None = None
    factors: Mapping[str, float] = field(default_factory=dict)  # learned.FACTOR_KEYS -> factor

    def matches(self, job_name: str, location: str | None, tags: Mapping[str, str]) -> bool:
        return (
            (self.job is None or fnmatch.fnmatchcase(job_name, self.job))
            and (self.location is None or fnmatch.fnmatchcase(location or "", self.location))
            and all(tags.get(key) == str(value) for key, value in self.tags.items())
        )

    def describe(self) -> str:
        parts = [f"{k} {v}" for k, v in (("job", self.job), ("location", self.location)) if v]
        parts += [f"tag {k}={v}" for k, v in self.tags.items()]
        return f"rule {self.index}" + (f" ({', '.join(parts)})" if parts else "")


@dataclass(frozen=True)
class Backoff:
    """Wait before resume attempt N: ``initial * multiplier ** (N - 1)``, capped, +- jitter."""

    initial_seconds: float = 0.0
    multiplier: float = 2.0
    max_seconds: float = 3600.0
    jitter: float = 0.0  # fraction of the wait, spread deterministically per run and attempt

    def wait_seconds(self, attempt: int, run_id: str) -> float:
        base = min(self.initial_seconds * self.multiplier ** (attempt - 1), self.max_seconds)
        if not self.jitter:
            return base
        spread = zlib.crc32(f"{run_id}:{attempt}".encode()) / 0xFFFFFFFF * 2 - 1  # -1..1
        return max(0.0, base * (1 + self.jitter * spread))


@dataclass(frozen=True)
class Heartbeats:
    """``worker_heartbeats:``: run and step workers beat every ``interval_seconds``; a run
    worker whose beat has not changed for ``timeout_seconds`` (as the daemon saw it) is lost."""

    enabled: bool = True
    interval_seconds: float = 30.0
    timeout_seconds: float = 180.0


@dataclass(frozen=True)
class MemoryWatch:
    """``memory:``: warn once when a worker uses ``warn_fraction`` of its memory limit (0:
    never). The figures come with the heartbeats (``worker_heartbeats``)."""

    warn_fraction: float = 0.9


@dataclass(frozen=True)
class StepRetries:
    """``step_retries:``: re-execute from failure a run whose failed steps died of an
    infrastructure cause that ``crash_policy`` resumes, at most ``max_retries`` times per run
    group (uncounted causes within ``max_uncounted_resumes``)."""

    enabled: bool = False
    max_retries: int = 3


@dataclass(frozen=True)
class Breaker:
    """``breaker:``: when at least ``min_runs`` runs and more than ``fraction`` of the checked
    runs look lost or missing in one pass, the monitor distrusts its own sight and acts on
    none of those verdicts."""

    fraction: float = 0.5
    min_runs: int = 10


@dataclass(frozen=True)
class MonitorSettings:
    """Everything a monitoring pass needs to know about the instance's configuration."""

    enabled: bool = False
    start_timeout_seconds: float = START_TIMEOUT.default
    cancel_timeout_seconds: float = CANCEL_TIMEOUT.default
    max_runtime_seconds: float = MAX_RUNTIME.default
    max_resume_run_attempts: int = DEFAULT_MAX_RESUME_RUN_ATTEMPTS
    poll_interval_seconds: float = DEFAULT_POLL_INTERVAL_SECONDS
    free_slots_after_run_end_seconds: float = 0
    worker_unknown_grace_seconds: float = OUR_KEYS["worker_unknown_grace_seconds"][0]
    health_check_timeout_seconds: float = OUR_KEYS["health_check_timeout_seconds"][0]
    health_check_threads: int = OUR_KEYS["health_check_threads"][0]
    action_threads: int = OUR_KEYS["action_threads"][0]
    max_uncounted_resumes: int = OUR_KEYS["max_uncounted_resumes"][0]
    storage_pool_size: int = OUR_KEYS["storage_pool_size"][0]
    queue_timeout_seconds: float = QUEUE_TIMEOUT.default
    stall_timeout_seconds: float = STALL_TIMEOUT.default
    max_step_runtime_seconds: float = STEP_RUNTIME.default
    hang_timeout_seconds: float = HANG_TIMEOUT.default
    stall_action: str = "fail"
    warn_after_fraction: float = 0.0
    dry_run: bool = False
    resume_on_start_failure: bool = False
    resume_backoff: Backoff = Backoff()
    alerts: AlertSettings = AlertSettings()
    metrics_port: int | None = None  # Prometheus endpoint (extra "metrics")
    metrics_host: str = "127.0.0.1"
    rules: tuple[Rule, ...] = ()
    crash_policy: tuple[CrashRule, ...] = ()
    oom_memory: OomMemory | None = None  # off unless configured
    heartbeats: Heartbeats = Heartbeats()
    breaker: Breaker = Breaker()
    step_retries: StepRetries = StepRetries()
    memory: MemoryWatch = MemoryWatch()
    learned: LearnedLimits = LearnedLimits()
    # What the run launcher can do (facts about the instance, not configuration).
    can_check_health: bool = False
    can_resume: bool = False

    @property
    def resume_attempts(self) -> int:
        """Resumes allowed per run: none where the launcher cannot resume."""
        return self.max_resume_run_attempts if self.can_resume else 0

    @property
    def uncounted_resumes(self) -> int:
        """Resumes allowed per run under ``resume_uncounted`` entries."""
        if not self.can_resume or all(r.action != RESUME_UNCOUNTED for r in self.crash_policy):
            return 0
        return self.max_uncounted_resumes

    def crash_rule(self, cause: CrashCause) -> CrashRule | None:
        """The ``crash_policy`` entry for ``cause`` (None: no entry matches; resume)."""
        return next((rule for rule in self.crash_policy if rule.matches(cause)), None)
