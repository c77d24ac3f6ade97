"""Run launchers and executors we ship for single-machine users."""

from dagster_run_monitor.launchers.process_executor import (
    process_step_executor as process_step_executor,
)
from dagster_run_monitor.launchers.process_launcher import (
    ProcessRunLauncher as ProcessRunLauncher,
)
