"""dagster-run-monitor: run monitoring for Dagster that finds stuck runs and dead workers."""

from dagster_run_monitor.instance import (
    RunMonitorInstance as RunMonitorInstance,
)
from dagster_run_monitor.instance import (
    RunMonitorInstanceMixin as RunMonitorInstanceMixin,
)
from dagster_run_monitor.version import __version__ as __version__
