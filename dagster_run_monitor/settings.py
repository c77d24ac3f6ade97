"""The ``run_monitoring:`` block of dagster.yaml -> one validated, frozen settings object."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dagster import Bool, Field, IntSource
from dagster._config.errors import (
    DagsterEvaluationErrorReason,
    EvaluationError,
    FieldNotDefinedErrorData,
)
from dagster._config.stack import EvaluationStackPathEntry, EvaluationStackRoot
from dagster._core.errors import DagsterInvalidConfigError

# Dagster's documented defaults. `max_resume_run_attempts` is documented as 3 while Dagster's
# code defaults to 0; we follow the documentation, for launchers that can resume.
DEFAULT_START_TIMEOUT_SECONDS = 180
DEFAULT_CANCEL_TIMEOUT_SECONDS = 180
DEFAULT_MAX_RESUME_RUN_ATTEMPTS = 3
DEFAULT_POLL_INTERVAL_SECONDS = 120

# Dagster's own keys, with the types Dagster gives them.
_DAGSTER_KEYS = {
    "enabled": Bool,
    "start_timeout_seconds": int,
    "cancel_timeout_seconds": int,
    "max_runtime_seconds": int,
    "max_resume_run_attempts": int,
    "poll_interval_seconds": int,
    "cancellation_thread_poll_interval_seconds": int,
    "free_slots_after_run_end_seconds": int,
}

# Our keys: name -> (default, description).
_OUR_KEYS: dict[str, tuple[int, str]] = {
    "worker_unknown_grace_seconds": (
        60,
        "How long a worker health result of UNKNOWN, a transient failure, or any unhealthy"
        " result while the run is STARTING must persist before it counts as a crash.",
    ),
    "health_check_timeout_seconds": (
        30,
        "Time limit for one run's worker health check; a slower check counts as UNKNOWN.",
    ),
    "health_check_threads": (16, "How many worker health checks run at once."),
}


def run_monitoring_config_field() -> Field:
    """Dagster's ``run_monitoring`` schema extended with our keys."""
    fields = {key: Field(kind, is_required=False) for key, kind in _DAGSTER_KEYS.items()}
    fields.update(
        {
            key: Field(IntSource, is_required=False, default_value=default, description=text)
            for key, (default, text) in _OUR_KEYS.items()
        }
    )
    return Field(fields, is_required=False)


@dataclass(frozen=True)
class MonitorSettings:
    """Everything a monitoring pass needs to know about the instance's configuration."""

    enabled: bool = False
    start_timeout_seconds: float = DEFAULT_START_TIMEOUT_SECONDS
    cancel_timeout_seconds: float = DEFAULT_CANCEL_TIMEOUT_SECONDS
    max_runtime_seconds: float = 0
    max_resume_run_attempts: int = DEFAULT_MAX_RESUME_RUN_ATTEMPTS
    poll_interval_seconds: float = DEFAULT_POLL_INTERVAL_SECONDS
    free_slots_after_run_end_seconds: float = 0
    worker_unknown_grace_seconds: float = _OUR_KEYS["worker_unknown_grace_seconds"][0]
    health_check_timeout_seconds: float = _OUR_KEYS["health_check_timeout_seconds"][0]
    health_check_threads: int = _OUR_KEYS["health_check_threads"][0]
    # What the run launcher can do (facts about the instance, not configuration).
    can_check_health: bool = False
    can_resume: bool = False

    @property
    def resume_attempts(self) -> int:
        """Resumes allowed per run: none where the launcher cannot resume."""
        return self.max_resume_run_attempts if self.can_resume else 0


_MINIMUM = {
    "poll_interval_seconds": 1,
    "health_check_threads": 1,
    "health_check_timeout_seconds": 1,
}


def settings_from_config(
    config: Mapping[str, Any] | None, can_check_health: bool = False, can_resume: bool = False
) -> MonitorSettings:
    """Validate the ``run_monitoring`` mapping; a bad value raises naming its key."""
    config = dict(config or {})
    values: dict[str, Any] = {}
    for key, default in _defaults().items():
        value = config.get(key)
        if value is None:
            values[key] = default
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise _invalid(key, value, "expected true or false")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _invalid(key, value, "expected a whole number of seconds")
        elif value < _MINIMUM.get(key, 0):
            raise _invalid(key, value, f"must be at least {_MINIMUM.get(key, 0)}")
        values[key] = value
    return MonitorSettings(**values, can_check_health=can_check_health, can_resume=can_resume)


def _defaults() -> dict[str, Any]:
    base = MonitorSettings()
    return {
        name: getattr(base, name)
        for name in MonitorSettings.__dataclass_fields__
        if name not in ("can_check_health", "can_resume")
    }


def _invalid(key: str, value: object, why: str) -> DagsterInvalidConfigError:
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
