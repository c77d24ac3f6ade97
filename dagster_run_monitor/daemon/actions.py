"""Act: apply decided actions through Dagster's instance API, each visible in the event log."""

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed

from dagster import DagsterInstance
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData, JobFailureData
from dagster._core.launcher import RunLauncher
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus, RunRecord, RunsFilter
from dagster._core.workspace.context import BaseWorkspaceRequestContext
from dagster._time import get_current_timestamp
from dagster._utils.error import serializable_error_info_from_exc_info

from dagster_run_monitor.alerts.sender import AlertSender
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.crashes import fails_for_a_crash
from dagster_run_monitor.core.model import (
    Action,
    CancelRun,
    FailRun,
    Notice,
    ResumeRun,
    TerminateAndFail,
    action_alert,
    with_where,
)
from dagster_run_monitor.core.policy import Observed, resume_of, still_due
from dagster_run_monitor.core.settings import MonitorSettings
from dagster_run_monitor.daemon import resumes
from dagster_run_monitor.daemon.debug_info import worker_debug_info
from dagster_run_monitor.daemon.heartbeats import where_workers_were
from dagster_run_monitor.integration.internals import docker_container
from dagster_run_monitor.launchers.docker.launcher import is_docker_launcher
from dagster_run_monitor.launchers.kubernetes import launcher as k8s_launcher
from dagster_run_monitor.launchers.kubernetes.pods import is_k8s_launcher
from dagster_run_monitor.metrics import action_labels
from dagster_run_monitor.storage.claims import claims
from dagster_run_monitor.storage.eventlog import resume_history
from dagster_run_monitor.storage.heartbeats import take_over

CLAIM_BATCH = 500  # runs claimed and re-checked together (bounds open lock files)
Applied = tuple[str, Sequence[Action], BaseException | None]  # run id, actions, what stopped them


def apply_due(
    instance: DagsterInstance,
    due: Sequence[tuple[Observed, Sequence[Action]]],
    workspace: Callable[[], BaseWorkspaceRequestContext],
    logger: logging.Logger,
    settings: MonitorSettings | None = None,
    observed_at: float | None = None,
    alerts: AlertSender | None = None,
) -> Iterator[Applied]:
    """Apply each run's actions, ``settings.action_threads`` runs at a time, to the run as
    re-read under its claim, unless another daemon holds the claim or the run changed since it
    was observed (``policy.still_due``). ``observed_at``: the pass's start. Per batch of runs,
    claims, re-reads and re-checks take a few queries, and the tags and events written before
    the resumes a few statements (``bulk_writes``). Alerts go to ``alerts.sender`` (by default a
    sender of the settings' sinks, flushed at the end). Yields, per run acted on, its id, the
    actions applied and the error that stopped them (None if none did)."""
    settings = settings or MonitorSettings()
    if alerts is None:
        sender = AlertSender(settings.alerts, logger, instance)
        yield from apply_due(instance, due, workspace, logger, settings, observed_at, sender)
        sender.flush()
        return
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
                {r.dagster_run.run_id: r for r in instance.get_run_records(RunsFilter(run_ids=ids))}
                if ids
                else {}
            )
            history = resume_history(
                storage, [s.run_id for s, actions in mine if about_a_crash(actions)]
            )
            todo: list[tuple[RunRecord, Sequence[Action]]] = []
            for seen, actions in mine:
                done, last_resume_at = history.get(seen.run_id, (0, None))
                record = current.get(seen.run_id)
                run = record.dagster_run if record is not None else None
                now_due = still_due(seen.status, actions, run, done, last_resume_at, observed_at)
                if record is None or now_due is None:
                    logger.info("Run %s changed during the pass; leaving it for now.", seen.run_id)
                else:
                    todo.append((record, now_due))
            beating = frozenset(s.run_id for s, _ in mine if getattr(s, "workers", ()))
            todo = _with_stacks(instance, todo, {seen.run_id: seen for seen, _ in mine}, logger)
            counts = {run_id: done for run_id, (done, _) in history.items()}
            crashed = [
                r.dagster_run
                for r, actions in todo
                if resumes.batched(actions) or _launcher_saw_crash(actions)
            ]
            healthy = resumes.healthy_again(instance, crashed, settings, counts, logger)
            for run_id in healthy:
                yield run_id, [], None
            todo = [(r, actions) for r, actions in todo if r.dagster_run.run_id not in healthy]
            yield from _act(instance, todo, workspace, logger, settings, alerts, beating)


