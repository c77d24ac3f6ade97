"""Runs that failed because step workers died: the cause of each dead step worker in an event,
and, with ``step_retries``, a retry from failure as a new run of the run's group.

Each full pass finds the runs that failed since the previous one in the statement that reads
the runs in progress (``storage.runs``; a daemon starting looks back ``LOOKBACK_SECONDS``),
and only when there are some, their step events (one statement per 10,000 runs on
PostgreSQL), and, only for runs with a crashed step, the platform's view of those workers and
the run group. A decision is applied under the run's claim and remembered in the tag
``run_monitor/step_retry``, so several daemons, or a daemon killed mid-action, write it once.
A retry is found again through its parent (Dagster's own check), so a retry created by a daemon
that died before tagging the failed run is submitted, not doubled.
"""

import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from typing import Any

from dagster import DagsterInstance
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.events import EngineEventData, RunFailureReason
from dagster._core.execution.plan.resume_retry import ReexecutionStrategy
from dagster._core.execution.retries import auto_reexecution_should_retry_run
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG
from dagster._core.workspace.context import IWorkspaceProcessContext
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import (
    get_automatically_retried_run_if_exists,
    retry_run,
)

from dagster_run_monitor.alerts.sender import AlertSender
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.alert_settings import RESUMED
from dagster_run_monitor.core.crash_cause import OOM_KILLED
from dagster_run_monitor.core.heartbeats import STEP_WORKER_PREFIX
from dagster_run_monitor.core.model import Alert
from dagster_run_monitor.core.settings import MonitorSettings
from dagster_run_monitor.core.step_crashes import (
    FailedRun,
    StepVerdict,
    decide_failed_run,
)
from dagster_run_monitor.daemon.failed_runs import failed_run_facts, failed_step_crashed
from dagster_run_monitor.daemon.history import JobHistories
from dagster_run_monitor.storage.claims import claims
from dagster_run_monitor.storage.heartbeats import read_stacks

LOOKBACK_SECONDS = 3600.0  # a daemon starting looks at the runs that failed this long before
CLOCK_MARGIN_SECONDS = 5.0
MAX_TRIES = 3  # passes that try to retry a run before its error is left in the heartbeat
UNREACHABLE_SECONDS = 600.0  # how long a code server that cannot be reached is waited for


def keep_trying(error: BaseException, tries: int, first_failed_at: float, now: float) -> bool:
    """Whether a retry that raised is tried again next pass: ``MAX_TRIES`` passes in all, but
    while the code location cannot be reached (a lost host, a deploy: Dagster's own queue
    retries such launches), every pass for ``UNREACHABLE_SECONDS``."""
    if isinstance(error, DagsterUserCodeUnreachableError):
        return now - first_failed_at < UNREACHABLE_SECONDS
    return tries < MAX_TRIES


HELD_AT_MOST = 10_000  # failed runs kept through a pause, at most


