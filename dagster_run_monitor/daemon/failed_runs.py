"""What the decision needs to know of runs that failed: their failed and retried step attempts
(Dagster's events, with the metadata of the worker that ran each and the explanation of a dead
child process), the platform's causes of the crashed ones, and their run group's retries."""

from collections.abc import Mapping, Sequence

from dagster import DagsterInstance
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.dagster_run import DagsterRun

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.crash_cause import CrashCause
from dagster_run_monitor.core.step_crashes import (
    CRASH,
    INTERRUPT,
    LOST_STEP,
    UNFINISHED,
    FailedRun,
    StepEnd,
    delegated,
    kind_of,
)
from dagster_run_monitor.daemon.step_causes import platform_causes
from dagster_run_monitor.storage.eventlog import step_histories

CHILD_DIED = "Multiprocess executor: child process for step"  # Dagster's explanation


def failed_run_facts(instance: DagsterInstance, runs: Sequence[DagsterRun]) -> list[FailedRun]:
    """What the decision needs, for the failed runs that have a crashed step worker."""
    histories = step_histories(instance.event_log_storage, [run.run_id for run in runs])
    facts = []
    for run in runs:
        entries = histories.get(run.run_id, [])
        ends, failed_steps = step_ends(entries, run.tags)
        if not any(kind_of(e) in (CRASH, INTERRUPT) and not e.canceling for e in ends):
            continue  # no step worker died (a cancel's interrupts are not deaths)
        facts.append(
            FailedRun(
                run_id=run.run_id,
                job_name=run.job_name,
                tags=run.tags,
                failed_at=max((e.timestamp for e in entries), default=0.0),
                failed_steps=failed_steps,
                ends=ends,
                run_config=run.run_config,
            )
        )
    if not facts:
        return []
    causes = platform_causes(instance, {run.run_id: run for run in runs}, facts)
    return [_with_group(instance, fact, causes.get(fact.run_id, {})) for fact in facts]


def _with_group(instance: DagsterInstance, run: FailedRun, causes: Mapping[int, CrashCause]):
    """The run with its platform causes and its group's step retries so far."""
    group = instance.get_run_group(run.run_id)
    members = list(group[1]) if group else []
    ours = [r for r in members if r.tags.get(c.REASON_TAG) == c.REASON_STEP_CRASH]
    uncounted = sum(1 for r in ours if r.tags.get(c.UNCOUNTED_STEP_RETRY_TAG) == "true")
    return FailedRun(
        **{
            **run.__dict__,
            "causes": causes,
            "retries": len(ours) - uncounted,
            "uncounted": uncounted,
            "group_size": max(1, len(members)),
        }
    )


def step_ends(
    entries: Sequence[EventLogEntry], tags: Mapping[str, str]
) -> tuple[tuple[StepEnd, ...], tuple[str, ...]]:
    """The run's failed and retried step attempts (each with the metadata of the worker that
    ran it, the engine event that explained its death, when it started, and whether its run
    was being canceled then), and the steps whose last attempt failed. A step of a
    step-delegating executor that started and never ended counts as failed (``UNFINISHED``:
    its worker is gone with the run, a resumed worker may have failed to relaunch it), as does
    the step of a ``step_lost`` failure."""
    workers: dict[str, dict[str, str]] = {}
    explained: dict[str, str] = {}
    started: dict[str, float] = {}  # step -> its running attempt's start
    ends: list[StepEnd] = []
    canceled = False
    for entry in entries:
        event = entry.dagster_event
        if event is None:
            continue
        kind, step = event.event_type, event.step_key or ""
        if kind == DagsterEventType.PIPELINE_CANCELING:
            canceled = True
        elif kind in (DagsterEventType.STEP_START, DagsterEventType.STEP_RESTARTED):
            started[step] = entry.timestamp
        elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_SKIPPED):
            started.pop(step, None)
            workers.pop(step, None)
        elif kind in (DagsterEventType.STEP_WORKER_STARTING, DagsterEventType.STEP_WORKER_STARTED):
            metadata = getattr(event.event_specific_data, "metadata", None) or {}
            known = workers.setdefault(step, {})
            known.update({k: str(getattr(v, "value", v)) for k, v in metadata.items()})
        elif kind == DagsterEventType.ENGINE_EVENT:
            if (entry.user_message or "").startswith(CHILD_DIED):
                explained[step] = entry.user_message
        elif kind in (DagsterEventType.STEP_FAILURE, DagsterEventType.STEP_UP_FOR_RETRY):
            data = event.event_specific_data
            error = getattr(data, "error", None)
            source = getattr(data, "error_source", None)
            ends.append(
                StepEnd(
                    step_key=step,
                    retried=kind == DagsterEventType.STEP_UP_FOR_RETRY,
                    message=(error.message if error else "").strip(),
                    cls_name=error.cls_name if error else None,
                    error_source=getattr(source, "value", None),
                    user_failure=getattr(data, "user_failure_data", None) is not None,
                    explanation=explained.pop(step, ""),
                    worker=dict(workers.pop(step, {})),
                    at=entry.timestamp,
                    canceling=canceled,
                    started_at=started.pop(step, None),
                )
            )
    lost = tags.get(c.LOST_STEP_TAG) if tags.get(c.REASON_TAG) == c.REASON_STEP_LOST else None
    if lost:  # the monitor failed the run: the step never ended and its worker was gone
        ends.append(StepEnd(lost, False, c.lost_step_end_message(lost), LOST_STEP))
    for step, at in started.items():
        worker = workers.get(step, {})
        if step != lost and not canceled and delegated(worker):
            message = c.unfinished_step_message(step)
            ends.append(StepEnd(step, False, message, UNFINISHED, worker=worker, started_at=at))
    last: dict[str, bool] = {}
    for end in ends:
        last[end.step_key] = not end.retried
    return tuple(ends), tuple(step for step, failed in last.items() if failed)


def failed_step_crashed(ends: Sequence[StepEnd]) -> list[StepEnd]:
    """The failed (not retried) step attempts whose worker died or was interrupted."""
    return [
        e for e in ends if not e.retried and not e.canceling and kind_of(e) in (CRASH, INTERRUPT)
    ]


def has_crashed_step(instance: DagsterInstance, run_id: str) -> bool:
    """Whether a failed step of the run died of a crash (one read of the run's step events)."""
    run = instance.get_run_by_id(run_id)
    entries = step_histories(instance.event_log_storage, [run_id])[run_id]
    ends, failed = step_ends(entries, run.tags if run else {})
    last = [e for e in failed_step_crashed(ends) if e.step_key in failed]
    return bool(last)
