"""The ``run_monitoring:`` block's schema: Dagster's keys with Dagster's types, and ours."""

from dagster import Any, Bool, Field, Map, Permissive, StringSource

from dagster_run_monitor.core.alert_settings import ALERT_EVENTS, WARNING
from dagster_run_monitor.core.learned import FACTOR_KEYS
from dagster_run_monitor.core.limit_table import LIMITS, RULE_KEYS
from dagster_run_monitor.core.settings import OUR_KEYS

# Dagster's own keys, with the types Dagster gives them (the limits among them: limit_table).
DAGSTER_KEYS = {
    "enabled": Bool,
    **{kind.key: int for kind in LIMITS if kind.dagsters},
    "max_resume_run_attempts": int,
    "poll_interval_seconds": int,
    "cancellation_thread_poll_interval_seconds": int,
    "free_slots_after_run_end_seconds": int,
}


def run_monitoring_config_field() -> Field:
    """Dagster's ``run_monitoring`` schema extended with our keys."""
    fields = {key: Field(kind, is_required=False) for key, kind in DAGSTER_KEYS.items()}
    fields.update(
        {
            key: Field(int, is_required=False, default_value=default, description=text)
            for key, (default, text) in OUR_KEYS.items()
        }
    )
    fields.update(
        {
            "stall_action": Field(
                str, is_required=False, default_value="fail", description="fail or resume"
            ),
            "warn_after_fraction": Field(
                float,
                is_required=False,
                default_value=0.0,
                description="Warn once when a run has used this fraction of a limit (0: off).",
            ),
            "dry_run": Field(Bool, is_required=False, default_value=False),
            "resume_on_start_failure": Field(Bool, is_required=False, default_value=False),
            "resume_backoff": Field(
                {
                    "initial_seconds": Field(float, is_required=False, default_value=0.0),
                    "multiplier": Field(float, is_required=False, default_value=2.0),
                    "max_seconds": Field(float, is_required=False, default_value=3600.0),
                    "jitter": Field(float, is_required=False, default_value=0.0),
                },
                is_required=False,
            ),
            # Validated by alerts.py against alerts_schema(): YAML reads an unquoted ``on:``
            # as the key true, which Dagster's validation cannot take.
            "alerts": Field(Any, is_required=False),
            "metrics": Field(
                {
                    "port": Field(int, description="Serve Prometheus metrics on this port."),
                    "host": Field(str, is_required=False, default_value="127.0.0.1"),
                },
                is_required=False,
            ),
            # Validated by settings.py, so every error names the entry (crash_policy[i]).
            "crash_policy": Field(Any, is_required=False),
            "oom_memory": Field(Any, is_required=False),
            "worker_heartbeats": Field(Any, is_required=False),
            "breaker": Field(Any, is_required=False),
            "learned_limits": Field(Any, is_required=False),
            "step_retries": Field(Any, is_required=False),
            "memory": Field(Any, is_required=False),
            "rules": Field(
                [
                    {
                        "match": Field(
                            {
                                "job": Field(str, is_required=False),
                                "location": Field(str, is_required=False),
                                "tags": Field(Permissive(), is_required=False),
                            },
                            is_required=False,
                        ),
                        **{key: Field(Any, is_required=False) for key in RULE_KEYS},
                        "warn_after_fraction": Field(float, is_required=False),
                        **{key: Field(Any, is_required=False) for key in FACTOR_KEYS},
                    }
                ],
                is_required=False,
            ),
        }
    )
    return Field(fields, is_required=False)


def alerts_schema() -> Field:
    """``alerts:``; every secret (a token, a URL with a key in it, a password, a header) is a
    ``StringSource``: a string, or ``{env: VARIABLE}``."""

    def optional(kind: object, default: object = None, description: str | None = None) -> Field:
        if default is None:
            return Field(kind, is_required=False, description=description)
        return Field(kind, is_required=False, default_value=default, description=description)

    timeout = optional(float, 5.0, "Seconds one delivery may take.")
    return optional(
        {
            "log": optional(Bool, True),
            "on": optional([str], [WARNING], ", ".join(ALERT_EVENTS)),
            "webserver_url": optional(str, None, "Messages link to <webserver_url>/runs/<id>."),
            "callable": optional({"module": str, "function": str}),
            "webhook": optional(
                {
                    "url": StringSource,
                    "headers": optional(Map(str, StringSource)),
                    "timeout_seconds": timeout,
                    "retries": optional(int, 3),
                }
            ),
            "slack": optional(
                {
                    "token": StringSource,
                    "channel": str,
                    "base_url": optional(str),
                    "timeout_seconds": timeout,
                }
            ),
            "msteams": optional({"hook_url": StringSource, "timeout_seconds": timeout}),
            "pagerduty": optional(
                {
                    "routing_key": StringSource,
                    "events_url": optional(str),
                    "timeout_seconds": timeout,
                }
            ),
            "email": optional(
                {
                    "smtp_host": str,
                    "smtp_port": optional(int, 25),
                    "from": str,
                    "to": Any,
                    "username": optional(StringSource),
                    "password": optional(StringSource),
                    "starttls": optional(Bool, False),
                    "timeout_seconds": optional(float, 10.0),
                }
            ),
        }
    )