class StepRetries:
    """One daemon's view of failed runs between its passes."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._waiting: dict[str, float] = {}  # run id -> when its retry's back-off ends
        self._held: dict[str, DagsterRun] = {}  # failed while the monitor was paused
        self._failures: dict[str, tuple[int, float]] = {}  # run id -> (failed passes, first)
        self.made: Counter[str] = Counter()  # retries made by cause, since the metrics took them

    def since(self, now: float) -> float:
        """The time after which runs that failed are new to this pass (then this pass's)."""
        since = self._since if self._since is not None else now - LOOKBACK_SECONDS
        self._since = now - CLOCK_MARGIN_SECONDS
        return since

    def run_pass(
        self,
        context: IWorkspaceProcessContext,
        settings: MonitorSettings,
        now: float,
        logger: logging.Logger,
        failed: Sequence[DagsterRun],
        hold: bool = False,
        alerts: AlertSender | None = None,
        histories: JobHistories | None = None,
    ) -> Iterator[tuple[str, BaseException | None]]:
        """Decide and apply for ``failed``, the runs that failed since the last pass (and those
        whose back-off ended), ``action_threads`` runs at a time under their claims; yields each
        run acted on and the error that stopped it.
        ``hold``: the monitor is paused or dry: keep them for the first pass that acts."""
        if hold:
            if len(self._held) < HELD_AT_MOST:
                self._held.update({run.run_id: run for run in failed})
            return
        instance = context.instance
        due_again = [i for i, at in self._waiting.items() if at <= now]
        for run_id in due_again:  # waiting again below if it still must
            del self._waiting[run_id]
        runs, self._held = {**self._held, **{run.run_id: run for run in failed}}, {}
        if due_again:
            runs.update({r.run_id: r for r in instance.get_runs(RunsFilter(run_ids=due_again))})
        undecided = [run for run in runs.values() if c.STEP_RETRY_TAG not in run.tags]
        facts = failed_run_facts(instance, undecided)
        if histories is not None and settings.oom_memory is not None:
            facts = _with_peaks(instance, settings, facts, runs, histories)
        due: list[tuple[FailedRun, StepVerdict]] = []
        for run in facts:
            verdict = decide_failed_run(run, settings, now)
            if verdict.wait_until is not None:
                self._waiting[run.run_id] = verdict.wait_until
            elif verdict.events or verdict.note:
                self._waiting.pop(run.run_id, None)
                due.append((run, verdict))
        stacks = _stacks(instance, [run.run_id for run, _ in due], logger)
        threads = max(1, settings.action_threads)
        with (
            claims(instance, [run.run_id for run, _ in due]) as held,
            ThreadPoolExecutor(threads, "run_monitor_step_retry") as pool,
        ):
            mine = [(run, verdict) for run, verdict in due if run.run_id in held]
            futures = {
                pool.submit(
                    apply_verdict,
                    context,
                    settings,
                    run,
                    verdict,
                    logger,
                    stacks.get(run.run_id),
                    alerts,
                ): run.run_id
                for run, verdict in mine
            }
            for future in as_completed(futures):
                run_id, error = futures[future], future.exception()
                if error is None and future.result() is not None:
                    self.made[future.result()] += 1
                if error is not None:  # one run's trouble never stops the others
                    tries, first = self._failures.pop(run_id, (0, now))
                    if keep_trying(error, tries + 1, first, now):
                        self._failures[run_id] = (tries + 1, first)
                        self._waiting[run_id] = now
                    else:
                        _give_up(instance, run_id, error, tries + 1, logger)
                else:
                    self._failures.pop(run_id, None)
                yield run_id, error


def _with_peaks(
    instance: DagsterInstance,
    settings: MonitorSettings,
    facts: Sequence[FailedRun],
    runs: Mapping[str, DagsterRun],
    histories: JobHistories,
) -> list[FailedRun]:
    """The runs with an OOM-killed step, with their jobs' usual peaks (an OOM kill's retry is
    sized from them)."""
    oom = {
        f.run_id: runs[f.run_id]
        for f in facts
        if any(cause.kind == OOM_KILLED for cause in f.causes.values())
    }
    if not oom:
        return list(facts)
    found = histories.for_runs(instance, settings.learned, oom)
    return [replace(f, peaks=found[f.run_id].peaks) if f.run_id in found else f for f in facts]


def apply_verdict(
    context: IWorkspaceProcessContext,
    settings: MonitorSettings,
    facts: FailedRun,
    verdict: StepVerdict,
    logger: logging.Logger,
    stacks: Mapping[str, str] | None = None,
    alerts: AlertSender | None = None,
) -> str | None:
    """Under the run's claim: the cause events (with the step workers' last stacks, where
    they beat), the retry (or the note), the decision tag. Returns the cause of the retry it
    made (None: none)."""
    instance = context.instance
    run = instance.get_run_by_id(facts.run_id)
    if run is None or c.STEP_RETRY_TAG in run.tags:
        return None  # decided by another daemon meanwhile
    group = instance.get_run_group(run.run_id)
    existing = get_automatically_retried_run_if_exists(
        instance, run, list(group[1]) if group else []
    )
    if existing is not None:  # a daemon died after creating it, or Dagster's daemon retried it
        logger.info("Run %s: its retry %s exists already", run.run_id, existing.run_id)
        if existing.status == DagsterRunStatus.NOT_STARTED:
            instance.submit_run(existing.run_id, context.create_request_context())
        ours = existing.tags.get(c.REASON_TAG) == c.REASON_STEP_CRASH
        # The decision its maker writes (the same value: a daemon that finds our retry before
        # its maker has tagged the failed run writes what the maker will), or "retried".
        decision = f"retry {existing.tags.get(c.RETRY_NUMBER_TAG)}" if ours else "retried"
        tags = {c.AUTO_RETRY_RUN_ID_TAG: existing.run_id, c.STEP_RETRY_TAG: decision}
        instance.add_run_tags(run.run_id, tags)
        return None
    if c.STEP_CAUSES_TAG not in run.tags:  # once, also when a retry is tried again
        for step_key, message in verdict.events:
            stack = (stacks or {}).get(f"{STEP_WORKER_PREFIX}{step_key}")
            if stack:
                message += f"\nThe step worker of '{step_key}' was last seen in:\n{stack}"
            instance.report_engine_event(message, run, step_key=step_key)
        instance.add_run_tags(run.run_id, {c.STEP_CAUSES_TAG: "written"})
    if verdict.retry is not None:
        new_run = create_retry(context, run, verdict.retry.tags, verdict.retry.run_config, logger)
        instance.report_engine_event(
            verdict.retry.message,
            run,
            engine_event_data=EngineEventData({"new run": _run_link(new_run.run_id)}),
        )
        instance.add_run_tags(
            run.run_id,
            {c.AUTO_RETRY_RUN_ID_TAG: new_run.run_id, c.STEP_RETRY_TAG: verdict.decision},
        )
        instance.report_engine_event(
            "Launched as an automatic retry",
            new_run,
            engine_event_data=EngineEventData({"failed run": _run_link(run.run_id)}),
        )
        instance.submit_run(new_run.run_id, context.create_request_context())
        logger.info("Run %s: %s (new run %s)", run.run_id, verdict.retry.message, new_run.run_id)
        if alerts is not None:
            message, cause = verdict.retry.message, verdict.retry.cause
            reason = c.REASON_STEP_CRASH
            alerts.send(
                Alert(run.run_id, run.job_name, RESUMED, message, cause=cause, reason=reason)
            )
        return verdict.retry.cause
    if verdict.note:
        instance.report_engine_event(verdict.note, run)
        logger.log(verdict.level, "Run %s: %s", run.run_id, verdict.note)
    instance.add_run_tags(run.run_id, {c.STEP_RETRY_TAG: verdict.decision})
    if owned_by_step_retries(settings, facts) and dagster_would_retry(instance, run):
        retry_run(instance.get_run_by_id(run.run_id) or run, context)  # Dagster's own retry
    return None


def _give_up(
    instance: DagsterInstance,
    run_id: str,
    error: BaseException,
    tries: int,
    logger: logging.Logger,
) -> None:
    """After the passes ``keep_trying`` allows: say so on the run, decide nothing more."""
    message = c.step_retry_gave_up_message(tries, f"{type(error).__name__}: {error}")
    try:
        run = instance.get_run_by_id(run_id)
        if run is not None and c.STEP_RETRY_TAG not in run.tags:
            instance.report_engine_event(message, run)
            instance.add_run_tags(run_id, {c.STEP_RETRY_TAG: "failed"})
    except Exception:
        logger.warning("Run %s: could not record the failed step retry", run_id, exc_info=True)


def _stacks(
    instance: DagsterInstance, run_ids: Sequence[str], logger: logging.Logger
) -> dict[str, dict[str, str]]:
    """The last stacks of the runs' workers (one statement); none if they cannot be read."""
    try:
        return read_stacks(instance, run_ids)
    except Exception:
        logger.warning("Could not read the step workers' stacks", exc_info=True)
        return {}


def owned_by_step_retries(settings: MonitorSettings, facts: FailedRun) -> bool:
    """Runs whose retry Dagster's run retries leave to the monitor (``instance``'s
    ``_should_retry_run``): step retries on, and a failed step crashed."""
    return settings.step_retries.enabled and bool(failed_step_crashed(facts.ends))


def dagster_would_retry(instance: DagsterInstance, run: DagsterRun) -> bool:
    """What Dagster's run retries would have decided for the run without the monitor."""
    if not instance.run_retries_enabled:
        return False
    reason = run.tags.get(RUN_FAILURE_REASON_TAG)
    return auto_reexecution_should_retry_run(
        instance, run, RunFailureReason(reason) if reason else None
    )


def create_retry(
    context: IWorkspaceProcessContext,
    run: DagsterRun,
    tags: Mapping[str, str],
    run_config: Mapping[str, Any] | None,
    logger: logging.Logger,
) -> DagsterRun:
    """A re-execution from failure of ``run``, as Dagster's run retries create it; with
    ``run_config`` where it validates (else the parent's, logged)."""
    instance = context.instance
    workspace = context.create_request_context()
    origin = run.remote_job_origin
    if origin is None:
        raise ValueError(f"Run {run.run_id} has no job origin: it cannot be re-executed.")
    repository = origin.repository_origin
    location = workspace.get_code_location(repository.code_location_origin.location_name)
    remote_job = location.get_job(
        JobSubsetSelector(
            location_name=repository.code_location_origin.location_name,
            repository_name=repository.repository_name,
            job_name=run.job_name,
            op_selection=run.op_selection,
            asset_selection=None if run.asset_selection is None else list(run.asset_selection),
            asset_check_selection=(
                None if run.asset_check_selection is None else list(run.asset_check_selection)
            ),
        )
    )

    def create(config: Mapping[str, Any] | None) -> DagsterRun:
        return instance.create_reexecuted_run(
            parent_run=run,
            request_context=workspace,
            code_location=location,
            remote_job=remote_job,
            strategy=ReexecutionStrategy.FROM_FAILURE,
            extra_tags=dict(tags),
            run_config=config,
            use_parent_run_tags=True,
        )

    if run_config is None:
        return create(None)
    try:
        return create(run_config)
    except Exception:
        logger.warning(
            "Run %s: the retry's changed run config was refused", run.run_id, exc_info=True
        )
        instance.report_engine_event(
            "The retry's run config with more memory was refused by the job's executor: retrying"
            " with the run's own run config.",
            run,
        )
        return create(None)


def _run_link(run_id: str) -> Any:
    from dagster import MetadataValue

    return MetadataValue.dagster_run(run_id)
