"""The soak's invariants, checked on the whole history (pure: a ``History`` in, findings out).

Each check returns ``Finding``s; a finding that is ``reported`` is allowed by the issue (a
step run twice because its own worker was killed mid-step) and is counted, not failed."""

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

from dagster import DagsterEventType

from benchmarks.soak.faults import IMMEDIATE, Fault
from benchmarks.soak.history import Event, History, Run
from benchmarks.soak.system import BEAT_INTERVAL, POLL_SECONDS
from dagster_run_monitor.core.constants import (
    REASON_STEP_CRASH,
    REASON_TAG,
    RESUME_RUN_LOG_MESSAGE,
    STEP_RETRY_TAG,
)

TERMINAL = {
    DagsterEventType.RUN_SUCCESS.value: "SUCCESS",
    DagsterEventType.RUN_FAILURE.value: "FAILURE",
    DagsterEventType.RUN_CANCELED.value: "CANCELED",
}
FINISHED = set(TERMINAL.values())
# Events only a run worker or a step worker writes.
WORKER_EVENTS = {
    DagsterEventType.RUN_START.value,
    "STEP_START",
    "STEP_SUCCESS",
    "STEP_OUTPUT",
    "STEP_INPUT",
    "HANDLED_OUTPUT",
    "LOADED_INPUT",
    "RESOURCE_INIT_STARTED",
    "RESOURCE_INIT_SUCCESS",
    "STEP_WORKER_STARTING",
    "STEP_WORKER_STARTED",
    "LOGS_CAPTURED",
    "STEP_UP_FOR_RETRY",
    "STEP_RESTARTED",
}
SLACK = 30.0  # seconds: a pass, a health check, writes on a loaded 2-core machine


@dataclass(frozen=True)
class Finding:
    invariant: str
    run_id: str
    detail: str
    reported: bool = False  # allowed and counted, not a failure


def resumes(run: Run) -> list[Event]:
    return [e for e in run.events if RESUME_RUN_LOG_MESSAGE in e.message]


def outages(history: History) -> list[tuple[float, float]]:
    return [(f.time, f.time + f.seconds) for f in history.faults if f.kind == "pg_outage"]


SKEW = 600.0  # seconds: the skewed runs' clock is this far behind (faketime -10m)


def real_end(history: History, run: Run) -> float:
    """When the run ended by the soak's clock: a skewed run's worker stamps its end 10
    minutes early (a daemon, which ends a run with a terminal event of no pid, does not)."""
    if run.ended is None:
        return history.ended
    plan = history.plans.get(run.root)
    by_worker = any(e.type in TERMINAL and e.pid for e in run.events)
    return run.ended + (SKEW if plan is not None and plan.skew and by_worker else 0.0)


def touched_by_outage(history: History, runs: list[Run]) -> int:
    """How many database outages overlapped the group's life."""
    start = min(r.created for r in runs)
    end = max(real_end(history, r) for r in runs)
    return sum(a <= end + SLACK and b >= start for a, b in outages(history))


def group_faults(history: History, runs: list[Run]) -> list[Fault]:
    ids = {r.run_id for r in runs}
    return [f for f in history.faults if f.run_id in ids]


def every_run_ends(history: History) -> list[Finding]:
    """None is left STARTING, STARTED or CANCELING; a run past its limit ends within it plus
    the timeouts (where no outage of the database or of a daemon got in the way)."""
    found = []
    for run in history.runs.values():
        if run.status not in FINISHED:
            found.append(Finding("ends", run.run_id, f"left {run.status}"))
            continue
        plan = history.plans.get(run.root)
        if plan is None or run.run_id != run.root or not run.started or not run.ended:
            continue
        if (
            group_faults(history, [run])
            or touched_by_outage(history, [run])
            or _daemon_down(history, run)
        ):
            continue
        took = run.ended - run.started
        if plan.limit_crossed and took > plan.max_runtime + POLL_SECONDS + SLACK:
            found.append(
                Finding(
                    "ends",
                    run.run_id,
                    f"max runtime {plan.max_runtime:.0f} s, ended after {took:.0f} s",
                )
            )
    return found


def _daemon_down(history: History, run: Run) -> bool:
    end = real_end(history, run)
    return any(
        f.kind == "daemon_restart" and f.time <= end and f.time + f.seconds >= run.created
        for f in history.faults
    )


