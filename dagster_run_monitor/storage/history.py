"""Jobs' histories for learned limits: the durations of each job's last successful runs in one
statement (Dagster's ``idx_runs_by_job``, ``idx_run_tags_run_idx`` and ``idx_run_tags``
indexes), and of their steps (``storage.eventlog``); what ``history`` adds: the jobs, and the
runs that succeeded after an OOM kill."""

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import sqlalchemy as db
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import (
    ASSET_RESUME_RETRY_TAG,
    REPOSITORY_LABEL_TAG,
    RESUME_RETRY_TAG,
    STEP_SELECTION_TAG,
)

from dagster_run_monitor.core.constants import CRASH_CAUSE_TAG, MEMORY_TAG, RESUMED_TAG
from dagster_run_monitor.core.crash_cause import OOM_KILLED
from dagster_run_monitor.core.memory import ECS_MEMORY_TAG, K8S_CONFIG_TAG
from dagster_run_monitor.integration.internals import RUN_TAGS, RUNS, SqlRunStorage
from dagster_run_monitor.storage import eventlog

# A job's history is (job name, repository label "repo@location", or None without one).
JobKey = tuple[str, str | None]
# Runs whose duration is not the job's: resumed by the monitor (the crash and the wait are in
# it), re-executed from a failure or with a step selection (a part of the job only).
NOT_COUNTED = (RESUMED_TAG, RESUME_RETRY_TAG, ASSET_RESUME_RETRY_TAG, STEP_SELECTION_TAG)
MEMORY_TAGS = (K8S_CONFIG_TAG, ECS_MEMORY_TAG)  # where a run's worker memory is set
# PostgreSQL reads each job's newest CANDIDATES x runs runs of any kind, and counts from those.
CANDIDATES = 4


def job_key(run: DagsterRun) -> JobKey:
    """Which history a run's limits learn from: its job's in the same code location."""
    origin = run.remote_job_origin
    return run.job_name, origin.repository_origin.get_label() if origin is not None else None


class Counted(NamedTuple):
    """One counted run: its id, duration, and its workers' memory (``run_monitor/memory``)."""

    run_id: str
    seconds: float
    memory: str | None = None


def run_durations(
    instance: DagsterInstance, keys: Iterable[JobKey], runs: int
) -> dict[JobKey, list[Counted]]:
    """Per job, its last ``runs`` counted SUCCESS runs, newest first: one statement for all
    jobs."""
    wanted = sorted(set(keys), key=lambda k: (k[0], k[1] or ""))
    storage = instance.run_storage
    found: dict[JobKey, list[Counted]] = {key: [] for key in wanted}
    if not wanted or not isinstance(storage, SqlRunStorage):
        return found
    with storage.connect() as conn:
        if conn.dialect.name == "postgresql":
            # Its estimated cost makes PostgreSQL JIT-compile the plan, which took longer than
            # running it (0.37 s of 0.77 s at 1,000,000 runs): off for this statement only.
            conn.execute(db.text("SET jit = off"))
            try:
                rows = conn.execute(_per_job_lateral(wanted, runs)).fetchall()
            finally:
                conn.execute(db.text("RESET jit"))
        else:
            rows = conn.execute(_per_job_window(wanted, runs))
        for job, label, run_id, start, end, memory in rows:
            if (job, label) in found and len(found[(job, label)]) < runs:
                found[(job, label)].append(Counted(run_id, end - start, memory))
    return found


def _finished(runs: db.FromClause) -> list[db.ColumnElement]:
    return [
        runs.c.status == DagsterRunStatus.SUCCESS.value,
        runs.c.start_time.isnot(None),
        runs.c.end_time.isnot(None),
    ]


def _counted(runs: db.FromClause) -> list[db.ColumnElement]:
    excluded = db.select(1).where(
        RUN_TAGS.c.run_id == runs.c.run_id, RUN_TAGS.c.key.in_(NOT_COUNTED)
    )
    return [*_finished(runs), ~db.exists(excluded)]


