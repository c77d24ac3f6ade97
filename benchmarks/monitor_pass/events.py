"""The runs' event logs: template events copied per run, written in bulk."""

import csv
import datetime
import io
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from dagster import DagsterInstance, In, Nothing, job, op
from dagster._core.definitions.dependency import NodeHandle
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.plan.handle import StepHandle
from dagster._core.execution.plan.objects import StepSuccessData
from dagster._core.execution.plan.outputs import StepOutputData, StepOutputHandle
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.event_log import SqlEventLogStorage, SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from benchmarks.monitor_pass.constants import MARK_BASE, PLACEHOLDER_RUN_ID
from dagster_run_monitor_tests.support.postgres import PG_SERVER


def build_job(name: str, steps: int):
    ops = []
    for k in range(steps):

        @op(name=f"step_{k}", ins={"after": In(Nothing)} if k else None)
        def _step():
            return None

        ops.append(_step)

    @job(name=name)
    def _job():
        previous = None
        for step in ops:
            previous = step(after=previous) if previous is not None else step()

    return _job


def filler_entries(job_name: str, events: int, steps: int) -> list[EventLogEntry]:
    """What a run worker writes while a run is STARTED: engine events, step events and user
    log lines, the last step still running."""

    def dagster_event(kind: DagsterEventType, step: int | None, data=None, message=None):
        handle = StepHandle(NodeHandle(f"step_{step}", None)) if step is not None else None
        return DagsterEvent(
            event_type_value=kind.value,
            job_name=job_name,
            step_handle=handle,
            step_kind_value="COMPUTE" if handle else None,
            logging_tags={"job_name": job_name, "step_key": f"step_{step}"} if handle else {},
            event_specific_data=data,
            message=message,
            pid=4242,
        )

    def entry(event: DagsterEvent | None, step: int | None, message: str = "") -> EventLogEntry:
        return EventLogEntry(
            error_info=None,
            level=logging.DEBUG if event else logging.INFO,
            user_message=message,
            run_id=PLACEHOLDER_RUN_ID,
            timestamp=0.0,  # set below
            step_key=f"step_{step}" if step is not None else None,
            job_name=job_name,
            dagster_event=event,
        )

    out = [
        entry(
            dagster_event(
                DagsterEventType.ENGINE_EVENT,
                None,
                EngineEventData({}),
                "Started process for run (pid: 4242).",
            ),
            None,
        ),
        entry(
            dagster_event(
                DagsterEventType.ENGINE_EVENT,
                None,
                EngineEventData({}),
                "Executing steps using multiprocess executor: parent process (pid: 4242)",
            ),
            None,
        ),
    ]
    for s in range(steps):
        key = f"step_{s}"
        out += [
            entry(
                dagster_event(
                    DagsterEventType.STEP_WORKER_STARTING,
                    s,
                    EngineEventData({}),
                    f'Launching subprocess for "{key}".',
                ),
                s,
            ),
            entry(
                dagster_event(
                    DagsterEventType.STEP_START, s, message=f'Started execution of step "{key}".'
                ),
                s,
            ),
        ]
        out += [entry(None, s, f"Processing batch {b} of 5 for {key}") for b in range(1, 6)]
        out += [
            entry(
                dagster_event(
                    DagsterEventType.STEP_OUTPUT,
                    s,
                    StepOutputData(StepOutputHandle(key, "result")),
                    'Yielded output "result" of type "Any". (Type check passed).',
                ),
                s,
            ),
            entry(
                dagster_event(
                    DagsterEventType.ENGINE_EVENT,
                    s,
                    EngineEventData({}),
                    "Finished steps in process (pid: 4243) in 1.2s",
                ),
                s,
            ),
            entry(
                dagster_event(
                    DagsterEventType.STEP_SUCCESS,
                    s,
                    StepSuccessData(1234.0),
                    f'Finished execution of step "{key}" in 1.2s.',
                ),
                s,
            ),
        ]
    out = out[:events]
    return [e._replace(timestamp=MARK_BASE + k) for k, e in enumerate(out)]


@dataclass
class FillerTemplate:
    rows: list[dict]  # _event_to_row of the template entries, run id = placeholder
    marks: list[str]  # per row: the timestamp text to replace in its body


