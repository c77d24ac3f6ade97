"""Jobs' histories for learned limits: the durations of each job's last successful runs in one
statement (Dagster's ``idx_runs_by_job`` and ``idx_run_tags_run_idx`` indexes), and of their
steps in one more (``storage.eventlog``)."""

from collections.abc import Iterable, Mapping, Sequence

import sqlalchemy as db
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import (
    ASSET_RESUME_RETRY_TAG,
    REPOSITORY_LABEL_TAG,
    RESUME_RETRY_TAG,
    STEP_SELECTION_TAG,
)

from dagster_run_monitor.core.constants import RESUMED_TAG
from dagster_run_monitor.integration.internals import RUN_TAGS, RUNS, SqlRunStorage
from dagster_run_monitor.storage.eventlog import step_durations

# A job's history is (job name, repository label "repo@location", or None without one).
JobKey = tuple[str, str | None]
# Runs whose duration is not the job's: resumed by the monitor (the crash and the wait are in
# it), re-executed from a failure or with a step selection (a part of the job only).
NOT_COUNTED = (RESUMED_TAG, RESUME_RETRY_TAG, ASSET_RESUME_RETRY_TAG, STEP_SELECTION_TAG)


def job_key(run: DagsterRun) -> JobKey:
    """Which history a run's limits learn from: its job's in the same code location."""
    origin = run.remote_job_origin
    return run.job_name, origin.repository_origin.get_label() if origin is not None else None


def run_durations(
    instance: DagsterInstance, keys: Iterable[JobKey], runs: int
) -> dict[JobKey, list[tuple[str, float]]]:
    """Per job, (run id, duration) of its last ``runs`` counted SUCCESS runs, newest first:
    one statement for all jobs."""
    wanted = sorted(set(keys), key=lambda k: (k[0], k[1] or ""))
    storage = instance.run_storage
    found: dict[JobKey, list[tuple[str, float]]] = {key: [] for key in wanted}
    if not wanted or not isinstance(storage, SqlRunStorage):
        return found
    with storage.connect() as conn:
        if conn.dialect.name == "postgresql":
            rows = conn.execute(_per_job_lateral(wanted, runs))
        else:
            rows = conn.execute(_per_job_window(wanted, runs))
        for job, label, run_id, start, end in rows:
            if (job, label) in found and len(found[(job, label)]) < runs:
                found[(job, label)].append((run_id, end - start))
    return found


def _counted(runs: db.Table) -> list[db.ColumnElement]:
    excluded = db.select(1).where(
        RUN_TAGS.c.run_id == runs.c.run_id, RUN_TAGS.c.key.in_(NOT_COUNTED)
    )
    return [
        runs.c.status == DagsterRunStatus.SUCCESS.value,
        runs.c.start_time.isnot(None),
        runs.c.end_time.isnot(None),
        ~db.exists(excluded),
    ]


def _per_job_lateral(wanted: Sequence[JobKey], limit: int) -> db.Select:
    """PostgreSQL: for each job, its newest runs from the (job, id) index, ``limit`` each."""
    jobs = db.values(db.column("job", db.Text), db.column("label", db.Text), name="wanted").data(
        list(wanted)
    )
    label = db.select(RUN_TAGS.c.value).where(
        RUN_TAGS.c.run_id == RUNS.c.run_id, RUN_TAGS.c.key == REPOSITORY_LABEL_TAG
    )
    newest = (
        db.select(RUNS.c.run_id, RUNS.c.start_time, RUNS.c.end_time)
        .where(RUNS.c.pipeline_name == jobs.c.job, *_counted(RUNS))
        .where(label.scalar_subquery().is_not_distinct_from(jobs.c.label))
        .order_by(RUNS.c.id.desc())
        .limit(limit)
        .lateral("newest")
    )
    return db.select(
        jobs.c.job, jobs.c.label, newest.c.run_id, newest.c.start_time, newest.c.end_time
    ).select_from(jobs.join(newest, db.true()))


def _per_job_window(wanted: Sequence[JobKey], limit: int) -> db.Select:
    """SQLite, MySQL: the jobs' counted runs numbered newest first per (job, label)."""
    label = RUN_TAGS.alias("label")
    numbered = (
        db.select(
            RUNS.c.pipeline_name.label("job"),
            label.c.value.label("label"),
            RUNS.c.run_id,
            RUNS.c.start_time,
            RUNS.c.end_time,
            db.func.row_number()
            .over(partition_by=(RUNS.c.pipeline_name, label.c.value), order_by=RUNS.c.id.desc())
            .label("n"),
        )
        .select_from(
            RUNS.outerjoin(
                label,
                db.and_(label.c.run_id == RUNS.c.run_id, label.c.key == REPOSITORY_LABEL_TAG),
            )
        )
        .where(RUNS.c.pipeline_name.in_(sorted({job for job, _ in wanted})), *_counted(RUNS))
        .subquery()
    )
    return db.select(
        numbered.c.job,
        numbered.c.label,
        numbered.c.run_id,
        numbered.c.start_time,
        numbered.c.end_time,
    ).where(numbered.c.n <= limit)


def step_history(
    instance: DagsterInstance, runs: Mapping[JobKey, Sequence[str]]
) -> dict[JobKey, dict[str, list[float]]]:
    """Per job, each step's durations in the given runs (STEP_START to STEP_SUCCESS)."""
    ids = [run_id for run_ids in runs.values() for run_id in run_ids]
    durations = step_durations(instance.event_log_storage, ids)
    return {
        key: _by_step(durations.get(run_id, {}) for run_id in run_ids)
        for key, run_ids in runs.items()
    }


def _by_step(per_run: Iterable[Mapping[str, float]]) -> dict[str, list[float]]:
    steps: dict[str, list[float]] = {}
    for run in per_run:
        for step, seconds in run.items():
            steps.setdefault(step, []).append(seconds)
    return steps
