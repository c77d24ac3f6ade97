"""Read in-progress runs: a page of run bodies costs more than the rest of a pass, so a daemon
keeps the runs it has read and re-reads only those whose row changed since."""

import datetime
from collections import Counter
from collections.abc import Mapping, Sequence

import sqlalchemy as db
from dagster import DagsterInstance
from dagster._core.storage.dagster_run import (
    FINISHED_STATUSES as DAGSTER_FINISHED,
)
from dagster._core.storage.dagster_run import (
    DagsterRun,
    DagsterRunStatus,
    RunRecord,
    RunsFilter,
)
from dagster._core.storage.event_log.base import EventLogStorage
from dagster._time import utc_datetime_from_naive

from dagster_run_monitor.core.constants import RESUMED_TAG
from dagster_run_monitor.core.limit_table import Seen, status_bounds
from dagster_run_monitor.core.limits import Limits, run_limits
from dagster_run_monitor.core.settings import MonitorSettings
from dagster_run_monitor.integration.internals import RUNS, SqlRunStorage
from dagster_run_monitor.storage.eventlog import count_resume_attempts

PAGE_SIZE = 1000
FINISHED_STATUSES = frozenset(s.value for s in DAGSTER_FINISHED)
ENDED_SEEN_AT_MOST = 10_000  # resumed runs remembered as counted