def no_false_verdict(history: History) -> list[Finding]:
    """A run group with no fault and no limit crossed: one run, SUCCESS (or FAILURE of its own
    code), no action of the monitor."""
    found = []
    for root, runs in history.groups.items():
        plan = history.plans.get(root)
        if plan is None or plan.hang or plan.oom or plan.limit_crossed:
            continue
        if [f for f in group_faults(history, runs) if f.kind != "skew"]:
            continue  # a skewed clock is no excuse: its runs are held to this too
        if touched_by_outage(history, runs):
            continue
        run = runs[0]
        if ran_past(run, plan.max_runtime):
            continue  # a loaded machine: the run really outlived its limit
        expected = "FAILURE" if plan.fail else "SUCCESS"
        acted = [r.run_id for r in runs if REASON_TAG in r.tags or resumes(r)]
        if len(runs) > 1 or run.status != expected or acted:
            what = ", ".join(f"{r.status} {r.tags.get(REASON_TAG, '')}".strip() for r in runs)
            found.append(Finding("no false verdict", root, f"expected {expected}: {what}"))
    return found


def ran_past(run: Run, limit: float) -> bool:
    """The monitor failed ``run`` for its max runtime after it had run that long."""
    if not limit or run.tags.get(REASON_TAG) != "max_runtime" or not run.started:
        return False
    return (run.ended or 0) - run.started >= limit


def exactly_once(history: History) -> list[Finding]:
    """At most one resume or retry per injected fault (database outages count as one fault
    for each run group they touched); no resume attempt twice."""
    found = []
    for root, runs in history.groups.items():
        faults = [f for f in group_faults(history, runs) if f.kind in (*IMMEDIATE, "oom")]
        budget = len(faults) + touched_by_outage(history, runs)
        actions = sum(len(resumes(r)) for r in runs) + len(runs) - 1
        if actions > budget:
            found.append(
                Finding(
                    "exactly once",
                    root,
                    f"{actions} resumes and retries for "
                    f"{budget} faults ({', '.join(f.kind for f in faults)})",
                )
            )
        for run in runs:
            attempts = Counter(
                _attempt(e.message)
                for e in run.events
                if e.message.startswith("Detected run worker status")
                and "Resuming run" in e.message
            )
            twice = [a for a, n in attempts.items() if n > 1]
            if twice:
                found.append(Finding("exactly once", run.run_id, f"resume decided twice: {twice}"))
        retries = Counter(r.tags.get(STEP_RETRY_TAG) for r in runs if r.tags.get(STEP_RETRY_TAG))
        if any(n > 1 and v != "none" for v, n in retries.items()):
            found.append(Finding("exactly once", root, f"step retry tags {dict(retries)}"))
    return found


_ATTEMPT = re.compile(r"attempt (\d+)")


def _attempt(message: str) -> str:
    match = _ATTEMPT.search(message)
    return match.group(1) if match else message


def nothing_done_twice(history: History) -> list[Finding]:
    """No step of a run group completes twice, except (reported) a step whose own worker was
    killed mid-step, and the steps a resume runs again under ``multiprocess`` (Dagster re-runs
    the whole job: see docs/launchers.md)."""
    found = []
    for root, steps in history.markers.items():
        runs = history.groups.get(root, [])
        hit = {f.step for f in group_faults(history, runs) if f.kind in IMMEDIATE}
        plan = history.plans.get(root)
        rerun = plan is not None and plan.executor == "multiprocess" and any(map(resumes, runs))
        for step, count in steps.items():
            if count > 1:
                allowed = step in hit or rerun or bool(touched_by_outage(history, runs))
                detail = f"step {step} completed {count} times" + (
                    " (a resume under multiprocess)" if rerun else ""
                )
                found.append(Finding("nothing done twice", root, detail, allowed))
    return found


def worker_pids(events: list[Event]) -> set[int]:
    """Pids of the run and step workers that wrote ``events`` (the daemons' have none)."""
    return {e.pid for e in events if e.pid and e.type in WORKER_EVENTS}


def adopted(run: Run, before: list[Event]) -> set[int]:
    """Step processes of a step-delegating executor (``process_step_executor``, step pods):
    they outlive a crashed run worker by design, and the resumed worker adopts them (or they
    finish first)."""
    if run.tags.get("soak/executor") not in ("process", "k8s"):
        return set()
    return {e.pid for e in before if e.type == "STEP_WORKER_STARTED" and e.pid}


FENCE_WINDOW = BEAT_INTERVAL + 3.0  # a fenced worker stops at its watcher's next beat


def fencing(history: History) -> list[Finding]:
    """No event from a worker after its run ended, or after the run was taken over by a new
    worker (from a pid that wrote the run's events before the takeover, but step processes a
    resumed worker adopts). Its watcher stops a fenced worker at its next beat: an event in
    that window is reported, one later breaks the invariant."""
    found = []
    for run in history.runs.values():
        ends = [i for i, e in enumerate(run.events) if e.type in TERMINAL]
        if ends:
            last = ends[-1]
            old = worker_pids(run.events[: last + 1])
            late = [e for e in run.events[last + 1 :] if e.type is None or e.pid in old]
            for event in late[:1]:
                found.append(_late(run, "after the run ended", event, run.events[last].time))
        for takeover in resumes(run):
            index = run.events.index(takeover)
            before, after = run.events[:index], run.events[index + 1 :]
            old = worker_pids(before) - adopted(run, before)
            for event in [e for e in after if e.pid in old][:1]:
                found.append(_late(run, "after a resume, an old worker", event, takeover.time))
    return found


