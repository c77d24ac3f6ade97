"""Batched event-log reads: a few queries per pass, however many runs are in progress."""

from collections.abc import Iterator, Sequence

import sqlalchemy as db
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.base import EventLogStorage
from dagster._serdes import deserialize_value
from dagster._time import utc_datetime_from_naive

from dagster_run_monitor.core.constants import RESUME_RUN_LOG_MESSAGE
from dagster_run_monitor.integration.internals import (
    EVENT_LOGS,
    SqlEventLogStorage,
    SqliteEventLogStorage,
)

CHUNK = 500  # run ids per IN (...) clause (SQLite caps bound parameters)
POSTGRES_CHUNK = 10_000  # psycopg2 inlines the list: one statement for a whole pass


def single_database(storage: EventLogStorage) -> bool:
    """True where all runs' events share one table (Postgres, MySQL, consolidated SQLite)."""
    return isinstance(storage, SqlEventLogStorage) and not isinstance(
        storage, SqliteEventLogStorage
    )


def latest_event_times(
    storage: EventLogStorage, run_ids: Sequence[str], event_type: DagsterEventType | None
) -> dict[str, float]:
    """Timestamp of each run's most recent event of ``event_type`` (None: of any type)."""
    if not run_ids:
        return {}
    if not single_database(storage):
        times = {}
        for run_id in run_ids:
            records = storage.get_records_for_run(
                run_id, of_type=event_type, limit=1, ascending=False
            ).records
            if records:
                times[run_id] = records[0].event_log_entry.timestamp
        return times
    table = EVENT_LOGS
    times = {}
    with storage.index_connection() as conn:  # type: ignore[attr-defined]
        for chunk in chunks(run_ids, storage):
            query = (
                db.select(table.c.run_id, db.func.max(table.c.timestamp))
                .where(table.c.run_id.in_(chunk))
                .group_by(table.c.run_id)
            )
            if event_type is not None:
                query = query.where(table.c.dagster_event_type == event_type.value)
            for run_id, timestamp in conn.execute(query):
                times[run_id] = utc_datetime_from_naive(timestamp).timestamp()
    return times


STEP_STARTS = (DagsterEventType.STEP_START, DagsterEventType.STEP_RESTARTED)
STEP_ENDS = (
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_FAILURE,
    DagsterEventType.STEP_SKIPPED,
    DagsterEventType.STEP_UP_FOR_RETRY,
)


