"""The ``run_monitoring:`` block of dagster.yaml -> the core's validated, frozen settings.
A bad value raises at start-up naming its key (``invalid_setting``)."""

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING
from typing import Any as AnyType

from dagster._config.errors import (
    DagsterEvaluationErrorReason,
    EvaluationError,
    FieldNotDefinedErrorData,
)
from dagster._config.stack import EvaluationStackPathEntry, EvaluationStackRoot
from dagster._core.errors import DagsterInvalidConfigError

from dagster_run_monitor.config.alerts import alert_settings, read_alerts
from dagster_run_monitor.config.schema import DAGSTER_KEYS
from dagster_run_monitor.core.crash_cause import CAUSES
from dagster_run_monitor.core.durations import parse_duration
from dagster_run_monitor.core.learned import FACTOR_KEYS, LearnedLimits
from dagster_run_monitor.core.limit_table import RULE_KEYS
from dagster_run_monitor.core.memory import OomMemory, parse_memory
from dagster_run_monitor.core.settings import (
    CRASH_ACTIONS,
    OUR_KEYS,
    STALL_ACTIONS,
    Backoff,
    Breaker,
    CrashRule,
    Heartbeats,
    MemoryWatch,
    MonitorSettings,
    Rule,
    StepRetries,
)

if TYPE_CHECKING:
    from dagster import DagsterInstance

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
    alerts = read_alerts(config.get("alerts"), invalid_setting)
    values["alerts"] = alert_settings(alerts, invalid_setting)
    values.update(_metrics(config.get("metrics")))
    values["rules"] = tuple(_rule(i, rule) for i, rule in enumerate(config.get("rules") or [], 1))
    entries = config.get("crash_policy") or []
    if not isinstance(entries, list):
        raise invalid_setting("crash_policy", entries, "expected a list of entries")
    values["crash_policy"] = tuple(_crash_rule(i, entry) for i, entry in enumerate(entries, 1))
    values["oom_memory"] = _oom_memory(config.get("oom_memory"))
    values["heartbeats"] = _heartbeats(config.get("worker_heartbeats"))
    values["breaker"] = _breaker(config.get("breaker"))
    values["learned"] = _learned(config.get("learned_limits"))
    values["step_retries"] = _step_retries(config.get("step_retries"))
    values["memory"] = _memory(config.get("memory"))
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
    factors = {
        key: _factor(f"rules[{index}].{key}", config[key])
        for key in FACTOR_KEYS
        if config.get(key) is not None
    }
    return Rule(
        index=index,
        job=match.get("job"),
        location=match.get("location"),
        tags={str(k): str(v) for k, v in (match.get("tags") or {}).items()},
        limits=limits,
        warn_after_fraction=(
            _fraction(f"rules[{index}].warn_after_fraction", fraction) if fraction else None
        ),
        factors=factors,
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


def _block(key: str, config: AnyType, default: object) -> dict[str, AnyType]:
    """A small mapping block's values, its unknown keys refused."""
    if config is None:
        return {}
    fields = default.__dataclass_fields__  # type: ignore[attr-defined]
    if not isinstance(config, Mapping):
        raise invalid_setting(key, config, f"expected a mapping of {', '.join(fields)}")
    unknown = set(config) - set(fields)
    if unknown:
        raise invalid_setting(key, dict(config), f"unknown key(s) {', '.join(sorted(unknown))}")
    return {k: v for k, v in config.items() if v is not None}


def _number(key: str, value: AnyType, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        bound = f"between {low:g} and {high:g}" if high != math.inf else f"at least {low:g}"
        raise invalid_setting(key, value, f"expected a number {bound}")
    return value


def _heartbeats(config: AnyType) -> Heartbeats:
    values = _block("worker_heartbeats", config, Heartbeats())
    if not isinstance(values.get("enabled", True), bool):
        raise invalid_setting("worker_heartbeats.enabled", values["enabled"], "expected a bool")
    beats = Heartbeats(**values)
    interval = _number("worker_heartbeats.interval_seconds", beats.interval_seconds, 1)
    timeout = beats.timeout_seconds
    _number("worker_heartbeats.timeout_seconds", timeout, 2 * interval)
    return beats


def _breaker(config: AnyType) -> Breaker:
    breaker = Breaker(**_block("breaker", config, Breaker()))
    _number("breaker.fraction", breaker.fraction, 0, 1)
    _number("breaker.min_runs", breaker.min_runs, 1)
    return breaker


def _step_retries(config: AnyType) -> StepRetries:
    retries = StepRetries(**_block("step_retries", config, StepRetries()))
    if not isinstance(retries.enabled, bool):
        raise invalid_setting("step_retries.enabled", retries.enabled, "expected true or false")
    _integer("step_retries.max_retries", retries.max_retries, 0)
    return retries


def _memory(config: AnyType) -> MemoryWatch:
    memory = MemoryWatch(**_block("memory", config, MemoryWatch()))
    _number("memory.warn_fraction", memory.warn_fraction, 0, 1)
    return memory


def _learned(config: AnyType) -> LearnedLimits:
    learned = LearnedLimits(**_block("learned_limits", config, LearnedLimits()))
    key = "learned_limits."
    for name in FACTOR_KEYS:
        _factor(key + name, getattr(learned, name))
    _integer(key + "min_runs", learned.min_runs, 2)
    _integer(key + "runs", learned.runs, learned.min_runs)
    percentile = learned.percentile
    number = isinstance(percentile, (int, float)) and not isinstance(percentile, bool)
    if not number or not 0 < percentile <= 100:
        raise invalid_setting(key + "percentile", percentile, "expected a number in (0, 100]")
    _number(key + "min_seconds", learned.min_seconds, 0)
    _number(key + "refresh_seconds", learned.refresh_seconds, 1)
    return learned


def _factor(key: str, value: AnyType) -> float:
    """0 (off), or a multiple of at least 1 of the learned percentile."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or (value != 0 and value < 1):
        raise invalid_setting(key, value, "expected 0 (off) or a factor of at least 1, such as 3")
    return float(value)


def _integer(key: str, value: AnyType, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise invalid_setting(key, value, f"expected a whole number of at least {low}")
    return value


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
