"""The ``run_monitoring:`` block's schema: Dagster's keys with Dagster's types, and ours."""

from dagster import Any, Bool, Field, Permissive

from dagster_run_monitor.limit_table import RULE_KEYS
from dagster_run_monitor.settings import DAGSTER_KEYS, OUR_KEYS


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
            "alerts": Field(
                {
                    "log": Field(Bool, is_required=False, default_value=True),
                    "callable": Field({"module": str, "function": str}, is_required=False),
                    "webhook": Field(
                        {
                            "url": str,
                            "timeout_seconds": Field(float, is_required=False, default_value=5.0),
                            "retries": Field(int, is_required=False, default_value=3),
                        },
                        is_required=False,
                    ),
                },
                is_required=False,
            ),
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
                    }
                ],
                is_required=False,
            ),
        }
    )
    return Field(fields, is_required=False)
