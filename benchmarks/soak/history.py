"""The whole history of a soak, read once at its end: every run with its event log (from
storage), the plans, faults, step markers and alerts (from the soak's directory), the
daemons' pids, memory samples and logs."""

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dagster import DagsterInstance

from benchmarks.soak.driver import Plan
from benchmarks.soak.faults import Fault, read_faults
from dagster_run_monitor.core.constants import ROOT_RUN_TAG
from dagster_run_monitor_tests.support.subprocesses import log_text


@dataclass(frozen=True)
class Event:
    id: int
    time: float
    pid: int | None
    type: str | None  # None: a log line, not a Dagster event
    message: str
    step: str | None


@dataclass
class Run:
    run_id: str
    job: str
    status: str
    tags: dict[str, str]
    root: str
    created: float
    started: float | None
    ended: float | None
    events: list[Event]


@dataclass
class History:
    runs: dict[str, Run]
    plans: dict[str, Plan]
    faults: list[Fault]
    markers: dict[str, Counter]  # root run id -> step -> completions
    alerts: list[dict[str, Any]]
    logs: dict[str, str]
    memory: list[dict[str, Any]]
    started: float
    ended: float
    groups: dict[str, list[Run]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for run in sorted(self.runs.values(), key=lambda r: r.created):
            self.groups.setdefault(run.root, []).append(run)


def read_events(instance: DagsterInstance, run_id: str) -> list[Event]:
    records = instance.get_records_for_run(run_id, limit=100_000).records
    events = []
    for record in records:
        entry = record.event_log_entry
        event = entry.dagster_event
        events.append(
            Event(
                id=record.storage_id,
                time=entry.timestamp,
                pid=event.pid if event else None,
                type=event.event_type_value if event else None,
                message=(event.message if event and event.message else entry.user_message) or "",
                step=entry.step_key,
            )
        )
    return events


def read_runs(instance: DagsterInstance) -> dict[str, Run]:
    runs = {}
    for record in instance.get_run_records():
        run = record.dagster_run
        runs[run.run_id] = Run(
            run_id=run.run_id,
            job=run.job_name,
            status=run.status.value,
            tags=dict(run.tags),
            root=run.tags.get(ROOT_RUN_TAG, run.run_id),
            created=record.create_timestamp.timestamp(),
            started=record.start_time,
            ended=record.end_time,
            events=read_events(instance, run.run_id),
        )
    return runs


def dump(history: History, path: Path) -> None:
    """Every run with its events, for a post-mortem once the database is gone."""
    runs = [
        {**asdict(run), "events": [asdict(e) for e in run.events]} for run in history.runs.values()
    ]
    path.write_text(json.dumps(runs))


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_history(
    instance: DagsterInstance,
    soak_dir: Path,
    memory: list[dict[str, Any]],
    started: float,
    ended: float,
) -> History:
    markers = {
        path.name: Counter(path.read_text().split()) for path in (soak_dir / "markers").iterdir()
    }
    return History(
        runs=read_runs(instance),
        plans={p["run_id"]: Plan(**p) for p in _lines(soak_dir / "plans.jsonl")},
        faults=read_faults(soak_dir / "faults.jsonl"),
        markers=markers,
        alerts=_lines(soak_dir / "alerts.jsonl"),
        logs={p.stem: log_text(p) for p in sorted(soak_dir.glob("daemon-*.log"))},
        memory=memory,
        started=started,
        ended=ended,
    )
