"""The daemon: one pass = observe, decide, act; then free concurrency slots like Dagster's."""

import sys
import time
from functools import cache

from dagster import DagsterInstance
from dagster._core.workspace.context import IWorkspaceProcessContext
from dagster._daemon.daemon import DaemonIterator, IntervalDaemon
from dagster._daemon.monitoring import execute_concurrency_slots_iteration
from dagster._daemon.utils import DaemonErrorCapture
from dagster._time import get_current_timestamp

from dagster_run_monitor.actions import apply_actions
from dagster_run_monitor.constants import DAEMON_TYPE
from dagster_run_monitor.facts import HEALTH_CHECKED_STATUSES, MONITORED_STATUSES, observe
from dagster_run_monitor.instance import read_settings
from dagster_run_monitor.policy import decide
from dagster_run_monitor.settings import MonitorSettings


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
            yield from execute_concurrency_slots_iteration(workspace_process_context, self._logger)
        else:
            yield from self.monitor_runs(workspace_process_context, crashes_only=True)

    def monitor_runs(
        self, context: IWorkspaceProcessContext, crashes_only: bool = False
    ) -> DaemonIterator:
        """One monitoring pass; ``crashes_only`` looks just at runs whose worker is unhealthy.
        Yields an error per run that could not be handled."""
        instance = context.instance
        settings = read_settings(instance)
        now = get_current_timestamp()
        statuses = HEALTH_CHECKED_STATUSES if crashes_only else MONITORED_STATUSES
        facts, runs = observe(
            instance, settings, now, self._unhealthy_since, statuses, crashes_only
        )
        self._unhealthy_since = {
            f.run_id: f.unhealthy_since for f in facts if f.unhealthy_since is not None
        }
        if crashes_only:
            facts = [f for f in facts if f.health is not None and not f.health.healthy]
        workspace = cache(context.create_request_context)
        for run_facts in facts:
            try:
                actions = decide(run_facts, settings, now)
                if actions and settings.dry_run:
                    for action in actions:
                        self._logger.info("DRY RUN: run %s would get %s", run_facts.run_id, action)
                elif actions:
                    run = runs[run_facts.run_id]
                    apply_actions(instance, run, actions, workspace, self._logger, settings.alerts)
            except Exception:
                yield DaemonErrorCapture.process_exception(
                    exc_info=sys.exc_info(),
                    logger=self._logger,
                    log_message=f"Hit error while monitoring run {run_facts.run_id}",
                )
            else:
                yield None
