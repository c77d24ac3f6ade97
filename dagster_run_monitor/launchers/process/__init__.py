"""One machine: ``ProcessRunLauncher`` (run workers as local process groups, with health
checks and resume) and ``process_step_executor`` (each step its own process)."""

from dagster_run_monitor.launchers.process.executor import (
    process_step_executor as process_step_executor,
)
from dagster_run_monitor.launchers.process.launcher import (
    ProcessRunLauncher as ProcessRunLauncher,
)
