"""The daemon: one pass = observe, decide, act; then free concurrency slots like Dagster's."""

import time
from functools import cache

from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.workspace.context import IWorkspaceProcessContext
from dagster._daemon.daemon import DaemonIterator, IntervalDaemon
from dagster._daemon.utils import DaemonErrorCapture
from dagster._time import get_current_timestamp
from dagster._utils.error import SerializableErrorInfo

from dagster_run_monitor.actions import apply_due
from dagster_run_monitor.constants import DAEMON_TYPE
from dagster_run_monitor.facts import observe
from dagster_run_monitor.internals import concurrency_slots_iteration
from dagster_run_monitor.metrics import Metrics
from dagster_run_monitor.model import HEALTH_CHECKED_STATUSES, MONITORED_STATUSES, Action
from dagster_run_monitor.policy import decide, over_warning_threshold
from dagster_run_monitor.pooling import pool_postgres_connections
from dagster_run_monitor.runs import RunReader
from dagster_run_monitor.settings import MonitorSettings, read_settings


class RunMonitorDaemon(IntervalDaemon):
    """Replaces Dagster's MONITORING daemon when the instance is a run-monitor instance."""

    def __init__(self, settings: MonitorSettings, crash_check_interval: float | None = None):
        """``crash_check_interval``: where worker health checks are cheap (local processes),
        look for crashed workers this often between the full passes."""
        poll = settings.poll_interval_seconds
        super().__init__(interval_seconds=min(poll, crash_check_interval or poll))
        self._poll_interval = poll
        self._last_full_pass: float | None = None
        self._unhealthy_since: dict[str, float] = {}
        self._runs = RunReader()
        self._pooled = False
        self.metrics: Metrics | None = None
        if settings.metrics_port:
            self.metrics = Metrics()
            self.metrics.serve(settings.metrics_host, settings.metrics_port)

    @classmethod
    def daemon_type(cls) -> str:
        return DAEMON_TYPE

    @classmethod
    def from_instance(cls, instance: DagsterInstance) -> "RunMonitorDaemon":
        settings = read_settings(instance)
        fast = settings.can_check_health and getattr(
            instance.run_launcher, "health_check_interval_seconds", None
        )
        return cls(settings, crash_check_interval=fast or None)

    def run_iteration(self, workspace_process_context: IWorkspaceProcessContext) -> DaemonIterator:
        now = time.monotonic()
        if self._last_full_pass is None or now - self._last_full_pass >= self._poll_interval:
            self._last_full_pass = now
            yield from self.monitor_runs(workspace_process_context)
            free_slots = concurrency_slots_iteration()
            yield from free_slots(workspace_process_context, self._logger)
        else:
            yield from self.monitor_runs(workspace_process_context, crashes_only=True)

    def monitor_runs(
        self, context: IWorkspaceProcessContext, crashes_only: bool = False
    ) -> DaemonIterator:
        """One monitoring pass; ``crashes_only`` looks just at runs whose worker is unhealthy.
        Yields an error per run that could not be handled."""
        instance = context.instance
        settings = read_settings(instance)
        if not self._pooled:
            self._pooled = True
            pool_postgres_connections(instance, settings.storage_pool_size)
        began = time.monotonic()
        now = get_current_timestamp()
        statuses = HEALTH_CHECKED_STATUSES if crashes_only else MONITORED_STATUSES
        facts, runs = observe(
            instance, settings, now, self._unhealthy_since, statuses, crashes_only, self._runs
        )
        self._unhealthy_since = {
            f.run_id: f.unhealthy_since for f in facts if f.unhealthy_since is not None
        }
        unanswered = [f for f in facts if f.health is not None and not f.health.answered]
        if unanswered:  # one error a pass in the heartbeat, not one per run of an API outage
            first = unanswered[0]
            message = (
                f"{len(unanswered)} worker health check(s) had no answer; those runs are"
                f" checked again next pass (run {first.run_id}: {first.health.message})"
            )
            self._logger.warning(message)
            yield SerializableErrorInfo(message, stack=[], cls_name=None)
        if self.metrics is not None:
            over = None
            if not crashes_only:
                over = sum(over_warning_threshold(f, settings, now) for f in facts)
            self.metrics.observed(facts, over)
        if crashes_only:
            facts = [f for f in facts if f.health is not None and not f.health.healthy]
        workspace = cache(context.create_request_context)
        due: list[tuple[DagsterRun, list[Action]]] = []
        for run_facts in facts:
            try:
                actions = decide(run_facts, settings, now)
            except Exception as error:
                yield self._error(run_facts.run_id, error)
                continue
            if actions:
                due.append((runs[run_facts.run_id], actions))
        if settings.dry_run:
            for run, actions in due:
                for action in actions:
                    self._logger.info("DRY RUN: run %s would get %s", run.run_id, action)
            return
        applied = apply_due(
            instance, due, workspace, self._logger, settings.alerts, settings.action_threads, now
        )
        for run_id, actions, error in applied:  # runs are independent: an error stops its own
            if self.metrics is not None:
                self.metrics.applied(actions)
            yield None if error is None else self._error(run_id, error)
        if self.metrics is not None:
            self.metrics.passed("crashes" if crashes_only else "full", time.monotonic() - began)

    def _error(self, run_id: str, error: BaseException) -> SerializableErrorInfo:
        return DaemonErrorCapture.process_exception(
            exc_info=(type(error), error, error.__traceback__),
            logger=self._logger,
            log_message=f"Hit error while monitoring run {run_id}",
        )