class RunReader:
    """Reads the runs in some statuses. Every run row's ``update_timestamp`` changes whenever
    Dagster writes the run (status, tags, body), so one light query of ids and timestamps
    tells which bodies to read again; the others come from the previous pass."""

    def __init__(self) -> None:
        self._known: dict[tuple[DagsterRunStatus, ...], dict[str, RunRecord]] = {}
        self._counted: dict[str, tuple[object, int]] = {}  # run id -> (row's update time, count)
        self._limits: dict[str, tuple[DagsterRun, Limits]] = {}  # run id -> (run read, limits)
        self._limits_for: MonitorSettings | None = None
        self._ended: Counter[str] = Counter()  # final status -> resumed runs that ended since
        self._ended_seen: dict[str, None] = {}  # their ids (the newest ENDED_SEEN_AT_MOST)
        self.failed_since: float | None = None  # also read runs that failed after (step retries)
        self._failed: list[DagsterRun] = []
        self._seen: Seen = {}  # each run's status at the last complete read, and its bound
        self._last_complete_read: float | None = None

    def entered_after(
        self, records: Sequence[RunRecord], now: float, complete: bool
    ) -> dict[str, float | None]:
        """When each run entered its status at the earliest, by this daemon's clock
        (``limit_table.status_bounds``); a ``complete`` read (every monitored status, at
        ``now``) is the reference of the next."""
        statuses = {r.dagster_run.run_id: r.dagster_run.status.value for r in records}
        bounds = status_bounds(self._seen, self._last_complete_read, statuses)
        if complete:
            self._seen, self._last_complete_read = bounds, now
        return {run_id: bound for run_id, (_, bound) in bounds.items()}

    def limits(
        self, runs: Mapping[str, DagsterRun], settings: MonitorSettings
    ) -> dict[str, Limits]:
        """Each run's limits (``limits.run_limits``), resolved again only for the runs read
        again since, or for all when the settings changed."""
        if settings != self._limits_for:
            self._limits, self._limits_for = {}, settings
        known = self._limits
        self._limits = {
            i: known[i] if i in known and known[i][0] is run else (run, run_limits(run, settings))
            for i, run in runs.items()
        }
        return {i: limits for i, (_, limits) in self._limits.items()}

    def resume_counts(
        self, storage: EventLogStorage, records: Sequence[RunRecord]
    ) -> dict[str, int]:
        """Each run's resume count, read again only for runs whose row changed since (a
        resume through ``K8sRunLauncher`` writes a tag, so its row changes; a count read just
        before a resume is read again next pass). For health checks only: actions count
        afresh."""
        ids = {r.dagster_run.run_id: r.update_timestamp for r in records}
        stale = [i for i, updated in ids.items() if self._counted.get(i, (None,))[0] != updated]
        fresh = count_resume_attempts(storage, stale)
        self._counted = {
            i: (updated, fresh[i] if i in fresh else self._counted[i][1])
            for i, updated in ids.items()
        }
        return {i: count for i, (_, count) in self._counted.items()}

    def read(
        self, instance: DagsterInstance, statuses: Sequence[DagsterRunStatus]
    ) -> list[RunRecord]:
        """The runs in ``statuses``; with ``failed_since`` set, the same statement also finds
        the runs that failed after it (``take_failed``: their bodies are read only then)."""
        storage = instance.run_storage
        since, self.failed_since = self.failed_since, None
        if not isinstance(storage, SqlRunStorage):
            if since is not None:
                self._failed = [r.dagster_run for r in read_failed(instance, since)]
            return read_all(instance, statuses)
        query = RUNS.select().with_only_columns(
            RUNS.c.run_id, RUNS.c.update_timestamp, RUNS.c.status
        )
        wanted = RUNS.c.status.in_([s.value for s in statuses])
        if since is not None:
            after = datetime.datetime.fromtimestamp(since, datetime.timezone.utc)
            failed = db.and_(
                RUNS.c.status == DagsterRunStatus.FAILURE.value,
                RUNS.c.update_timestamp > after.replace(tzinfo=None),
            )
            wanted = db.or_(wanted, failed)
        rows = storage.fetchall(query.where(wanted))
        failure = DagsterRunStatus.FAILURE.value
        current = {
            row["run_id"]: utc_datetime_from_naive(row["update_timestamp"])
            for row in rows
            if row["status"] != failure or DagsterRunStatus.FAILURE in statuses
        }
        failed_ids = [row["run_id"] for row in rows if row["run_id"] not in current]
        self._failed = list(instance.get_runs(RunsFilter(run_ids=failed_ids))) if failed_ids else []
        before = self._known.get(tuple(statuses), {})
        stale = [
            run_id
            for run_id, updated in current.items()
            if run_id not in before or before[run_id].update_timestamp != updated
        ]
        known = {run_id: before[run_id] for run_id in current if run_id not in stale}
        for start in range(0, len(stale), PAGE_SIZE):
            page = stale[start : start + PAGE_SIZE]
            for record in instance.get_run_records(RunsFilter(run_ids=page)):
                known[record.dagster_run.run_id] = record
        self._known[tuple(statuses)] = known
        self._count_ended(storage, [r for i, r in before.items() if i not in current])
        wanted_statuses = set(statuses)  # a run may have moved on between the two queries
        return [r for r in known.values() if r.dagster_run.status in wanted_statuses]

    def failed_ids(self) -> set[str]:
        """The ids of the runs the last ``read`` found failed (not taken yet)."""
        return {run.run_id for run in self._failed}

    def take_failed(self) -> list[DagsterRun]:
        """The runs that failed since ``failed_since``, as the last ``read`` found them."""
        failed, self._failed = self._failed, []
        return failed

    def _count_ended(self, storage: SqlRunStorage, left: Sequence[RunRecord]) -> None:
        """Of the runs no longer in the statuses read, those the monitor resumed that have
        finished (one statement, only when there are any), counted once each."""
        resumed = [
            r.dagster_run.run_id
            for r in left
            if RESUMED_TAG in r.dagster_run.tags and r.dagster_run.run_id not in self._ended_seen
        ]
        if not resumed:
            return
        query = db.select(RUNS.c.run_id, RUNS.c.status).where(RUNS.c.run_id.in_(resumed))
        for row in storage.fetchall(query):
            if row["status"] in FINISHED_STATUSES:
                self._ended[row["status"]] += 1
                self._ended_seen[row["run_id"]] = None
        while len(self._ended_seen) > ENDED_SEEN_AT_MOST:
            del self._ended_seen[next(iter(self._ended_seen))]

    def take_ended(self) -> Counter[str]:
        """Resumed runs that finished since the last call, by final status."""
        ended, self._ended = self._ended, Counter()
        return ended


def read_failed(instance: DagsterInstance, since: float) -> list[RunRecord]:
    """The runs that failed after ``since`` (by their row's update time)."""
    after = datetime.datetime.fromtimestamp(since, datetime.timezone.utc)
    return list(
        instance.get_run_records(
            RunsFilter(statuses=[DagsterRunStatus.FAILURE], updated_after=after)
        )
    )


def read_all(instance: DagsterInstance, statuses: Sequence[DagsterRunStatus]) -> list[RunRecord]:
    """Every run in ``statuses``, read in pages."""
    records: list[RunRecord] = []
    cursor = None
    while True:
        page = instance.get_run_records(
            filters=RunsFilter(statuses=list(statuses)), limit=PAGE_SIZE, cursor=cursor
        )
        records.extend(page)
        if len(page) < PAGE_SIZE:
            return records
        cursor = page[-1].dagster_run.run_id
