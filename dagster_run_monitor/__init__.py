"""dagster-run-monitor: run monitoring for Dagster that finds stuck runs and dead workers."""

from typing import Any

from dagster_run_monitor.instance import (
    RunMonitorInstance as RunMonitorInstance,
)
from dagster_run_monitor.instance import (
    RunMonitorInstanceMixin as RunMonitorInstanceMixin,
)
from dagster_run_monitor.version import __version__ as __version__

_LAZY = {"ProcessRunLauncher", "process_step_executor"}


def __getattr__(name: str) -> Any:
    """The launcher and executor load on first use, keeping `import dagster_run_monitor` light
    for every process that only loads the instance."""
    if name in _LAZY:
        from dagster_run_monitor import launchers

        return getattr(launchers, name)
    raise AttributeError(f"module 'dagster_run_monitor' has no attribute {name!r}")


__all__ = [
    "ProcessRunLauncher",
    "RunMonitorInstance",
    "RunMonitorInstanceMixin",
    "__version__",
    "process_step_executor",
]
