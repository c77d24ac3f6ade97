"""Act: apply decided actions through Dagster's instance API, each visible in the event log."""

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from dagster import DagsterInstance
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData, JobFailureData
from dagster._core.storage.dagster_run import DagsterRun, RunsFilter
from dagster._core.workspace.context import BaseWorkspaceRequestContext
from dagster._utils.error import serializable_error_info_from_exc_info

from dagster_run_monitor import constants as c
from dagster_run_monitor.alerts import send_alert
from dagster_run_monitor.claims import claims
from dagster_run_monitor.debug_info import worker_debug_info
from dagster_run_monitor.eventlog import resume_history
from dagster_run_monitor.health import check_worker
from dagster_run_monitor.metrics import action_labels
from dagster_run_monitor.model import (
    Action,
    CancelRun,
    FailRun,
    Notice,
    ResumeRun,
    TerminateAndFail,
)
from dagster_run_monitor.policy import Observed, resume_of, still_due
from dagster_run_monitor.settings import AlertSettings

CLAIM_BATCH = 500  # runs claimed and re-checked together (bounds open lock files)


def apply_due(
    instance: DagsterInstance,
    due: Sequence[tuple[Observed, Sequence[Action]]],
    workspace: Callable[[], BaseWorkspaceRequestContext],
    logger: logging.Logger,
    alerts: AlertSettings | None = None,
    threads: int = 1,
    observed_at: float | None = None,
) -> Iterator[tuple[str, Sequence[Action], BaseException | None]]:
    """Apply each run's actions, ``threads`` runs at a time, to the run as re-read under its
    claim, unless another daemon holds the claim or the run changed since it was observed
    (``policy.still_due``). ``observed_at``: the pass's start. Claims and re-checks take a few
    queries per batch of runs, not per run. Yields, per run acted on, its id, the actions
    applied and the error that stopped them (None if none did)."""
    storage = instance.event_log_storage
    for start in range(0, len(due), CLAIM_BATCH):
        batch = due[start : start + CLAIM_BATCH]
        with claims(instance, [seen.run_id for seen, _ in batch]) as held:
            for seen, _ in batch:
                if seen.run_id not in held:
                    logger.info(
                        "Run %s is being handled by another daemon; skipping it.", seen.run_id
                    )
            mine = [(seen, actions) for seen, actions in batch if seen.run_id in held]
            ids = [seen.run_id for seen, _ in mine]
            current = (
                {r.run_id: r for r in instance.get_runs(RunsFilter(run_ids=ids))} if ids else {}
            )
            resumes = resume_history(
                storage, [s.run_id for s, actions in mine if resume_of(actions)]
            )
            todo = []
            for seen, actions in mine:
                done, last_resume_at = resumes.get(seen.run_id, (0, None))
                run = current.get(seen.run_id)
                now_due = still_due(seen.status, actions, run, done, last_resume_at, observed_at)
                if run is None or now_due is None:
                    logger.info("Run %s changed during the pass; leaving it for now.", seen.run_id)
                else:
                    todo.append((run, now_due))
            with ThreadPoolExecutor(max(1, threads), "run_monitor_action") as pool:
                futures = {
                    pool.submit(_act, instance, run, actions, workspace, logger, alerts): run
                    for run, actions in todo
                }
                for future in as_completed(futures):
                    error = future.exception()
                    applied = future.result() if error is None else []
                    yield futures[future].run_id, applied, error


def _act(
    instance: DagsterInstance,
    run: DagsterRun,
    actions: Sequence[Action],
    workspace: Callable[[], BaseWorkspaceRequestContext],
    logger: logging.Logger,
    alerts: AlertSettings | None,
) -> Sequence[Action]:
    """Apply one run's actions; a crashed worker is checked once more under the claim before
    a resume: another daemon may have resumed the run between this pass's health check and
    its claim (its resume event written before its new worker started)."""
    resume = resume_of(actions)
    if resume and not resume.kill_first:
        health = check_worker(instance.run_launcher, run, explain=False)
        if health.answered and health.healthy:
            logger.info(
                "Run %s: its worker is healthy again (%s); not resuming.", run.run_id, health
            )
            return []
    _apply(instance, run, actions, workspace, logger, alerts)
    return actions


def apply_actions(
    instance: DagsterInstance,
    run: DagsterRun,
    actions: Sequence[Action],
    workspace: Callable[[], BaseWorkspaceRequestContext],
    logger: logging.Logger,
    alerts: AlertSettings | None = None,
) -> None:
    """``apply_due`` for one run; raises what stopped its actions."""
    for _, _, error in apply_due(instance, [(run, actions)], workspace, logger, alerts):
        if error is not None:
            raise error


def _apply(
    instance: DagsterInstance,
    run: DagsterRun,
    actions: Sequence[Action],
    workspace: Callable[[], BaseWorkspaceRequestContext],
    logger: logging.Logger,
    alerts: AlertSettings | None,
) -> None:
    for action in actions:
        log_action(logger, run, action)
        if isinstance(action, Notice):
            notice(instance, run, action)
        elif isinstance(action, FailRun):
            fail(instance, run, action, logger)
        elif isinstance(action, CancelRun):
            message = action.message
            if action.debug_info:
                message = _with_debug_info(instance, run, message, logger)
            instance.add_run_tags(run.run_id, {c.REASON_TAG: action.reason})
            instance.report_run_canceled(run, message)
        elif isinstance(action, TerminateAndFail):
            terminate_and_fail(instance, run, action)
        elif isinstance(action, ResumeRun):
            resume(instance, run, action, workspace)
        alert = getattr(action, "alert", None)  # notices, crashes: once the action is applied
        if alert is not None:
            send_alert(alerts or AlertSettings(), alert, logger)


