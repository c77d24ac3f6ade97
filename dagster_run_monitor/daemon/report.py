"""The recovery report of an instance: ``storage.report``'s reads, ``core.report``'s sums."""

from dagster import DagsterInstance
from dagster._time import get_current_timestamp

from dagster_run_monitor.core.report import Report, build_report
from dagster_run_monitor.storage.report import acted_runs


def recovery_report(instance: DagsterInstance, seconds: float) -> Report:
    """The runs acted on in the last ``seconds`` (their last update in the window)."""
    now = get_current_timestamp()
    runs, statements = acted_runs(instance, now - seconds)
    return build_report(runs, now - seconds, now, statements)