def _launcher_saw_crash(actions: Sequence[Action]) -> bool:
    """A failure for a crash the launcher saw: its health, checked again, may have changed (a
    worker lost by its heartbeats is not: the launcher may see it running)."""
    return any(isinstance(a, FailRun) and a.reason == c.REASON_WORKER_CRASH for a in actions)


def about_a_crash(actions: Sequence[Action]) -> bool:
    """A resume, or a crash's failure: both checked again against resumes since the pass."""
    return resume_of(actions) is not None or fails_for_a_crash(actions)


def _with_stacks(
    instance: DagsterInstance,
    todo: list[tuple[RunRecord, Sequence[Action]]],
    seen: dict[str, Observed],
    logger: logging.Logger,
) -> list[tuple[RunRecord, Sequence[Action]]]:
    """The actions on STARTED runs with where their workers were last seen (their stacks, from
    their heartbeats) in their messages; as they were if the stacks cannot be read."""
    workers = {
        r.dagster_run.run_id: sights
        for r, _ in todo
        if r.dagster_run.status == DagsterRunStatus.STARTED
        and (sights := getattr(seen.get(r.dagster_run.run_id), "workers", ()))
    }
    if not workers:
        return todo
    try:
        where = where_workers_were(instance, workers, get_current_timestamp())
    except Exception:
        logger.warning("Could not read the workers' stacks", exc_info=True)
        return todo
    return [
        (r, [with_where(a, where[r.dagster_run.run_id]) for a in actions])
        if r.dagster_run.run_id in where
        else (r, actions)
        for r, actions in todo
    ]


def _act(
    instance: DagsterInstance,
    todo: Sequence[tuple[RunRecord, Sequence[Action]]],
    workspace: Callable[[], BaseWorkspaceRequestContext],
    logger: logging.Logger,
    settings: MonitorSettings,
    alerts: AlertSender,
    beating: frozenset[str] = frozenset(),
) -> Iterator[Applied]:
    """The runs' actions on ``settings.action_threads`` threads; the resumes' tags written
    for all of them, then their events and launches a chunk of that many runs at a time
    (``resumes``)."""
    threads = max(1, settings.action_threads)
    resuming = [(r, resume) for r, actions in todo if (resume := resumes.batched(actions))]
    others = [(r, actions) for r, actions in todo if not resumes.batched(actions)]
    with ThreadPoolExecutor(threads, "run_monitor_action") as pool:

        def submit(record: RunRecord, actions: Sequence[Action], prepared=None) -> Future:
            args = (instance, record, actions, workspace, logger, alerts, beating, prepared)
            return pool.submit(_apply, *args)

        futures = {submit(r, actions): r.dagster_run.run_id for r, actions in others}
        try:
            tagged = resumes.tag(instance, resuming)
        except Exception as error:  # nothing launched: the next pass tries again
            yield from ((r.dagster_run.run_id, [], error) for r, _ in resuming)
            resuming, tagged = [], {}
        actions_of = {r.dagster_run.run_id: actions for r, actions in todo}
        for start in range(0, len(resuming), threads):
            chunk = [
                (r, tagged[r.dagster_run.run_id], resume)
                for r, resume in resuming[start : start + threads]
            ]
            try:
                resumes.announce(instance, [(run, resume) for _, run, resume in chunk])
            except Exception as error:
                yield from ((r.dagster_run.run_id, [], error) for r, _, _ in chunk)
                continue
            launched = {submit(r, actions_of[run.run_id], run): run.run_id for r, run, _ in chunk}
            yield from _results(launched)  # at most a chunk between its events and launches
        yield from _results(futures)


def _results(futures: dict[Future, str]) -> Iterator[Applied]:
    for future in as_completed(futures):
        error = future.exception()
        yield futures[future], (future.result() if error is None else []), error


