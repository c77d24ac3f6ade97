"""Workers' heartbeats in Dagster's key-value store (``kvs``, in the run storage): all beats in
one statement a pass, a run's stacks when they are shown, the takeover of a run's rows, and
the removal of finished runs' rows (their workers' peaks are written on them first,
``daemon.heartbeats``). The rows' format is ``core.heartbeats``'s."""

from collections.abc import Collection, Iterable

import sqlalchemy as db
from dagster import DagsterInstance
from dagster._core.storage.dagster_run import RunRecord, RunsFilter

from dagster_run_monitor.core.heartbeats import (
    BEAT_PREFIX,
    MEMORY_PREFIX,
    STACK_PREFIX,
    STEP_WORKER_PREFIX,
    Beat,
    Peak,
    beat_key,
    fenced_value,
    key_range,
    parse_beat,
    parse_peak,
)
from dagster_run_monitor.core.memory_use import run_peaks
from dagster_run_monitor.integration.internals import KVS, SqlRunStorage
from dagster_run_monitor.storage.bulk_writes import transaction


def _prefixed(*prefixes: str) -> db.ColumnElement:
    ranges = [db.and_(KVS.c.key >= low, KVS.c.key < high) for low, high in map(key_range, prefixes)]
    return db.or_(*ranges)


def read_beats(instance: DagsterInstance) -> list[Beat] | None:
    """Every beat stored (None where the run storage is not SQL: no heartbeats there)."""
    found = read_rows(instance)
    return None if found is None else found[0]


def read_rows(instance: DagsterInstance) -> tuple[list[Beat], list[tuple[str, Peak]]] | None:
    """Every beat, and every ended worker's peak (run id, peak), in one statement (None where
    the run storage is not SQL: no heartbeats there)."""
    storage = instance.run_storage
    if not isinstance(storage, SqlRunStorage):
        return None
    query = db.select(KVS.c.key, KVS.c.value).where(_prefixed(BEAT_PREFIX, MEMORY_PREFIX))
    with storage.connect() as conn:
        rows = conn.execute(query).fetchall()
    beats = [beat for key, value in rows if (beat := parse_beat(key, value)) is not None]
    peaks = [peak for key, value in rows if (peak := parse_peak(key, value)) is not None]
    return beats, peaks


def _rows_of(instance: DagsterInstance, prefix: str, run_ids: Collection[str]) -> list:
    """(key, value) of the rows under ``prefix`` of those runs: one statement (none where the
    run storage is not SQL)."""
    storage = instance.run_storage
    if not run_ids or not isinstance(storage, SqlRunStorage):
        return []
    query = db.select(KVS.c.key, KVS.c.value).where(_prefixed(*(f"{prefix}{i}/" for i in run_ids)))
    with storage.connect() as conn:
        return [tuple(row) for row in conn.execute(query).fetchall()]


def read_peaks(instance: DagsterInstance, run_ids: Collection[str]) -> dict[str, dict[str, Peak]]:
    """run id -> worker -> the peak its watcher kept as it ended (one statement)."""
    peaks: dict[str, list[Peak]] = {}
    for key, value in _rows_of(instance, MEMORY_PREFIX, run_ids):
        if (found := parse_peak(key, value)) is not None:
            peaks.setdefault(found[0], []).append(found[1])
    return {run_id: run_peaks(found) for run_id, found in peaks.items()}


def live_workers(instance: DagsterInstance, run_ids: Collection[str]) -> dict[str, set[str]]:
    """run id -> its workers whose watcher still beats (not ``ended``; one statement)."""
    live: dict[str, set[str]] = {}
    for key, value in _rows_of(instance, BEAT_PREFIX, run_ids):
        beat = parse_beat(key, value)
        if beat is not None and not beat.ended and not beat.fenced:
            live.setdefault(beat.run_id, set()).add(beat.worker)
    return live


def read_stacks(instance: DagsterInstance, run_ids: Collection[str]) -> dict[str, dict[str, str]]:
    """run id -> worker -> its last stacks (one statement)."""
    stacks: dict[str, dict[str, str]] = {}
    for key, value in _rows_of(instance, STACK_PREFIX, run_ids):
        run_id, _, worker = key[len(STACK_PREFIX) :].partition("/")
        stacks.setdefault(run_id, {})[worker] = value
    return stacks


def take_over(instance: DagsterInstance, run_id: str, now: float, ended: bool = False) -> None:
    """The run's rows are the monitor's now: its stacks go, and the run worker's row says
    ``fenced``, which stops an old worker that comes back (a healed partition); the new
    worker's first beat replaces it. Its step workers' rows go (a resumed run worker adopts
    the step workers it finds running), or, once the monitor ``ended`` the run, are fenced
    too: each step worker still running stops at its next beat."""
    storage = instance.run_storage
    if not isinstance(storage, SqlRunStorage):
        return
    fence = fenced_value(now, ended)
    steps = _prefixed(f"{BEAT_PREFIX}{run_id}/{STEP_WORKER_PREFIX}")
    with transaction(storage) as conn:
        conn.execute(KVS.delete().where(_prefixed(f"{STACK_PREFIX}{run_id}/")))
        conn.execute(KVS.delete().where(KVS.c.key == beat_key(run_id)))
        if ended:
            conn.execute(KVS.update().where(steps).values(value=fence))
        else:
            conn.execute(KVS.delete().where(steps))
        conn.execute(KVS.insert().values(key=beat_key(run_id), value=fence))


def ended_runs(instance: DagsterInstance, run_ids: Iterable[str]) -> dict[str, RunRecord | None]:
    """Those of ``run_ids`` that have ended: their records (None: the run is gone)."""
    ids = sorted(set(run_ids))
    if not ids:
        return {}
    records = {r.dagster_run.run_id: r for r in instance.get_run_records(RunsFilter(run_ids=ids))}
    return {
        i: records.get(i) for i in ids if i not in records or records[i].dagster_run.is_finished
    }


def forget(instance: DagsterInstance, run_ids: Iterable[str]) -> None:
    """Remove the rows (beats, stacks, peaks) of those runs."""
    storage = instance.run_storage
    ids = sorted(set(run_ids))
    if not ids or not isinstance(storage, SqlRunStorage):
        return
    ranges = [f"{p}{i}/" for i in ids for p in (BEAT_PREFIX, STACK_PREFIX, MEMORY_PREFIX)]
    with storage.connect() as conn:
        conn.execute(KVS.delete().where(_prefixed(*ranges)))