def _per_job_lateral(wanted: Sequence[JobKey], limit: int) -> db.Select:
    """PostgreSQL: for each job, its newest ``CANDIDATES`` x ``limit`` runs read backwards from
    the (job, id) index, a plan that stops early whatever the planner estimates; of those, the
    newest ``limit`` counted runs of its code location. Each candidate's tags are read once
    (its label, whether it is counted, its memory), the one index lookup per run."""
    jobs = db.values(db.column("job", db.Text), db.column("label", db.Text), name="wanted").data(
        list(wanted)
    )
    newest = (
        db.select(RUNS.c.id, RUNS.c.run_id, RUNS.c.status, RUNS.c.start_time, RUNS.c.end_time)
        .where(RUNS.c.pipeline_name == jobs.c.job)
        .order_by(RUNS.c.id.desc())
        .limit(CANDIDATES * limit)
        .lateral("newest")
    )
    value, key = RUN_TAGS.c.value, RUN_TAGS.c.key
    tags = (
        db.select(
            db.func.max(value).filter(key == REPOSITORY_LABEL_TAG).label("label"),
            db.func.max(value).filter(key == MEMORY_TAG).label("memory"),
            db.func.count().filter(key.in_(NOT_COUNTED)).label("excluded"),
        )
        .where(RUN_TAGS.c.run_id == newest.c.run_id)
        .lateral("tags")
    )
    numbered = (
        db.select(
            jobs.c.job,
            jobs.c.label,
            newest.c.run_id,
            newest.c.start_time,
            newest.c.end_time,
            tags.c.memory,
            db.func.row_number()
            .over(partition_by=(jobs.c.job, jobs.c.label), order_by=newest.c.id.desc())
            .label("n"),
        )
        .select_from(jobs.join(newest, db.true()).join(tags, db.true()))
        .where(
            tags.c.label.is_not_distinct_from(jobs.c.label),
            tags.c.excluded == 0,
            *_finished(newest),
        )
        .subquery()
    )
    return _newest(numbered, limit)


def _per_job_window(wanted: Sequence[JobKey], limit: int) -> db.Select:
    """SQLite, MySQL: the jobs' counted runs numbered newest first per (job, label)."""
    label, memory = RUN_TAGS.alias("label"), RUN_TAGS.alias("memory")
    numbered = (
        db.select(
            RUNS.c.pipeline_name.label("job"),
            label.c.value.label("label"),
            RUNS.c.run_id,
            RUNS.c.start_time,
            RUNS.c.end_time,
            memory.c.value.label("memory"),
            db.func.row_number()
            .over(partition_by=(RUNS.c.pipeline_name, label.c.value), order_by=RUNS.c.id.desc())
            .label("n"),
        )
        .select_from(
            RUNS.outerjoin(label, _label_of(label, RUNS)).outerjoin(
                memory, db.and_(memory.c.run_id == RUNS.c.run_id, memory.c.key == MEMORY_TAG)
            )
        )
        .where(RUNS.c.pipeline_name.in_(sorted({job for job, _ in wanted})), *_counted(RUNS))
        .subquery()
    )
    return _newest(numbered, limit)


def _label_of(label: db.FromClause, runs: db.FromClause) -> db.ColumnElement:
    return db.and_(label.c.run_id == runs.c.run_id, label.c.key == REPOSITORY_LABEL_TAG)


def _newest(numbered: db.Subquery, limit: int) -> db.Select:
    c = numbered.c
    return (
        db.select(c.job, c.label, c.run_id, c.start_time, c.end_time, c.memory)
        .where(c.n <= limit)
        .order_by(c.job, c.label, c.n)
    )


