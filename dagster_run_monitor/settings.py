"""The ``run_monitoring:`` block of dagster.yaml -> one validated, frozen settings object."""

import fnmatch
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from typing import Any as AnyType

from dagster import Bool
from dagster._config.errors import (
    DagsterEvaluationErrorReason,
    EvaluationError,
    FieldNotDefinedErrorData,
)
from dagster._config.stack import EvaluationStackPathEntry, EvaluationStackRoot
from dagster._core.errors import DagsterInvalidConfigError

from dagster_run_monitor.alert_settings import AlertSettings, alert_settings
from dagster_run_monitor.crash_cause import CAUSES, CrashCause
from dagster_run_monitor.limit_table import (
    CANCEL_TIMEOUT,
    LIMITS,
    MAX_RUNTIME,
    QUEUE_TIMEOUT,
    RULE_KEYS,
    STALL_TIMEOUT,
    START_TIMEOUT,
    STEP_RUNTIME,
)
from dagster_run_monitor.memory import OomMemory, parse_memory

if TYPE_CHECKING:
    from dagster import DagsterInstance

# Dagster's documented defaults. `max_resume_run_attempts` is documented as 3 while Dagster's
# code defaults to 0; we follow the documentation, for launchers that can resume.
DEFAULT_MAX_RESUME_RUN_ATTEMPTS = 3
DEFAULT_POLL_INTERVAL_SECONDS = 120

# Dagster's own keys, with the types Dagster gives them (the limits among them: limit_table).
DAGSTER_KEYS = {
    "enabled": Bool,
    **{kind.key: int for kind in LIMITS if kind.dagsters},
    "max_resume_run_attempts": int,
    "poll_interval_seconds": int,
    "cancellation_thread_poll_interval_seconds": int,
    "free_slots_after_run_end_seconds": int,
}

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


_MINIMUM = {
    "action_threads": 1,
    "poll_interval_seconds": 1,
    "health_check_threads": 1,
    "health_check_timeout_seconds": 1,
}


_SCALARS = tuple(  # the plain values of the block that MonitorSettings keeps
    key
    for key in (*DAGSTER_KEYS, *OUR_KEYS, "dry_run", "resume_on_start_failure")
    if key in MonitorSettings.__dataclass_fields__
)


def settings_from_config(
    config: Mapping[str, AnyType] | None, can_check_health: bool = False, can_resume: bool = False
) -> MonitorSettings:
    """Validate the ``run_monitoring`` mapping; a bad value raises naming its key."""
    config = dict(config or {})
    base = MonitorSettings()
    values: dict[str, AnyType] = {}
    for key in _SCALARS:
        value = config.get(key)
        default = getattr(base, key)
        if value is None:
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise invalid_setting(key, value, "expected true or false")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_setting(key, value, "expected a number")
        elif value < _MINIMUM.get(key, 0):
            raise invalid_setting(key, value, f"must be at least {_MINIMUM.get(key, 0)}")
        values[key] = value
    if config.get("stall_action", "fail") not in STALL_ACTIONS:
        raise invalid_setting("stall_action", config["stall_action"], "expected fail or resume")
    values["stall_action"] = config.get("stall_action", "fail")
    values["warn_after_fraction"] = _fraction(
        "warn_after_fraction", config.get("warn_after_fraction")
    )
    values["resume_backoff"] = _backoff(config.get("resume_backoff") or {})
    values["alerts"] = alert_settings(config.get("alerts") or {}, invalid_setting)
    values.update(_metrics(config.get("metrics")))
    values["rules"] = tuple(_rule(i, rule) for i, rule in enumerate(config.get("rules") or [], 1))
    entries = config.get("crash_policy") or []
    if not isinstance(entries, list):
        raise invalid_setting("crash_policy", entries, "expected a list of entries")
    values["crash_policy"] = tuple(_crash_rule(i, entry) for i, entry in enumerate(entries, 1))
    values["oom_memory"] = _oom_memory(config.get("oom_memory"))
    return MonitorSettings(**values, can_check_health=can_check_health, can_resume=can_resume)


def _fraction(key: str, value: AnyType) -> float:
    if value is None or value == 0:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise invalid_setting(key, value, "expected a fraction between 0 and 1, such as 0.8")
    return float(value)


MAX_BACKOFF_SECONDS = 365 * 86400  # a resume a year away is a configuration mistake


def _backoff(config: Mapping[str, AnyType]) -> Backoff:
    backoff = Backoff(**{k: float(v) for k, v in config.items() if v is not None})
    for key in ("initial_seconds", "multiplier", "max_seconds", "jitter"):
        if not math.isfinite(getattr(backoff, key)):
            raise invalid_setting(f"resume_backoff.{key}", getattr(backoff, key), "not a number")
    for key in ("initial_seconds", "max_seconds"):
        if getattr(backoff, key) > MAX_BACKOFF_SECONDS:
            why = f"must be at most {MAX_BACKOFF_SECONDS} (a year)"
            raise invalid_setting(f"resume_backoff.{key}", getattr(backoff, key), why)
    for key in ("initial_seconds", "max_seconds", "jitter"):
        if getattr(backoff, key) < 0:
            raise invalid_setting(
                f"resume_backoff.{key}", getattr(backoff, key), "must be at least 0"
            )
    if backoff.multiplier < 1:
        raise invalid_setting("resume_backoff.multiplier", backoff.multiplier, "must be at least 1")
    if backoff.jitter > 1:
        raise invalid_setting("resume_backoff.jitter", backoff.jitter, "must be at most 1")
    return backoff


