"""The recovery report of an instance: ``storage.report``'s reads, ``core.report``'s sums,
and each job's memory advice (``core.memory_sizing``, from its counted runs' peaks)."""

from dataclasses import replace

from dagster import DagsterInstance
from dagster._time import get_current_timestamp

from dagster_run_monitor.config.parse import read_settings
from dagster_run_monitor.core.memory_sizing import advice
from dagster_run_monitor.core.report import Report, build_report
from dagster_run_monitor.storage.history import job_keys, run_durations
from dagster_run_monitor.storage.report import acted_runs


def recovery_report(instance: DagsterInstance, seconds: float) -> Report:
    """The runs acted on in the last ``seconds`` (their last update in the window)."""
    now = get_current_timestamp()
    runs, statements = acted_runs(instance, now - seconds)
    report = build_report(runs, now - seconds, now, statements)
    settings = read_settings(instance)
    counted = run_durations(instance, job_keys(instance), settings.learned.runs)
    memory = {
        f"{job} ({label})" if label else job: [a.as_dict() for a in found]
        for (job, label), found_runs in counted.items()
        if (found := advice([r.memory for r in found_runs], settings.memory.warn_fraction))
    }
    return replace(report, memory=memory)