def make_template(storage: SqlEventLogStorage, job_name: str, events: int, steps: int):
    rows, marks = [], []
    for k, entry in enumerate(filler_entries(job_name, events, steps)):
        row = storage._event_to_row(entry)  # Dagster's own row for the event
        mark = f'"timestamp": {MARK_BASE + k!r}'
        assert mark in row["event"], (mark, row["event"][:300])
        rows.append(row)
        marks.append(mark)
    return FillerTemplate(rows, marks)


def naive_utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).replace(tzinfo=None)


def filler_rows(template: FillerTemplate, run_id: str, start: float, end: float) -> list[dict]:
    n = len(template.rows)
    out = []
    for k, (row, mark) in enumerate(zip(template.rows, template.marks, strict=True)):
        ts = start + (end - start) * (k + 1) / (n + 1)
        out.append(
            {
                **row,
                "run_id": run_id,
                "event": row["event"]
                .replace(PLACEHOLDER_RUN_ID, run_id)
                .replace(mark, f'"timestamp": {ts!r}'),
                "timestamp": naive_utc(ts),
            }
        )
    return out


def lifecycle_entries(run: DagsterRun, times: dict[str, float]) -> list[EventLogEntry]:
    """The run-status events Dagster writes (enqueue, launch, start, cancel request)."""
    kinds = [
        ("enqueued", DagsterEventType.RUN_ENQUEUED, None),
        ("launched", DagsterEventType.RUN_STARTING, None),
        ("started", DagsterEventType.RUN_START, None),
        ("canceling", DagsterEventType.RUN_CANCELING, "Sending run termination request."),
    ]
    out = []
    for key, kind, message in kinds:
        if key in times:
            event = DagsterEvent(
                event_type_value=kind.value, job_name=run.job_name, message=message
            )
            out.append(
                EventLogEntry(
                    error_info=None,
                    level=logging.DEBUG,
                    user_message="",
                    run_id=run.run_id,
                    timestamp=times[key],
                    job_name=run.job_name,
                    dagster_event=event,
                )
            )
    return out


def run_times(status: DagsterRunStatus, now: float, rng: random.Random) -> dict[str, float]:
    if status == DagsterRunStatus.QUEUED:
        created = now - rng.uniform(10, 600)
        return {"created": created, "enqueued": created}
    if status == DagsterRunStatus.STARTING:
        created = now - rng.uniform(20, 120)
        return {"created": created, "launched": created + rng.uniform(1, 10)}
    created = now - rng.uniform(300, 3000)
    times = {"created": created, "launched": created + 2, "started": created + 10}
    if status == DagsterRunStatus.CANCELING:
        times["canceling"] = now - rng.uniform(5, 60)
    return times


class EventWriter:
    """Bulk writes of event-log rows: COPY on Postgres, executemany per run file on SQLite."""

    def __init__(self, instance: DagsterInstance, database: str | None):
        self.storage = instance.event_log_storage
        self.postgres = not isinstance(self.storage, SqliteEventLogStorage)
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer)
        self.pending = 0
        self.connection = None
        if self.postgres:
            import psycopg2

            self.connection = psycopg2.connect(dbname=database, **PG_SERVER)

    def add(self, rows: Sequence[dict]) -> None:
        if not self.postgres:
            if rows:
                with self.storage.run_connection(rows[0]["run_id"]) as conn:
                    conn.execute(SqlEventLogStorageTable.insert(), list(rows))
            return
        write = self.writer.writerow
        for r in rows:
            write(
                (
                    r["run_id"],
                    r["event"],
                    r["dagster_event_type"],
                    r["timestamp"].isoformat(sep=" "),
                    r["step_key"],
                    r["asset_key"],
                    r["partition"],
                )
            )
        self.pending += len(rows)
        if self.pending >= 100_000:
            self.flush()

    def flush(self) -> None:
        if not self.postgres or not self.pending:
            return
        self.buffer.seek(0)
        with self.connection.cursor() as cursor:
            cursor.copy_expert(
                "COPY event_logs (run_id, event, dagster_event_type, timestamp, step_key,"
                " asset_key, partition) FROM STDIN WITH (FORMAT csv)",
                self.buffer,
            )
        self.connection.commit()
        self.buffer.seek(0)
        self.buffer.truncate()
        self.pending = 0

    def close(self) -> None:
        self.flush()
        if self.connection is not None:
            self.connection.close()
