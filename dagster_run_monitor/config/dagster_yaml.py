"""The dagster.yaml that turns our monitor on: one writer for the demo, the tests and the
benchmark."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

INSTANCE_CLASS = {"module": "dagster_run_monitor", "class": "RunMonitorInstance"}


def instance_config(
    run_monitoring: Mapping[str, Any] | None = None,
    launcher: Mapping[str, Any] | None = None,
    postgres_url: str | None = None,
    **more: Any,
) -> dict[str, Any]:
    """Our instance class with the monitor enabled (``run_monitoring`` on top), a run
    launcher, PostgreSQL storage at ``postgres_url`` (else SQLite in DAGSTER_HOME), telemetry
    off, and any other top-level keys."""
    config: dict[str, Any] = {
        "instance_class": dict(INSTANCE_CLASS),
        "run_monitoring": {"enabled": True, **(run_monitoring or {})},
        "telemetry": {"enabled": False},
    }
    if launcher:
        config["run_launcher"] = dict(launcher)
    if postgres_url:
        config["storage"] = {"postgres": {"postgres_url": postgres_url}}
    return {**config, **more}


def write_dagster_yaml(home: Path, config: Mapping[str, Any]) -> Path:
    """``home/dagster.yaml`` with ``config``; returns ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(dict(config)))
    return home
