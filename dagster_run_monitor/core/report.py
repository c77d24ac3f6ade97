"""The recovery report: did resuming help? Per reason and per cause, the runs the monitor acted
on, how many resumed runs ended SUCCESS, how long from a crash's detection to the new worker,
how long the runs it ended had made no progress, and the jobs that crashed most. Pure: built
from the rows ``storage.report`` reads."""

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.durations import iso_time
from dagster_run_monitor.core.learned import percentile

ENDED = ("FAILURE", "CANCELED")
FINISHED = ("SUCCESS", *ENDED)
TOP_JOBS = 5
CRASH_REASONS = (
    c.REASON_WORKER_CRASH,
    c.REASON_WORKER_LOST,
    c.REASON_START_FAILED,
    c.REASON_STEP_LOST,
)


@dataclass(frozen=True)
class ActedRun:
    """A run the monitor acted on, from its tags (the latest action's reason and cause, the
    latest resume's attempt) and its events (when each crash was detected, when each new worker
    started, its last progress: an event of its own work, not an engine or status event)."""

    run_id: str
    job: str
    status: str
    reason: str
    cause: str = ""
    resumes: int = 0
    ended_at: float | None = None
    detections: Sequence[float] = ()  # each resume's event: "Launching a new run worker ..."
    worker_starts: Sequence[
        float
    ] = ()  # each worker start ("Started process for run", or "... for resuming job")
    last_progress: float | None = None


@dataclass
class Group:
    """One line of the report: a reason or a cause."""

    runs: int = 0
    resumed: int = 0  # runs resumed at least once
    recovered: int = 0  # of those, ended SUCCESS
    resumed_finished: int = 0  # of those, finished (the rate's denominator)
    ended: int = 0  # runs the monitor failed or canceled
    to_new_worker: list[float] = field(default_factory=list)  # seconds, one per resume
    stuck: list[float] = field(default_factory=list)  # seconds, one per ended run

    def add(self, run: ActedRun) -> None:
        self.runs += 1
        if run.resumes or run.reason == c.REASON_STEP_CRASH:  # a step retry is a new worker too
            self.resumed += 1
            if run.status in FINISHED:
                self.resumed_finished += 1
                self.recovered += run.status == "SUCCESS"
        if run.status in ENDED and run.reason and run.reason != c.REASON_STEP_CRASH:
            self.ended += 1
            if run.ended_at is not None and run.last_progress is not None:
                self.stuck.append(max(0.0, run.ended_at - run.last_progress))
        self.to_new_worker.extend(new_worker_delays(run))

    def summary(self) -> dict:
        rate = self.recovered / self.resumed_finished if self.resumed_finished else None
        return {
            "runs": self.runs,
            "resumed": self.resumed,
            "recovered": self.recovered,
            "recovery_rate": None if rate is None else round(rate, 3),
            "to_new_worker_p50_s": _p(self.to_new_worker, 50),
            "to_new_worker_p95_s": _p(self.to_new_worker, 95),
            "ended": self.ended,
            "stuck_p50_s": _p(self.stuck, 50),
            "stuck_p95_s": _p(self.stuck, 95),
        }


def new_worker_delays(run: ActedRun) -> list[float]:
    """Seconds from each detection to the first worker start after it (none if no worker
    started before the next detection or the end)."""
    starts = sorted(run.worker_starts)
    delays = []
    detections = sorted(run.detections)
    for i, detected in enumerate(detections):
        until = detections[i + 1] if i + 1 < len(detections) else float("inf")
        started = next((s for s in starts if detected <= s < until), None)
        if started is not None:
            delays.append(started - detected)
    return delays


def crashes_of(run: ActedRun) -> int:
    """Its resumes, the crash that failed it (a worker that died or started no more), and for
    a step retry the step crash it retries."""
    final = run.status in ENDED and run.reason in CRASH_REASONS
    return len(run.detections) + final + (run.reason == c.REASON_STEP_CRASH)


@dataclass(frozen=True)
class Report:
    since: float
    until: float
    by_reason: Mapping[str, dict]
    by_cause: Mapping[str, dict]
    crashed_jobs: Sequence[tuple[str, int]]  # (job, crashes), most first
    total: dict
    statements: int
    memory: Mapping[str, list] = field(default_factory=dict)  # job -> its workers' advice

    def as_dict(self) -> dict:
        return asdict(self)


def build_report(runs: Iterable[ActedRun], since: float, until: float, statements: int) -> Report:
    by_reason: dict[str, Group] = defaultdict(Group)
    by_cause: dict[str, Group] = defaultdict(Group)
    total = Group()
    crashes: Counter[str] = Counter()
    for run in runs:
        total.add(run)
        by_reason[run.reason or "resumed"].add(run)
        if run.cause:
            by_cause[run.cause].add(run)
            crashes[run.job] += crashes_of(run)
    return Report(
        since,
        until,
        {k: g.summary() for k, g in sorted(by_reason.items())},
        {k: g.summary() for k, g in sorted(by_cause.items())},
        sorted(crashes.items(), key=lambda item: (-item[1], item[0]))[:TOP_JOBS],
        total.summary(),
        statements,
    )


COLUMNS = (
    ("runs", "runs"),
    ("resumed", "resumed"),
    ("recovered", "recovered"),
    ("recovery_rate", "recovery rate"),
    ("to_new_worker_p50_s", "to new worker p50"),
    ("to_new_worker_p95_s", "p95"),
    ("ended", "ended"),
    ("stuck_p50_s", "stuck p50"),
    ("stuck_p95_s", "p95"),
)


def render(report: Report, form: str = "text") -> str:
    """The report as ``text`` (aligned columns), ``markdown`` (tables) or ``json``."""
    if form == "json":
        return json.dumps(report.as_dict(), indent=2, sort_keys=True)
    span = f"{iso_time(report.since)} to {iso_time(report.until)}"
    head = [
        f"Recovery report, {span}: {report.total['runs']} run(s) acted on"
        f" (read in {report.statements} statements)."
    ]
    tables = [("reason", report.by_reason), ("cause", report.by_cause)]
    body: list[str] = []
    for title, rows in tables:
        body += ["", f"By {title}:"] if form == "text" else ["", f"### By {title}", ""]
        body += _table(title, {**rows, "all": report.total}, form)
    jobs = ", ".join(f"{job} ({n})" for job, n in report.crashed_jobs) or "none"
    body += ["", f"Jobs that crashed most: {jobs}."]
    notes = (
        "recovery rate: resumed runs that ended SUCCESS, of those that finished; to new worker:"
        " seconds from a crash's resume to its new worker's first event; stuck: seconds from"
        " the last event of a run's own work to the monitor ending it."
    )
    return "\n".join([*head, *body, "", notes]) + "\n"


def _table(title: str, rows: Mapping[str, dict], form: str) -> list[str]:
    header = [title, *(label for _, label in COLUMNS)]
    cells = [[name, *(_cell(row[key], key) for key, _ in COLUMNS)] for name, row in rows.items()]
    if form == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        return lines + ["| " + " | ".join(row) + " |" for row in cells]
    widths = [max(len(str(r[i])) for r in [header, *cells]) for i in range(len(header))]
    return [
        "  "
        + "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *cells]
    ]


def _cell(value: object, key: str) -> str:
    if value is None:
        return "-"
    if key == "recovery_rate":
        return f"{float(value):.0%}"  # type: ignore[arg-type]
    if key.endswith("_s"):
        return f"{float(value):.1f} s"  # type: ignore[arg-type]
    return str(value)


def _p(values: Sequence[float], q: float) -> float | None:
    return round(percentile(sorted(values), q), 1) if values else None