def running_steps(storage: EventLogStorage, run_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per run, the steps that started and have not ended, with their start times."""
    starts: dict[tuple[str, str], float] = {}
    ends: dict[tuple[str, str], float] = {}
    types = {t.value for t in (*STEP_STARTS, *STEP_ENDS)}
    start_types = {t.value for t in STEP_STARTS}

    for run_id, step_key, event_type, timestamp in _latest_step_events(storage, run_ids, types):
        into = starts if event_type in start_types else ends
        into[(run_id, step_key)] = max(timestamp, into.get((run_id, step_key), 0.0))
    running: dict[str, dict[str, float]] = {}
    for (run_id, step_key), started in starts.items():
        if started > ends.get((run_id, step_key), -1.0):
            running.setdefault(run_id, {})[step_key] = started
    return running


def step_durations(storage: EventLogStorage, run_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per run, each step that succeeded and how long its last attempt took (its latest
    STEP_START or STEP_RESTARTED to its STEP_SUCCESS): one statement per 10,000 runs
    (PostgreSQL), one per 500 (MySQL, consolidated SQLite), one per run (SQLite's shards)."""
    starts: dict[tuple[str, str], float] = {}
    successes: dict[tuple[str, str], float] = {}
    success = DagsterEventType.STEP_SUCCESS.value
    types = {t.value for t in STEP_STARTS} | {success}
    for run_id, step_key, event_type, timestamp in _latest_step_events(storage, run_ids, types):
        into = successes if event_type == success else starts
        into[(run_id, step_key)] = max(timestamp, into.get((run_id, step_key), 0.0))
    durations: dict[str, dict[str, float]] = {}
    for (run_id, step_key), ended in successes.items():
        started = starts.get((run_id, step_key))
        if started is not None and ended >= started:
            durations.setdefault(run_id, {})[step_key] = ended - started
    return durations


def _latest_step_events(
    storage: EventLogStorage, run_ids: Sequence[str], types: set[str]
) -> Iterator[tuple[str, str, str, float]]:
    """(run id, step key, event type, latest timestamp) of the runs' step events of ``types``."""
    if not single_database(storage):
        of_type = {DagsterEventType(t) for t in types}
        for run_id in run_ids:
            for r in storage.get_records_for_run(run_id, of_type=of_type).records:
                event = r.event_log_entry.dagster_event
                if event is not None and event.step_key:
                    timestamp = r.event_log_entry.timestamp
                    yield run_id, event.step_key, event.event_type_value, timestamp
        return
    table = EVENT_LOGS
    with storage.index_connection() as conn:  # type: ignore[attr-defined]
        for chunk in chunks(run_ids, storage):
            query = (
                db.select(
                    table.c.run_id,
                    table.c.step_key,
                    table.c.dagster_event_type,
                    db.func.max(table.c.timestamp),
                )
                .where(table.c.run_id.in_(chunk))
                .where(table.c.dagster_event_type.in_(types))
                .group_by(table.c.run_id, table.c.step_key, table.c.dagster_event_type)
            )
            for run_id, step_key, event_type, timestamp in conn.execute(query):
                if step_key:
                    yield (
                        run_id,
                        step_key,
                        event_type,
                        utc_datetime_from_naive(timestamp).timestamp(),
                    )


def count_resume_attempts(storage: EventLogStorage, run_ids: Sequence[str]) -> dict[str, int]:
    """Resume attempts per run: the engine events ``instance.resume_run`` writes."""
    return {run_id: count for run_id, (count, _) in resume_history(storage, run_ids).items()}


def resume_history(
    storage: EventLogStorage, run_ids: Sequence[str]
) -> dict[str, tuple[int, float | None]]:
    """Per run, the number of resume attempts and the time of the latest one."""
    history: dict[str, tuple[int, float | None]] = dict.fromkeys(run_ids, (0, None))

    def add(run_id: str, entry: EventLogEntry) -> None:
        if entry.message == RESUME_RUN_LOG_MESSAGE:
            count, latest = history[run_id]
            history[run_id] = (count + 1, max(latest or 0.0, entry.timestamp))

    if not run_ids:
        return history
    if not single_database(storage):
        for run_id in run_ids:
            records = storage.get_records_for_run(
                run_id, of_type=DagsterEventType.ENGINE_EVENT
            ).records
            for record in records:
                add(run_id, record.event_log_entry)
        return history
    table = EVENT_LOGS
    with storage.index_connection() as conn:  # type: ignore[attr-defined]
        for chunk in chunks(run_ids, storage):
            query = (
                db.select(table.c.run_id, table.c.event)
                .where(table.c.run_id.in_(chunk))
                .where(table.c.dagster_event_type == DagsterEventType.ENGINE_EVENT.value)
                .where(table.c.event.like(f"%{RESUME_RUN_LOG_MESSAGE}%"))
            )
            for run_id, event in conn.execute(query):
                add(run_id, deserialize_value(event, EventLogEntry))
    return history


def chunks(items: Sequence[str], storage: EventLogStorage | None = None) -> list[Sequence[str]]:
    size = CHUNK
    if storage is not None and type(storage).__module__.startswith("dagster_postgres"):
        size = POSTGRES_CHUNK
    return [items[i : i + size] for i in range(0, len(items), size)]


STEP_HISTORY_TYPES = (
    DagsterEventType.STEP_START,
    DagsterEventType.STEP_RESTARTED,
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_SKIPPED,
    DagsterEventType.STEP_FAILURE,
    DagsterEventType.STEP_UP_FOR_RETRY,
    DagsterEventType.STEP_WORKER_STARTING,
    DagsterEventType.STEP_WORKER_STARTED,
    DagsterEventType.ENGINE_EVENT,
    DagsterEventType.PIPELINE_CANCELING,
)


def step_histories(
    storage: EventLogStorage, run_ids: Sequence[str]
) -> dict[str, list[EventLogEntry]]:
    """Per run, oldest first, what tells how its steps' workers ended: starts, ends, retries,
    the workers' starts, the engine events of steps (a dead child's explanation), cancels. One
    statement per 10,000 runs (PostgreSQL), per 500 (MySQL, consolidated SQLite), per run
    (SQLite's shards)."""
    found: dict[str, list[EventLogEntry]] = {run_id: [] for run_id in run_ids}
    types = {t.value for t in STEP_HISTORY_TYPES}
    engine = DagsterEventType.ENGINE_EVENT.value
    if not single_database(storage):
        for run_id in run_ids:
            records = storage.get_records_for_run(run_id, of_type=set(STEP_HISTORY_TYPES)).records
            found[run_id] = [
                r.event_log_entry
                for r in records
                if r.event_log_entry.dagster_event is not None
                and (
                    r.event_log_entry.dagster_event.event_type_value != engine
                    or r.event_log_entry.step_key
                )
            ]
        return found
    table = EVENT_LOGS
    with storage.index_connection() as conn:  # type: ignore[attr-defined]
        for chunk in chunks(run_ids, storage):
            query = (
                db.select(table.c.run_id, table.c.event)
                .where(table.c.run_id.in_(chunk))
                .where(table.c.dagster_event_type.in_(types))
                .where(db.or_(table.c.dagster_event_type != engine, table.c.step_key.isnot(None)))
                .order_by(table.c.id)
            )
            for run_id, event in conn.execute(query):
                found[run_id].append(deserialize_value(event, EventLogEntry))
    return found
