"""dagster-run-monitor: run monitoring for Dagster that finds stuck runs and dead workers.

The public API. Each name loads on first use (``instance_class: {module: dagster_run_monitor,
class: RunMonitorInstance}`` is such a use), so importing one room, such as the pure core,
loads nothing else."""

import sys
from importlib import import_module
from typing import Any

from dagster_run_monitor.core import crash_cause as _crash_cause
from dagster_run_monitor.core import model as _model
from dagster_run_monitor.version import __version__ as __version__

# The dotted paths 0.2's docs gave users (an alert callable's argument, a launcher's
# crash_cause return value) keep working: dagster_run_monitor.model, .crash_cause.
sys.modules.setdefault(f"{__name__}.model", _model)
sys.modules.setdefault(f"{__name__}.crash_cause", _crash_cause)

_PUBLIC = {
    "RunMonitorInstance": "dagster_run_monitor.integration.instance",
    "RunMonitorInstanceMixin": "dagster_run_monitor.integration.instance",
    "ProcessRunLauncher": "dagster_run_monitor.launchers.process",
    "process_step_executor": "dagster_run_monitor.launchers.process",
    "Alert": "dagster_run_monitor.core.model",  # what an alerts.callable function receives
    "CrashCause": "dagster_run_monitor.core.crash_cause",  # a launcher's crash_cause(run)
    "pause": "dagster_run_monitor.daemon.pause",  # pause(instance, "30m", reason): a sensor's
    "unpause": "dagster_run_monitor.daemon.pause",
    "current_pause": "dagster_run_monitor.daemon.pause",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'dagster_run_monitor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = ["__version__", *_PUBLIC]
