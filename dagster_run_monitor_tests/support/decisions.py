"""Expected decisions of the pure core, written as tests compare them."""

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.model import ResumeRun


def crash_resume(attempt: int, message: str, cause: str = "unknown") -> ResumeRun:
    """The resume of a crashed worker: its cause in the run_monitor/crash_cause tag."""
    return ResumeRun(attempt, message, cause=cause, tags={c.CRASH_CAUSE_TAG: cause})