def _late(run: Run, when: str, event: Event, since: float) -> Finding:
    lateness = event.time - since
    what = f"{event.type or 'log'} {event.message[:80]!r}"
    detail = f"{when}: pid {event.pid} wrote {what} {lateness:.1f} s later"
    return Finding("fencing", run.run_id, detail, reported=lateness <= FENCE_WINDOW)


def nothing_lost(history: History) -> list[Finding]:
    """One terminal run event per finished run, matching its status; every action of the
    monitor has its tag and its alert (unless the daemon that acted was killed right after,
    which the docs allow)."""
    found = []
    alerted = {(a["run_id"], a["kind"]) for a in history.alerts}
    kills = [f.time for f in history.faults if f.kind == "daemon_restart"]
    for run in history.runs.values():
        terminal = [e for e in run.events if e.type in TERMINAL]
        if run.status in FINISHED:
            if len(terminal) != 1 or TERMINAL[terminal[0].type] != run.status:
                kinds = [e.type for e in terminal]
                found.append(
                    Finding(
                        "nothing lost", run.run_id, f"status {run.status}, terminal events {kinds}"
                    )
                )
        # the monitor's ends: not a worker's, on a run it tagged with its reason (not a step
        # retry it created, which Dagster's queue may fail: it was acted on as a new run)
        acted_on = run.tags.get(REASON_TAG) not in (None, REASON_STEP_CRASH)
        monitor_ended = [e for e in terminal if e.pid is None and acted_on]
        for event, kind in [(e, "resumed") for e in resumes(run)] + [
            (e, "failed" if TERMINAL[e.type] == "FAILURE" else "canceled") for e in monitor_ended
        ]:
            if (run.run_id, kind) not in alerted and not any(
                event.time - 5 <= k <= event.time + SLACK for k in kills
            ):
                found.append(Finding("nothing lost", run.run_id, f"no '{kind}' alert"))
    return found


# Dagster's own daemons' complaint (the soak runs two daemons on purpose; ours claim runs).
DAGSTER_ON_TWO_DAEMONS = "daemon is still sending heartbeats. You likely have multiple daemon"
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \+0000 - ")


CODE_SERVER_DOWN = 300.0  # seconds: Dagster's daemon reloads a dead code server meanwhile


def daemons_healthy(history: History) -> list[Finding]:
    """The daemons' own log lines hold no ERROR but while the database is down (and a minute
    after) or a code server is (after a lost host); an incarnation that lived 30 minutes or
    more grew less than 10% from its 10th minute to its end. (Under DefaultRunLauncher the
    run workers' output goes to the daemon's log too: their lines are the runs'.)"""
    found = []
    windows = [(a, b + 60) for a, b in outages(history)]
    lost_hosts = [f.time for f in history.faults if f.kind == "kill_host"]
    windows += [(t, t + CODE_SERVER_DOWN) for t in lost_hosts]
    for name, text in history.logs.items():
        for line in text.splitlines():
            match = _LOG_TIME.match(line)
            own = " - dagster.daemon." in line or " - dagster_run_monitor" in line
            if " - ERROR - " not in line or match is None or not own:
                continue
            if DAGSTER_ON_TWO_DAEMONS in line:
                continue
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
            at_s = at.replace(tzinfo=timezone.utc).timestamp()
            if not any(a - 1 <= at_s <= b for a, b in windows):
                found.append(Finding("daemons", name, line.strip()[:240]))
    by_pid: dict[int, list[tuple[float, int]]] = {}
    for sample in history.memory:
        if sample["rss"]:
            by_pid.setdefault(sample["pid"], []).append((sample["time"], sample["rss"]))
    for pid, samples in by_pid.items():
        start = samples[0][0]
        if samples[-1][0] - start < 30 * 60:
            continue
        base = next(rss for t, rss in samples if t >= start + 600)
        if samples[-1][1] > base * 1.1:
            found.append(Finding("daemons", str(pid), f"RSS grew {base} -> {samples[-1][1]}"))
    return found


CHECKS = (
    every_run_ends,
    no_false_verdict,
    exactly_once,
    nothing_done_twice,
    fencing,
    nothing_lost,
    daemons_healthy,
)


def check(history: History) -> list[Finding]:
    return [finding for check in CHECKS for finding in check(history)]
