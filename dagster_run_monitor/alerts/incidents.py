"""PagerDuty incidents that close themselves: which of the runs' open ones are over.

An incident of a warning is over when its run ends; one of a resume when the run ends or its
new worker is seen healthy. Failures and cancels stay open (a person closes them). The open
ones are in each run's ``run_monitor/pagerduty`` tag (``sender``).
"""

from collections.abc import Sequence

import sqlalchemy as db
from dagster import DagsterInstance
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

from dagster_run_monitor.alerts.sender import open_incidents
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.alert_settings import RESUMED
from dagster_run_monitor.core.model import RunFacts, subject_event
from dagster_run_monitor.integration.internals import RUN_TAGS, RUNS, SqlRunStorage


def over(instance: DagsterInstance, facts: Sequence[RunFacts]) -> dict[str, list[str]]:
    """Per run, the subjects of its open incidents that are over."""
    found: dict[str, list[str]] = {}
    for run in facts:  # in progress: resumed, and its worker healthy again
        if run.health is not None and run.health.healthy:
            resumed = [s for s in open_incidents(run.tags) if subject_event(s) == RESUMED]
            if resumed:
                found[run.run_id] = resumed
    storage = instance.run_storage
    if not isinstance(storage, SqlRunStorage):
        return found
    query = (
        db.select(RUN_TAGS.c.run_id, RUN_TAGS.c.value)
        .join(RUNS, RUNS.c.run_id == RUN_TAGS.c.run_id)
        .where(RUN_TAGS.c.key == c.PAGERDUTY_TAG, RUN_TAGS.c.value != "")
        .where(RUNS.c.status.not_in([s.value for s in IN_PROGRESS_RUN_STATUSES]))
    )
    for row in storage.fetchall(query):  # ended
        found[row["run_id"]] = open_incidents({c.PAGERDUTY_TAG: row["value"]})
    return found