def step_durations(
    instance: DagsterInstance, run_ids: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per run, each step's duration (STEP_START to STEP_SUCCESS); every run is in the answer."""
    found = eventlog.step_durations(instance.event_log_storage, run_ids) if run_ids else {}
    return {run_id: found.get(run_id, {}) for run_id in run_ids}


def step_history(
    instance: DagsterInstance, runs: Mapping[JobKey, Sequence[str]]
) -> dict[JobKey, dict[str, list[float]]]:
    """Per job, each step's durations in the given runs."""
    durations = step_durations(instance, [run_id for ids in runs.values() for run_id in ids])
    return {key: by_step(durations[run_id] for run_id in ids) for key, ids in runs.items()}


def by_step(per_run: Iterable[Mapping[str, float]]) -> dict[str, list[float]]:
    """Runs' step durations, by step."""
    steps: dict[str, list[float]] = {}
    for run in per_run:
        for step, seconds in run.items():
            steps.setdefault(step, []).append(seconds)
    return steps


def job_keys(instance: DagsterInstance, job: str | None = None, runs: int = 30) -> list[JobKey]:
    """Every (job, repository label) with a SUCCESS run, or those of ``job``. On PostgreSQL,
    the jobs by a skip scan of the (job, id) index and the labels of each one's newest
    ``CANDIDATES`` x ``runs`` successful runs (what a history counts): not a pass over every
    run."""
    label = RUN_TAGS.alias("label")
    with instance.run_storage.connect() as conn:  # type: ignore[attr-defined]
        if conn.dialect.name == "postgresql":
            query = _recent_job_keys(label, job, CANDIDATES * runs)
        else:
            query = (
                db.select(RUNS.c.pipeline_name, label.c.value)
                .distinct()
                .select_from(RUNS.outerjoin(label, _label_of(label, RUNS)))
                .where(RUNS.c.status == DagsterRunStatus.SUCCESS.value)
            )
            if job is not None:
                query = query.where(RUNS.c.pipeline_name == job)
        found = [tuple(row) for row in conn.execute(query)]
    return sorted(found, key=lambda k: (k[0], k[1] or ""))  # type: ignore[return-value]


def _recent_job_keys(label: db.FromClause, job: str | None, candidates: int) -> db.Select:
    if job is not None:
        names: db.FromClause = db.select(db.literal(job, db.Text).label("name")).subquery("names")
    else:
        name = RUNS.c.pipeline_name
        first = db.select(name.label("name")).order_by(name).limit(1).subquery("first")
        anchor = db.select(first.c.name).cte("names", recursive=True)
        after = db.select(name).where(name > anchor.c.name).order_by(name).limit(1)
        names = anchor.union_all(
            db.select(after.scalar_subquery().label("name")).where(anchor.c.name.isnot(None))
        )
    newest = (
        db.select(RUNS.c.run_id)
        .where(
            RUNS.c.pipeline_name == names.c.name,
            RUNS.c.status == DagsterRunStatus.SUCCESS.value,
        )
        .order_by(RUNS.c.id.desc())
        .limit(candidates)
        .lateral("newest")
    )
    return (
        db.select(names.c.name, label.c.value)
        .distinct()
        .select_from(names.join(newest, db.true()).outerjoin(label, _label_of(label, newest)))
        .where(names.c.name.isnot(None))
    )


def oom_recoveries(instance: DagsterInstance) -> dict[str, list[Mapping[str, str]]]:
    """Per job, the tags that set the memory (``MEMORY_TAGS``) of its SUCCESS runs whose latest
    crash was an OOM kill (the memory they succeeded with): one statement."""
    cause, memory = RUN_TAGS.alias("cause"), RUN_TAGS.alias("memory")
    query = (
        db.select(RUNS.c.run_id, RUNS.c.pipeline_name, memory.c.key, memory.c.value)
        .select_from(
            RUNS.join(
                cause,
                db.and_(
                    cause.c.run_id == RUNS.c.run_id,
                    cause.c.key == CRASH_CAUSE_TAG,
                    cause.c.value == OOM_KILLED,
                ),
            ).outerjoin(
                memory, db.and_(memory.c.run_id == RUNS.c.run_id, memory.c.key.in_(MEMORY_TAGS))
            )
        )
        .where(RUNS.c.status == DagsterRunStatus.SUCCESS.value)
    )
    runs: dict[str, tuple[str, dict[str, str]]] = {}
    for run_id, job, key, value in _rows(instance, query):
        tags = runs.setdefault(run_id, (job, {}))[1]
        if key and value:
            tags[key] = value
    found: dict[str, list[Mapping[str, str]]] = {}
    for job, tags in runs.values():
        found.setdefault(job, []).append(tags)
    return found


def _rows(instance: DagsterInstance, query: db.Select) -> list[tuple]:
    with instance.run_storage.connect() as conn:  # type: ignore[attr-defined]
        return [tuple(row) for row in conn.execute(query)]
