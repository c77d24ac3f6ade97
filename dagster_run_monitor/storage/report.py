"""What the recovery report reads: the runs the monitor acted on (its tags) and, per run, when
each resume happened, when each worker started and when its own work last wrote an event.

Statements: one for the runs; then two per 10,000 runs on PostgreSQL (500 on MySQL and
consolidated SQLite), or one read per run on Dagster's default per-run SQLite files."""

import datetime
from collections.abc import Sequence

import sqlalchemy as db
from dagster import DagsterInstance
from dagster._core.events import DagsterEventType
from dagster._time import utc_datetime_from_naive

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.report import ActedRun
from dagster_run_monitor.integration.internals import EVENT_LOGS, RUN_TAGS, RUNS
from dagster_run_monitor.storage.eventlog import chunks, single_database

# Dagster's run worker, first thing: `dagster api execute_run` (and a code server's run
# subprocess), and `dagster api resume_run` for a resumed run.
WORKER_STARTED = ("Started process for run", "Started process for resuming job")
KEYS = (c.REASON_TAG, c.CRASH_CAUSE_TAG, c.RESUMED_TAG)
# Events that are not the run's own work: the launcher's, the monitor's, status changes.
NOT_WORK = tuple(
    t.value
    for t in (
        DagsterEventType.ENGINE_EVENT,
        DagsterEventType.RUN_ENQUEUED,
        DagsterEventType.RUN_DEQUEUED,
        DagsterEventType.RUN_STARTING,
        DagsterEventType.RUN_CANCELING,
        DagsterEventType.RUN_CANCELED,
        DagsterEventType.RUN_FAILURE,
        DagsterEventType.RUN_SUCCESS,
    )
)


def acted_runs(instance: DagsterInstance, since: float) -> tuple[list[ActedRun], int]:
    """The runs updated since ``since`` that carry a tag of the monitor's action, with their
    events; and the statements it took."""
    updated = datetime.datetime.fromtimestamp(since, datetime.timezone.utc).replace(tzinfo=None)
    query = (
        db.select(
            RUNS.c.run_id,
            RUNS.c.pipeline_name,
            RUNS.c.status,
            RUNS.c.end_time,
            RUN_TAGS.c.key,
            RUN_TAGS.c.value,
        )
        .select_from(RUNS.join(RUN_TAGS, RUN_TAGS.c.run_id == RUNS.c.run_id))
        .where(RUN_TAGS.c.key.in_(KEYS), RUNS.c.update_timestamp >= updated)
    )
    rows: dict[str, tuple[str, str, float | None]] = {}
    tags: dict[str, dict[str, str]] = {}
    with instance.run_storage.connect() as conn:  # type: ignore[attr-defined]
        for run_id, job, status, end_time, key, value in conn.execute(query):
            rows[run_id] = (job, status, end_time)
            tags.setdefault(run_id, {})[key] = value
    run_ids = sorted(rows)
    events, statements = _events(instance, run_ids)
    runs = []
    for run_id in run_ids:
        job, status, end_time = rows[run_id]
        detections, starts, progress = events.get(run_id, ([], [], None))
        tag = tags[run_id]
        resumed = tag.get(c.RESUMED_TAG, "")
        runs.append(
            ActedRun(
                run_id,
                job,
                status,
                tag.get(c.REASON_TAG, ""),
                tag.get(c.CRASH_CAUSE_TAG, ""),
                int(resumed) if resumed.isdigit() else 0,
                end_time,
                detections,
                starts,
                progress,
            )
        )
    return runs, 1 + statements


Events = dict[str, tuple[list[float], list[float], float | None]]


def _events(instance: DagsterInstance, run_ids: Sequence[str]) -> tuple[Events, int]:
    """Per run: its resumes' times, its workers' start times, its last event of work."""
    storage = instance.event_log_storage
    found: Events = {run_id: ([], [], None) for run_id in run_ids}
    if not run_ids:
        return found, 0
    if not single_database(storage):
        for run_id in run_ids:
            progress = None
            for entry in storage.get_logs_for_run(run_id):
                event = entry.dagster_event
                kind = event.event_type_value if event is not None else None
                if kind == DagsterEventType.ENGINE_EVENT.value:
                    _sort(found[run_id], entry.message or "", entry.timestamp)
                elif kind not in NOT_WORK:
                    progress = max(progress or entry.timestamp, entry.timestamp)
            found[run_id] = (*found[run_id][:2], progress)
        return found, len(run_ids)
    table, statements = EVENT_LOGS, 0
    with storage.index_connection() as conn:  # type: ignore[attr-defined]
        for chunk in chunks(list(run_ids), storage):
            ours = db.select(table.c.run_id, table.c.timestamp, table.c.event).where(
                table.c.run_id.in_(chunk),
                table.c.dagster_event_type == DagsterEventType.ENGINE_EVENT.value,
                db.or_(
                    table.c.event.like(f"%{c.RESUME_RUN_LOG_MESSAGE}%"),
                    *(table.c.event.like(f"%{text}%") for text in WORKER_STARTED),
                ),
            )
            for run_id, timestamp, text in conn.execute(ours):
                _sort(found[run_id], text, utc_datetime_from_naive(timestamp).timestamp())
            work = (
                db.select(table.c.run_id, db.func.max(table.c.timestamp))
                .where(
                    table.c.run_id.in_(chunk),
                    db.or_(
                        table.c.dagster_event_type.is_(None),
                        table.c.dagster_event_type.notin_(NOT_WORK),
                    ),
                )
                .group_by(table.c.run_id)
            )
            for run_id, timestamp in conn.execute(work):
                last = utc_datetime_from_naive(timestamp).timestamp()
                found[run_id] = (*found[run_id][:2], last)
            statements += 2
    return found, statements


def _sort(run: tuple[list[float], list[float], float | None], text: str, at: float) -> None:
    """A resume's event goes to the detections, a worker's start to the starts."""
    if c.RESUME_RUN_LOG_MESSAGE in text:
        run[0].append(at)
    elif any(started in text for started in WORKER_STARTED):
        run[1].append(at)