def apply_actions(
    instance: DagsterInstance,
    run: DagsterRun,
    actions: Sequence[Action],
    workspace: Callable[[], BaseWorkspaceRequestContext],
    logger: logging.Logger,
    settings: MonitorSettings | None = None,
) -> None:
    """``apply_due`` for one run; raises what stopped its actions."""
    for _, _, error in apply_due(instance, [(run, actions)], workspace, logger, settings):
        if error is not None:
            raise error


def _apply(
    instance: DagsterInstance,
    record: RunRecord,
    actions: Sequence[Action],
    workspace: Callable[[], BaseWorkspaceRequestContext],
    logger: logging.Logger,
    alerts: AlertSender,
    beating: frozenset[str] = frozenset(),
    prepared: DagsterRun | None = None,
) -> Sequence[Action]:
    """One run's actions, in order. ``prepared``: the run as its resume's tags left it, if
    they and its events are written (``resumes.tag``, ``resumes.announce``)."""
    run = record.dagster_run
    for action in actions:
        log_action(logger, run, action)
        if isinstance(action, Notice):
            notice(instance, run, action)
        elif isinstance(action, FailRun):
            # its workers' rows fenced (before the failure, where no worker is terminated
            # first): one that is still running, or comes back, stops at its next beat
            if not action.terminate_first:
                end_rows(instance, run, beating)
            fail(instance, run, action, logger)
            if action.terminate_first:
                end_rows(instance, run, beating)
        elif isinstance(action, CancelRun):
            message = action.message
            if action.debug_info:
                message = _with_debug_info(instance, run, message, logger)
            instance.add_run_tags(run.run_id, {c.REASON_TAG: action.reason})
            end_rows(instance, run, beating)
            instance.report_run_canceled(run, message)
        elif isinstance(action, TerminateAndFail):
            terminate_and_fail(instance, run, action)
            end_rows(instance, run, beating)  # a worker the launcher could not stop
        elif isinstance(action, ResumeRun):
            if prepared is None:  # a stalled or lost run: its worker stopped first
                if action.kill_first:
                    stop_worker(instance.run_launcher, run)
                prepared = resumes.tag(instance, [(record, action)])[run.run_id]
                resumes.announce(instance, [(prepared, action)])
            if run.run_id in beating:  # the old worker's beats go; it stops if it returns
                take_over(instance, run.run_id, get_current_timestamp())
            resumes.launch(instance, prepared, workspace(), action.attempt)
        alert = action_alert(run.run_id, run.job_name, action)  # once it is applied
        if alert is not None:
            alerts.send(alert)
    return actions


def end_rows(instance: DagsterInstance, run: DagsterRun, beating: frozenset[str]) -> None:
    """The monitor ends the run: every worker's row is fenced (``take_over``)."""
    if run.run_id in beating:
        take_over(instance, run.run_id, get_current_timestamp(), ended=True)


def stop_worker(launcher: RunLauncher, run: DagsterRun) -> None:
    """Stop the run's worker without canceling the run, where the launcher can:
    ``ProcessRunLauncher.kill_worker``, a Kubernetes Job deleted, a Docker container killed.
    Elsewhere the worker stops itself when it finds its run taken over (``worker.watcher``)."""
    kill = getattr(launcher, "kill_worker", None)
    if kill is not None:
        kill(run)
    elif is_k8s_launcher(launcher):
        k8s_launcher.stop_worker(launcher, run)
    elif is_docker_launcher(launcher):
        container = docker_container(launcher, run)
        if container is not None:
            container.kill()


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
    """Dagster's max-runtime sequence, message for message, with one end: the worker it stops
    writes no RUN_CANCELED (``FAILING_TAG``), and a run that ended meanwhile is left as is."""
    tags = {c.REASON_TAG: action.reason, c.FAILING_TAG: action.reason, **action.tags}
    instance.add_run_tags(run.run_id, tags)
    instance.report_run_canceling(run, message=action.canceling_message)
    try:
        if instance.run_launcher.terminate(run_id=run.run_id):
            current = instance.get_run_by_id(run.run_id)
            if current is not None and not current.is_finished:
                instance.report_run_failed(current, action.failure_message)
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
