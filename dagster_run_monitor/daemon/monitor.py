"""The daemon: one pass = observe, decide, act; then free concurrency slots like Dagster's."""

import sys
import time
from functools import cache

from dagster import DagsterInstance
from dagster._core.workspace.context import IWorkspaceProcessContext
from dagster._daemon.daemon import DaemonIterator, IntervalDaemon
from dagster._daemon.utils import DaemonErrorCapture
from dagster._time import get_current_timestamp
from dagster._utils.error import SerializableErrorInfo

from dagster_run_monitor.alerts import incidents
from dagster_run_monitor.alerts.sender import AlertSender
from dagster_run_monitor.config.parse import read_settings
from dagster_run_monitor.core.constants import DAEMON_TYPE
from dagster_run_monitor.core.memory_use import workers_near_limit
from dagster_run_monitor.core.model import (
    HEALTH_CHECKED_STATUSES,
    MONITORED_STATUSES,
    Action,
    RunFacts,
    breaker_alert,
)
from dagster_run_monitor.core.policy import plan
from dagster_run_monitor.core.settings import MonitorSettings
from dagster_run_monitor.daemon.actions import apply_due
from dagster_run_monitor.daemon.heartbeats import HeartbeatSight
from dagster_run_monitor.daemon.history import JobHistories
from dagster_run_monitor.daemon.observe import observe
from dagster_run_monitor.daemon.pause import current_pause
from dagster_run_monitor.daemon.step_retries import StepRetries
from dagster_run_monitor.integration.internals import concurrency_slots_iteration
from dagster_run_monitor.launchers.docker.launcher import (
    is_docker_launcher,
    remember_docker_clients,
)
from dagster_run_monitor.launchers.ecs import launcher as ecs_launcher
from dagster_run_monitor.launchers.ecs.launcher import is_ecs_launcher
from dagster_run_monitor.launchers.kubernetes import launcher as k8s_launcher
from dagster_run_monitor.launchers.kubernetes.pods import is_k8s_launcher
from dagster_run_monitor.metrics import Metrics, NoMetrics
from dagster_run_monitor.storage.pooling import pool_postgres_connections
from dagster_run_monitor.storage.runs import RunReader
from dagster_run_monitor.storage.schema_checks import remember_schema_checks


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
        self._beats = HeartbeatSight()
        self._histories = JobHistories()
        self._step_retries = StepRetries()
        self._breaker_open = False
        self._prepared = False
        self._sender: AlertSender | None = None
        self.metrics: NoMetrics = NoMetrics()
        if settings.metrics_port:
            self.metrics = Metrics(poll)
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
        """One monitoring pass: observe, plan (pure), apply. ``crashes_only`` looks just at
        runs whose worker is unhealthy. Yields an error per run that could not be handled."""
        instance, settings = context.instance, self._settings(context.instance)
        began, now = time.monotonic(), get_current_timestamp()
        statuses = HEALTH_CHECKED_STATUSES if crashes_only else MONITORED_STATUSES
        if not crashes_only:  # the same statement finds the runs that failed since
            self._runs.failed_since = self._step_retries.since(now)
        try:
            facts = observe(
                instance,
                settings,
                now,
                self._unhealthy_since,
                statuses,
                crashes_only,
                self._runs,
                self._beats,
                self._histories,
            )
        except Exception:
            self._beats.interrupted = True  # beats unchanged since are not stale
            raise
        decided = plan(facts, settings, now, crashes_only, self.metrics.enabled)
        self.metrics.breaker(decided.breaker is not None)
        if decided.breaker:
            self._logger.warning(decided.breaker)
            yield SerializableErrorInfo(decided.breaker, stack=[], cls_name=None)
            if not self._breaker_open and not settings.dry_run:  # an alert even when paused
                self._alerts(instance, settings).send(breaker_alert(decided.breaker))
        self._breaker_open = decided.breaker is not None
        self._unhealthy_since = decided.unhealthy_since
        self.metrics.observed(facts, decided.over_warning_threshold, decided.slower_than_usual)
        if not crashes_only:
            fraction = settings.memory.warn_fraction
            self.metrics.near_memory_limit(workers_near_limit(facts, fraction))
        if self._histories.error and not crashes_only:
            self._logger.warning(self._histories.error)
            yield SerializableErrorInfo(self._histories.error, stack=[], cls_name=None)
        if decided.unanswered:
            self._logger.warning(decided.unanswered)
            yield SerializableErrorInfo(decided.unanswered, stack=[], cls_name=None)
        for run_id, error in decided.errors:
            yield self._error(run_id, error)
        seen = {f.run_id: f for f in facts}
        paused = current_pause(instance, now)
        self.metrics.paused(paused is not None)
        if paused is not None:  # observe only; the first pass after it judges every run afresh
            held = paused.holding(sum(len(actions) for _, actions in decided.due), now)
            self._logger.warning(held)
            yield SerializableErrorInfo(held, stack=[], cls_name=None)
        else:
            due = [(seen[i], a) for i, a in decided.due]
            yield from self._apply(context, settings, due, now)
        alerts = self._alerts(instance, settings)
        active = not (settings.dry_run or paused)
        if not crashes_only and not settings.dry_run:  # runs whose step workers died
            failed, hold = self._runs.take_failed(), paused is not None
            retries = self._step_retries.run_pass(
                context, settings, now, self._logger, failed, hold, alerts, self._histories
            )
            for run_id, error in retries:
                yield None if error is None else self._error(run_id, error)
            self.metrics.retried(self._step_retries.made)
            self._step_retries.made.clear()
        if settings.alerts.pagerduty is not None and not crashes_only and active:
            for run_id, subjects in incidents.over(instance, facts).items():
                alerts.resolve(run_id, subjects)
        for failure in alerts.flush():  # the heartbeat shows them
            yield SerializableErrorInfo(failure, stack=[], cls_name=None)
        self.metrics.alerts(*alerts.counts())
        self.metrics.resumed_ended(self._runs.take_ended())
        self.metrics.passed("crashes" if crashes_only else "full", time.monotonic() - began)

    def _alerts(self, instance: DagsterInstance, settings: MonitorSettings) -> AlertSender:
        """The alert sender of the current settings (made again when they change)."""
        if self._sender is None or self._sender.settings != settings.alerts:
            self._sender = AlertSender(settings.alerts, self._logger, instance)
        return self._sender

    def _settings(self, instance: DagsterInstance) -> MonitorSettings:
        """The block, validated; on the first pass the daemon's Postgres connections pooled,
        Dagster's schema checks kept once True (``schema_checks``), a ``K8sRunLauncher``'s
        container contexts and Job reads (``launchers.kubernetes``) and a ``DockerRunLauncher``'s
        docker clients (``launchers.docker``) remembered: each a saving, none needed, so one
        that fails is logged and the pass goes on."""
        settings = read_settings(instance)
        if not self._prepared:
            self._prepared = True
            steps = [
                lambda: pool_postgres_connections(
                    instance, settings.storage_pool_size, settings.action_threads
                ),
                lambda: remember_schema_checks(instance),
            ]
            launcher = instance.run_launcher
            if is_k8s_launcher(launcher):
                steps.append(lambda: k8s_launcher.prepare(launcher))
            if is_ecs_launcher(launcher):
                steps.append(lambda: ecs_launcher.prepare(launcher))
            if is_docker_launcher(launcher):
                threads = settings.health_check_threads
                steps.append(lambda: remember_docker_clients(launcher, threads))
            for step in steps:
                try:
                    step()
                except Exception:
                    self._logger.warning("Run monitor start-up step failed", exc_info=True)
        return settings

    def _apply(
        self,
        context: IWorkspaceProcessContext,
        settings: MonitorSettings,
        due: list[tuple[RunFacts, list[Action]]],
        now: float,
    ) -> DaemonIterator:
        if settings.dry_run:
            for run, actions in due:
                for action in actions:
                    self._logger.info("DRY RUN: run %s would get %s", run.run_id, action)
            return
        workspace = cache(context.create_request_context)
        alerts = self._alerts(context.instance, settings)
        applied = apply_due(context.instance, due, workspace, self._logger, settings, now, alerts)
        for run_id, actions, error in applied:  # runs are independent: an error stops its own
            self.metrics.applied(actions)
            yield None if error is None else self._error(run_id, error)

    def _error(self, run_id: str, error: BaseException) -> SerializableErrorInfo:
        """Dagster's capture of the error, logged with its traceback: the capture logs the
        exception being handled, so it is called while ``error`` is."""
        try:
            raise error
        except BaseException:
            return DaemonErrorCapture.process_exception(
                exc_info=sys.exc_info(),
                logger=self._logger,
                log_message=f"Hit error while monitoring run {run_id}",
            )
