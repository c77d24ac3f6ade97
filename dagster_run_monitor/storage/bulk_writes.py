"""What the monitor writes before it resumes crashed runs, for many runs in a few statements.

Dagster's API writes for one run at a time: ``add_run_tags`` reads the run, rewrites its body
and its tag rows (3 statements), an engine event is an INSERT and a NOTIFY (2). Before a
batch of resumes the monitor writes each run's tags (the crash cause, ...) and its
"Detected ..." event; on SQL storages these are the same rows, written for the whole batch in
one statement each (``write_tags``, ``write_engine_events``), and through Dagster's API
elsewhere. A run whose row changed since it was read gets its tags through ``add_run_tags``.
The batched events carry no NOTIFY: Dagster no longer listens for it (dagster-postgres keeps
it only for webservers older than the ones ``setup.py`` admits).
"""

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import sqlalchemy as db
from dagster import DagsterInstance
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.dagster_run import DagsterRun, RunRecord, RunsFilter
from dagster._serdes import serialize_value
from dagster._time import get_current_datetime, get_current_timestamp
from sqlalchemy.engine import Connection

from dagster_run_monitor.integration.internals import RUN_TAGS, RUNS, SqlRunStorage
from dagster_run_monitor.storage.eventlog import single_database


def write_tags(
    instance: DagsterInstance, writes: Sequence[tuple[RunRecord, Mapping[str, str]]]
) -> dict[str, DagsterRun]:
    """``instance.add_run_tags`` for each run, as rows written for all runs at once: each body
    with its tags merged, the tag rows updated or added; where a run's row is no longer as it
    was read (its update time), through ``add_run_tags``. Returns each run as written."""
    runs = {record.dagster_run.run_id: record.dagster_run for record, _ in writes}
    writes = [(record, tags) for record, tags in writes if tags]
    storage = instance.run_storage
    if not writes:
        return runs
    if not isinstance(storage, SqlRunStorage):
        return {**runs, **_through_dagster(instance, writes)}
    try:
        return {**runs, **_write_if_unchanged(storage, writes)}
    except _Changed:  # rolled back: a run worker or a user wrote a run since it was read
        return {**runs, **_through_dagster(instance, writes)}


def add_tags_while(
    instance: DagsterInstance,
    run_id: str,
    tags: Mapping[str, str],
    condition: Callable[[DagsterRun], bool],
    attempts: int = 10,
) -> bool:
    """``add_run_tags`` if the run, as stored, meets ``condition``, in one compare-and-set of
    its row: a write made after this one read the run is never overwritten (Dagster's
    ``add_run_tags`` reads the body and writes it back whole). False if the condition no
    longer holds, the run is gone, or the row kept changing for ``attempts`` reads."""
    storage = instance.run_storage
    for _ in range(attempts):
        record = instance.get_run_record_by_id(run_id)
        if record is None or not condition(record.dagster_run):
            return False
        if not isinstance(storage, SqlRunStorage):
            instance.add_run_tags(run_id, dict(tags))
            return True
        try:
            _write_if_unchanged(storage, [(record, tags)])
            return True
        except _Changed:
            continue
    return False


def _write_if_unchanged(
    storage: SqlRunStorage, writes: Sequence[tuple[RunRecord, Mapping[str, str]]]
) -> dict[str, DagsterRun]:
    """Each run's body with its tags merged and its tag rows, in one transaction that raises
    ``_Changed`` (and writes nothing) if a run's row changed since it was read."""
    merged = {
        r.dagster_run.run_id: r.dagster_run.with_tags({**r.dagster_run.tags, **t})
        for r, t in writes
    }
    bodies, updated, added = [], [], []
    for record, tags in writes:
        run = record.dagster_run
        bodies.append(
            {
                "b_run_id": run.run_id,
                "b_seen": record.update_timestamp.replace(tzinfo=None),
                "b_body": serialize_value(merged[run.run_id]),
            }
        )
        for key, value in tags.items():
            if key in run.tags:
                updated.append({"b_run_id": run.run_id, "b_key": key, "b_value": value})
            else:
                added.append({"run_id": run.run_id, "key": key, "value": value})
    by_id = db.bindparam("b_run_id")
    with transaction(storage) as conn:
        changed = conn.execute(
            RUNS.update()
            .where(RUNS.c.run_id == by_id, RUNS.c.update_timestamp == db.bindparam("b_seen"))
            .values(run_body=db.bindparam("b_body"), update_timestamp=get_current_datetime()),
            bodies,
        ).rowcount
        if changed != len(bodies):
            raise _Changed
        if updated:
            conn.execute(
                RUN_TAGS.update()
                .where(RUN_TAGS.c.run_id == by_id, RUN_TAGS.c.key == db.bindparam("b_key"))
                .values(value=db.bindparam("b_value")),
                updated,
            )
        if added:
            conn.execute(RUN_TAGS.insert(), added)
    return merged


def _through_dagster(
    instance: DagsterInstance, writes: Sequence[tuple[RunRecord, Mapping[str, str]]]
) -> dict[str, DagsterRun]:
    for record, tags in writes:
        instance.add_run_tags(record.dagster_run.run_id, dict(tags))
    ids = [record.dagster_run.run_id for record, _ in writes]
    return {run.run_id: run for run in instance.get_runs(RunsFilter(run_ids=ids))}


class _Changed(Exception):
    """A run's row changed since it was read."""


@contextmanager
def transaction(storage: SqlRunStorage) -> Iterator[Connection]:
    """A connection of the run storage in a transaction (Dagster's PostgreSQL storages
    autocommit each statement; its SQLite one begins a transaction itself)."""
    with storage.connect() as conn:
        if conn.in_transaction():
            yield conn
            return
        conn = conn.execution_options(isolation_level="READ COMMITTED")  # noqa: PLW2901
        with conn.begin():
            yield conn


def write_engine_events(
    instance: DagsterInstance, events: Sequence[tuple[DagsterRun, str]]
) -> None:
    """``instance.report_engine_event(message, run)`` for each (run, message), in order; where
    all runs' events share one table (PostgreSQL, MySQL), in one INSERT."""
    if not events:
        return
    storage = instance.event_log_storage
    if not single_database(storage):
        for run, message in events:
            instance.report_engine_event(message, run)
        return
    now = get_current_timestamp()
    entries = [
        EventLogEntry(
            user_message="",
            level=logging.INFO,
            job_name=run.job_name,
            run_id=run.run_id,
            error_info=None,
            timestamp=now,
            step_key=None,
            dagster_event=DagsterEvent(
                event_type_value=DagsterEventType.ENGINE_EVENT.value,
                job_name=run.job_name,
                message=message,
                event_specific_data=EngineEventData({}),
            ),
        )
        for run, message in events
    ]
    with storage.index_connection() as conn:  # type: ignore[attr-defined]
        conn.execute(storage.prepare_insert_event_batch(entries))  # type: ignore[attr-defined]
