"""Worker health checks, run concurrently, each with a time limit."""

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from dagster._core.launcher import RunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

from dagster_run_monitor.core.crash_cause import CrashCause, docker_cause
from dagster_run_monitor.core.model import Health
from dagster_run_monitor.integration.internals import docker_container
from dagster_run_monitor.launchers.docker.launcher import is_docker_launcher
from dagster_run_monitor.launchers.ecs import launcher as ecs_launcher
from dagster_run_monitor.launchers.ecs.launcher import is_ecs_launcher
from dagster_run_monitor.storage.answers import PassAnswers, answering

DOCKER_CONTAINER_ID_TAG = "docker/container_id"  # dagster_docker's DOCKER_CONTAINER_ID_TAG


class HealthChecks:
    """Health checks of runs' workers, ``threads`` at a time, started as runs are submitted
    (while the rest of the pass reads storage) and collected by ``results``.

    A check that raises or outlives ``timeout_seconds`` has no answer (``answered`` False):
    an API error or a hung call is no evidence that a worker died, so the run is checked
    again next pass. ``answers``: what the pass read for all runs, which the launcher's calls
    answer from (``answers``: resume counts, a list of Kubernetes Jobs). The threads are daemon
    threads: a check that hangs holds only its own thread, never this pass, the next one, or
    the process's exit; checks still queued when the batch's time is up (every thread hung)
    have no answer either. ``explain``: read why unhealthy workers died (``check_worker``)."""

    def __init__(
        self,
        launcher: RunLauncher,
        threads: int,
        timeout_seconds: float,
        answers: PassAnswers | None = None,
        explain: bool = True,
    ):
        self._launcher = launcher
        self._explain = explain
        self._answers = answers
        self._threads = max(1, threads)
        self._timeout = timeout_seconds
        self._queue: deque[DagsterRun] = deque()
        self._started: dict[str, float] = {}
        self._results: dict[str, Health] = {}
        self._pending: set[str] = set()
        self._running = 0
        self._submitted = 0
        self._began = time.monotonic()
        self._changed = threading.Condition()

    def submit(self, runs: Sequence[DagsterRun]) -> None:
        with self._changed:
            self._queue.extend(runs)
            self._pending.update(run.run_id for run in runs)
            self._submitted += len(runs)
            wanted = min(self._threads - self._running, len(self._queue))
            self._running += wanted
        for _ in range(wanted):
            threading.Thread(target=self._work, daemon=True, name="run_monitor_health").start()

    def _work(self) -> None:
        with answering(self._answers):
            self._check_queued()

    def _check_queued(self) -> None:
        while True:
            with self._changed:
                if not self._queue:
                    self._running -= 1
                    return
                run = self._queue.popleft()
                self._started[run.run_id] = time.monotonic()
            health = check_worker(self._launcher, run, self._explain)
            with self._changed:
                if run.run_id in self._pending:  # a late answer is ignored
                    self._pending.discard(run.run_id)
                    self._results[run.run_id] = health
                    self._changed.notify()

    def results(self) -> dict[str, Health]:
        """Every submitted run's result, once each has answered or run out of time."""
        rounds = 1 + math.ceil(self._submitted / self._threads)
        batch_deadline = self._began + self._timeout * rounds
        next_scan = 0.0
        with self._changed:
            while self._pending:
                self._changed.wait(0.1)
                now = time.monotonic()
                if now < next_scan:
                    continue
                next_scan = now + 0.1  # look for late checks ten times a second, not per answer
                for run_id in list(self._pending):
                    began = self._started.get(run_id)
                    if began is not None and now - began > self._timeout:
                        message = f"Health check did not answer within {self._timeout:g} seconds"
                    elif began is None and now > batch_deadline:
                        self._queue.clear()
                        message = "Health check could not start: every check thread was busy"
                    else:
                        continue
                    self._pending.discard(run_id)
                    waited = now - began if began is not None else 0.0
                    unknown = Health(WorkerStatus.UNKNOWN.value, message, False, False, waited)
                    self._results[run_id] = unknown
            return dict(self._results)


def check_worker(launcher: RunLauncher, run: DagsterRun, explain: bool = True) -> Health:
    """One health check, its errors as a result without an answer. ``explain``: the cause of
    an unhealthy worker's death (``with_cause``), and for Kubernetes a STARTING run whose pod
    cannot start."""
    began = time.monotonic()
    try:
        result = launcher.check_run_worker_health(run)
    except Exception as error:
        message = f"Health check raised {type(error).__name__}: {error}"
        return Health(WorkerStatus.UNKNOWN.value, message, False, False, time.monotonic() - began)
    health = Health(result.status.value, result.msg or "", bool(result.transient), True)
    if explain:
        health = with_cause(launcher, run, health)
    return replace(health, seconds=time.monotonic() - began)


def with_cause(launcher: RunLauncher, run: DagsterRun, health: Health) -> Health:
    """``health`` with why the worker died, from what its launcher can see: the pods of a
    ``K8sRunLauncher``'s Job, a ``DockerRunLauncher``'s container, an ``EcsRunLauncher``'s
    stopped task, or the launcher's own
    ``crash_cause(run)`` (``ProcessRunLauncher``, or yours). None otherwise, or if the read
    fails: the cause is ``unknown`` and the message is Dagster's, word for word."""
    from dagster_run_monitor.launchers.kubernetes import pods as k8s_pods

    if k8s_pods.is_k8s_launcher(launcher):
        return k8s_pods.with_pod_status(launcher, run, health)
    if health.healthy or not health.answered:
        return health
    try:
        cause = _launcher_cause(launcher, run, health)
    except Exception:
        cause = None
    return replace(health, cause=cause)


def _launcher_cause(launcher: RunLauncher, run: DagsterRun, health: Health) -> CrashCause | None:
    reader = getattr(launcher, "crash_cause", None)
    if callable(reader):
        return reader(run)
    if is_ecs_launcher(launcher):
        return ecs_launcher.crash_cause(launcher, run, health.transient)
    if is_docker_launcher(launcher):
        if DOCKER_CONTAINER_ID_TAG not in run.tags:
            return None
        container = docker_container(launcher, run)
        return docker_cause(container.attrs.get("State") if container is not None else None)
    return None