def resume(
    instance: DagsterInstance,
    run: DagsterRun,
    action: ResumeRun,
    workspace: Callable[[], BaseWorkspaceRequestContext],
) -> None:
    """Tags first (the cause, an uncounted attempt, raised memory: a daemon stopped before the
    resume writes the same values again), then the events, then the new worker."""
    if action.kill_first:
        instance.run_launcher.kill_worker(run)  # type: ignore[attr-defined]
    if action.tags:
        instance.add_run_tags(run.run_id, dict(action.tags))
    if action.note:
        instance.report_engine_event(action.note, run)
    instance.report_engine_event(action.message, run)
    instance.resume_run(run.run_id, workspace(), action.attempt)


def log_action(logger: logging.Logger, run: DagsterRun, action: Action) -> None:
    """One line per action; with ``dagster-daemon run --log-format json`` its fields are keys
    of the JSON object (run_id, job_name, action, reason, cause, limit, observed)."""
    kind, reason, cause = action_labels(action)
    limit, observed = getattr(action, "limit", None), getattr(action, "observed", None)
    fields = {
        "run_id": run.run_id,
        "job_name": run.job_name,
        "action": kind,
        "reason": reason,
        "cause": cause or None,
        "limit": limit,
        "observed": round(observed, 3) if observed is not None else None,
    }
    shown = f", cause {cause}" if cause else ""
    shown += "".join(f", {k} {fields[k]:g}" for k in ("limit", "observed") if fields[k] is not None)
    logger.info(
        "Run %s (%s): %s, reason %s%s", run.run_id, run.job_name, kind, reason, shown, extra=fields
    )


def notice(instance: DagsterInstance, run: DagsterRun, action: Notice) -> None:
    event = DagsterEvent(
        event_type_value=DagsterEventType.ENGINE_EVENT.value,
        job_name=run.job_name,
        message=action.message,
        event_specific_data=EngineEventData({}),
    )
    instance.report_dagster_event(event, run_id=run.run_id, log_level=action.level)
    instance.add_run_tags(run.run_id, {action.tag: action.value})


def fail(
    instance: DagsterInstance, run: DagsterRun, action: FailRun, logger: logging.Logger
) -> None:
    message = action.message
    if action.debug_info:
        message = _with_debug_info(instance, run, message, logger, action.container_logs)
    tags = {c.REASON_TAG: action.reason}
    if action.cause:
        tags[c.CRASH_CAUSE_TAG] = action.cause
    instance.add_run_tags(run.run_id, tags)
    if action.terminate_first:
        _terminate(instance, run, logger)
    current = instance.get_run_by_id(run.run_id) or run
    if current.is_finished:  # the worker ended the run itself on termination
        return
    failure = JobFailureData(error=None, failure_reason=action.failure_reason)
    instance.report_run_failed(current, message, failure if action.failure_reason else None)


def terminate_and_fail(
    instance: DagsterInstance, run: DagsterRun, action: TerminateAndFail
) -> None:
    """Dagster's max-runtime sequence, message for message."""
    instance.add_run_tags(run.run_id, {c.REASON_TAG: action.reason})
    instance.report_run_canceling(run, message=action.canceling_message)
    try:
        if instance.run_launcher.terminate(run_id=run.run_id):
            instance.report_run_failed(run, action.failure_message)
    except Exception:
        instance.report_engine_event(
            c.TERMINATE_EXCEPTION_MESSAGE,
            job_name=run.job_name,
            run_id=run.run_id,
            engine_event_data=EngineEventData(
                error=serializable_error_info_from_exc_info(sys.exc_info())
            ),
        )
    current = instance.get_run_by_id(run.run_id)
    if current is not None and not current.is_finished:
        instance.report_run_failed(current, message=c.FORCE_FAILED_MESSAGE)


def _terminate(instance: DagsterInstance, run: DagsterRun, logger: logging.Logger) -> None:
    """Stop a worker that may still start late; a failure here does not stop the action."""
    try:
        instance.run_launcher.terminate(run_id=run.run_id)
    except Exception:
        logger.exception("Failed to terminate the run worker of run %s", run.run_id)
        instance.report_engine_event(
            "Exception while attempting to terminate the run worker.",
            run,
            EngineEventData(error=serializable_error_info_from_exc_info(sys.exc_info())),
        )


def _with_debug_info(
    instance: DagsterInstance,
    run: DagsterRun,
    message: str,
    logger: logging.Logger,
    container_logs: bool = True,
) -> str:
    try:
        info = worker_debug_info(instance.run_launcher, run, container_logs)
    except Exception:
        logger.exception("Failure fetching debug info for failed run worker")
        info = None
    return f"{message}\n{info}" if info else message
