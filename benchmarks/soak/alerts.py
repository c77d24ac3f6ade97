"""The soak's alert sink (``alerts.callable``): each alert a line of JSON in
``$SOAK_DIR/alerts.jsonl``, read back by the checks (every action has its alert)."""

import dataclasses
import json
import os
import time
from pathlib import Path

from dagster_run_monitor.core.model import Alert


def record(alert: Alert) -> None:
    line = json.dumps({**dataclasses.asdict(alert), "time": time.time(), "pid": os.getpid()})
    with open(Path(os.environ["SOAK_DIR"]) / "alerts.jsonl", "a") as alerts:
        alerts.write(line + "\n")
