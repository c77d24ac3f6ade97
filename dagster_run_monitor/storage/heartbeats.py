"""Workers' heartbeats in Dagster's key-value store (``kvs``, in the run storage): all beats in
one statement a pass, a run's stacks when they are shown, the takeover of a run's rows, and
the removal of finished runs' rows. The rows' format is ``core.heartbeats``'s."""

from collections.abc import Collection, Iterable

import sqlalchemy as db
from dagster import DagsterInstance
from dagster._core.storage.dagster_run import RunsFilter

from dagster_run_monitor.core.heartbeats import (
    BEAT_PREFIX,
    STACK_PREFIX,
    Beat,
    beat_key,
    fenced_value,
    key_range,
    parse_beat,
)
from dagster_run_monitor.integration.internals import KVS, SqlRunStorage
from dagster_run_monitor.storage.bulk_writes import transaction


def _prefixed(*prefixes: str) -> db.ColumnElement:
    ranges = [db.and_(KVS.c.key >= low, KVS.c.key < high) for low, high in map(key_range, prefixes)]
    return db.or_(*ranges)


def read_beats(instance: DagsterInstance) -> list[Beat] | None:
    """Every beat stored (None where the run storage is not SQL: no heartbeats there)."""
    storage = instance.run_storage
    if not isinstance(storage, SqlRunStorage):
        return None
    query = db.select(KVS.c.key, KVS.c.value).where(_prefixed(BEAT_PREFIX))
    with storage.connect() as conn:
        rows = conn.execute(query).fetchall()
    return [beat for key, value in rows if (beat := parse_beat(key, value)) is not None]


def read_stacks(instance: DagsterInstance, run_ids: Collection[str]) -> dict[str, dict[str, str]]:
    """run id -> worker -> its last stacks (one statement)."""
    storage = instance.run_storage
    if not run_ids or not isinstance(storage, SqlRunStorage):
        return {}
    query = db.select(KVS.c.key, KVS.c.value).where(
        _prefixed(*(f"{STACK_PREFIX}{i}/" for i in run_ids))
    )
    with storage.connect() as conn:
        rows = conn.execute(query).fetchall()
    stacks: dict[str, dict[str, str]] = {}
    for key, value in rows:
        run_id, _, worker = key[len(STACK_PREFIX) :].partition("/")
        stacks.setdefault(run_id, {})[worker] = value
    return stacks


def take_over(instance: DagsterInstance, run_id: str, now: float) -> None:
    """The run's rows are the monitor's now: its workers' beats and stacks go, and the run
    worker's row says ``fenced``, which stops an old worker that comes back (a healed
    partition); the new worker's first beat replaces it."""
    storage = instance.run_storage
    if not isinstance(storage, SqlRunStorage):
        return
    with transaction(storage) as conn:
        conn.execute(
            KVS.delete().where(_prefixed(f"{BEAT_PREFIX}{run_id}/", f"{STACK_PREFIX}{run_id}/"))
        )
        conn.execute(KVS.insert().values(key=beat_key(run_id), value=fenced_value(now)))


def forget_finished(instance: DagsterInstance, run_ids: Iterable[str]) -> None:
    """Remove the rows of those runs that have ended (or are gone)."""
    storage = instance.run_storage
    ids = sorted(set(run_ids))
    if not ids or not isinstance(storage, SqlRunStorage):
        return
    live = {
        r.dagster_run.run_id
        for r in instance.get_run_records(RunsFilter(run_ids=ids))
        if not r.dagster_run.is_finished
    }
    ended = [i for i in ids if i not in live]
    if not ended:
        return
    prefixes = [p for i in ended for p in (f"{BEAT_PREFIX}{i}/", f"{STACK_PREFIX}{i}/")]
    with storage.connect() as conn:
        conn.execute(KVS.delete().where(_prefixed(*prefixes)))