def _metrics(config: Mapping[str, AnyType] | None) -> dict[str, AnyType]:
    if not config:
        return {}
    port = config.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise invalid_setting("metrics.port", port, "expected a port number (1-65535)")
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        why = "needs prometheus_client: pip install dagster-run-monitor[metrics]"
        raise invalid_setting("metrics", dict(config), why) from None
    return {"metrics_port": port, "metrics_host": config.get("host") or "127.0.0.1"}


def _rule(index: int, config: Mapping[str, AnyType]) -> Rule:
    from dagster_run_monitor.durations import parse_duration

    match = config.get("match") or {}
    limits = {}
    for key in RULE_KEYS:
        if config.get(key) is None:
            continue
        try:
            limits[key] = parse_duration(config[key])
        except ValueError:
            why = "expected seconds or a duration"
            raise invalid_setting(f"rules[{index}].{key}", config[key], why) from None
    fraction = config.get("warn_after_fraction")
    return Rule(
        index=index,
        job=match.get("job"),
        location=match.get("location"),
        tags={str(k): str(v) for k, v in (match.get("tags") or {}).items()},
        limits=limits,
        warn_after_fraction=(
            _fraction(f"rules[{index}].warn_after_fraction", fraction) if fraction else None
        ),
    )


def _crash_rule(index: int, config: AnyType) -> CrashRule:
    key = f"crash_policy[{index}]"
    if not isinstance(config, Mapping):
        raise invalid_setting(key, config, "expected {causes: [...], action: ...}")
    unknown = set(config) - {"causes", "exit_codes", "action"}
    if unknown:
        raise invalid_setting(key, dict(config), f"unknown key(s) {', '.join(sorted(unknown))}")
    action = config.get("action")
    if action not in CRASH_ACTIONS:
        raise invalid_setting(
            f"{key}.action", action, f"expected one of {', '.join(CRASH_ACTIONS)}"
        )
    causes = config.get("causes")
    if causes is not None:
        if not isinstance(causes, list) or not causes or any(c not in CAUSES for c in causes):
            why = f"expected a list of causes among {', '.join(CAUSES)}"
            raise invalid_setting(f"{key}.causes", causes, why)
    codes = config.get("exit_codes")
    if codes is not None:
        valid = isinstance(codes, list) and codes
        if not valid or any(isinstance(code, bool) or not isinstance(code, int) for code in codes):
            raise invalid_setting(f"{key}.exit_codes", codes, "expected a list of integers")
    return CrashRule(
        index,
        action,
        frozenset(causes) if causes is not None else None,
        frozenset(codes) if codes is not None else None,
    )


def _oom_memory(config: AnyType) -> OomMemory | None:
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise invalid_setting("oom_memory", config, "expected {multiplier: 1.5, max: 16Gi}")
    unknown = set(config) - {"multiplier", "max"}
    if unknown:
        why = f"unknown key(s) {', '.join(sorted(unknown))}"
        raise invalid_setting("oom_memory", dict(config), why)
    oom = OomMemory(**{k: v for k, v in config.items() if v is not None})
    number = isinstance(oom.multiplier, (int, float)) and not isinstance(oom.multiplier, bool)
    if not number or not math.isfinite(oom.multiplier) or oom.multiplier <= 1:
        raise invalid_setting("oom_memory.multiplier", oom.multiplier, "must be a number above 1")
    try:
        parse_memory(oom.max)
    except ValueError as error:
        raise invalid_setting("oom_memory.max", oom.max, str(error)) from None
    return replace(oom, multiplier=float(oom.multiplier), max=str(oom.max))


def invalid_setting(key: str, value: object, why: str) -> DagsterInvalidConfigError:
    block = EvaluationStackPathEntry(parent=EvaluationStackRoot(), field_name="run_monitoring")
    error = EvaluationError(
        stack=EvaluationStackPathEntry(parent=block, field_name=key),
        reason=DagsterEvaluationErrorReason.FAILED_POST_PROCESSING,
        message=f"Invalid value {value!r} for run_monitoring.{key}: {why}.",
        error_data=FieldNotDefinedErrorData(field_name=key),
    )
    return DagsterInvalidConfigError(
        "Errors whilst loading the run_monitoring block of dagster.yaml", [error], {key: value}
    )


def read_settings(instance: "DagsterInstance") -> MonitorSettings:
    """Validated settings of any instance; the launcher's abilities are read only if enabled."""
    config = instance.get_settings("run_monitoring") or {}
    if not config.get("enabled"):
        return settings_from_config(config)
    launcher = instance.run_launcher
    settings = settings_from_config(
        config,
        can_check_health=launcher.supports_check_run_worker_health,
        can_resume=launcher.supports_resume_run,
    )
    if settings.stall_action == "resume" and not hasattr(launcher, "kill_worker"):
        raise invalid_setting(
            "stall_action",
            "resume",
            f"{type(launcher).__name__} cannot stop a hung worker without canceling its run;"
            " use fail, or ProcessRunLauncher",
        )
    return settings
