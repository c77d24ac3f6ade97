"""The benchmark's run launcher (``harness``): the scripted test launcher, with a health check
that costs what a remote API call costs and issues no SQL (``k8s``: ``k8s_launcher.py``
beside it)."""

import threading
import time

from dagster import Bool, Field, Float
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

from dagster_run_monitor_tests.support.launchers import (
    HEALTH_TAG,
    TRANSIENT_TAG,
    ScriptedRunLauncher,
)

DEFAULT_LATENCY_SECONDS = 0.02  # about one Kubernetes API round trip


def latency_field() -> Field:
    """The ``latency_seconds`` config field of the benchmark's launchers."""
    return Field(Float, is_required=False, default_value=DEFAULT_LATENCY_SECONDS)


class CountedHealthChecks:
    """A mixin for Dagster's launchers: counts calls of their ``check_run_worker_health`` (the
    report's health checks)."""

    health_checks = 0
    _counting = threading.Lock()

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        with self._counting:
            self.health_checks += 1
        return super().check_run_worker_health(run)  # type: ignore[misc]


class LatencyRunLauncher(ScriptedRunLauncher):
    """``check_run_worker_health`` sleeps ``latency_seconds`` (the launcher's remote API call),
    then answers from the tags of the run it is given: unlike ``ScriptedRunLauncher`` it does
    not re-read the run from storage, so a health check issues no SQL. Resume, terminate and
    debug info are ``ScriptedRunLauncher``'s (``resume_run`` rewrites the health tag)."""

    def __init__(self, inst_data=None, can_resume: bool = True, latency_seconds: float = 0.02):
        super().__init__(inst_data=inst_data, can_resume=can_resume)
        self.latency_seconds = latency_seconds
        self._lock = threading.Lock()
        self.health_checks = 0  # calls of check_run_worker_health, for the report

    @classmethod
    def config_type(cls):
        return {
            "can_resume": Field(Bool, is_required=False, default_value=True),
            "latency_seconds": latency_field(),
        }

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        with self._lock:
            self.health_checks += 1
        if self.latency_seconds:
            time.sleep(self.latency_seconds)
        status = WorkerStatus(run.tags.get(HEALTH_TAG, WorkerStatus.RUNNING.value))
        return CheckRunHealthResult(
            status, msg=f"worker is {status.value.lower()}", transient=TRANSIENT_TAG in run.tags
        )
