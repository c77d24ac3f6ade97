"""Alert sinks: the Python logger, a function of yours, an HTTP webhook (JSON POST)."""

import dataclasses
import importlib
import json
import logging
import time
import urllib.request

from dagster_run_monitor.model import Alert
from dagster_run_monitor.settings import AlertSettings


def send_alert(settings: AlertSettings, alert: Alert, logger: logging.Logger) -> None:
    """Deliver to every configured sink; a failing sink is logged and never raises."""
    if settings.log:
        logger.warning("Run monitor alert for run %s: %s", alert.run_id, alert.message)
    if settings.callable:
        module, function = settings.callable
        try:
            getattr(importlib.import_module(module), function)(alert)
        except Exception:
            logger.exception("Alert function %s.%s failed", module, function)
    if settings.webhook_url:
        post_json(settings, dataclasses.asdict(alert), logger)


def post_json(settings: AlertSettings, payload: dict, logger: logging.Logger) -> bool:
    body = json.dumps(payload).encode()
    for attempt in range(1, settings.webhook_retries + 2):
        request = urllib.request.Request(
            str(settings.webhook_url), data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=settings.webhook_timeout_seconds) as r:
                if 200 <= r.status < 300:
                    return True
        except Exception as error:
            logger.warning("Alert webhook attempt %d failed: %s", attempt, error)
        time.sleep(min(0.5 * attempt, 5))
    return False
