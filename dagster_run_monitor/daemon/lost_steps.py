"""Whether a step worker whose heartbeats stopped is really gone, from where it ran: its
process on this host no longer runs, or its step Job has no live pod. Asked only for step
workers already lost by their heartbeats (rare), one check each; an answer that cannot be had
is no evidence (the run then gets a warning only)."""

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun

from dagster_run_monitor.core.crash_cause import pod_live
from dagster_run_monitor.core.heartbeats import STEP_WORKER_PREFIX, Sight, lost, run_worker
from dagster_run_monitor.launchers.process.processes import hostname, is_alive

LOGGER = logging.getLogger(__name__)


def lost_step_workers(workers: Iterable[Sight], now: float, timeout: float) -> list[Sight]:
    """The stale step workers of a run whose run worker still beats."""
    workers = tuple(workers)
    beating = run_worker(workers)
    if beating is None or lost(beating, now, timeout):
        return []
    return [
        s
        for s in workers
        if s is not beating and not s.beat.ended and lost(s, now, timeout) is not None
    ]


def steps_gone(
    instance: DagsterInstance,
    runs: Mapping[str, DagsterRun],
    workers: Mapping[str, tuple[Sight, ...]],
    now: float,
    timeout: float,
) -> dict[str, frozenset[str]]:
    """Per run, the steps whose lost worker the platform shows gone."""
    gone: dict[str, frozenset[str]] = {}
    for run_id, sights in workers.items():
        run = runs.get(run_id)
        if run is None:
            continue
        found = set()
        for sight in lost_step_workers(sights, now, timeout):
            step = sight.beat.worker[len(STEP_WORKER_PREFIX) :]
            try:
                if _gone(instance, run, step, sight):
                    found.add(step)
            except Exception as error:  # no answer: no evidence
                LOGGER.warning("Could not tell whether step %s's worker is gone: %s", step, error)
        if found:
            gone[run_id] = frozenset(found)
    return gone


def _gone(instance: DagsterInstance, run: DagsterRun, step: str, sight: Sight) -> bool:
    from dagster_run_monitor.launchers.kubernetes.pods import is_k8s_launcher

    launcher = instance.run_launcher
    if is_k8s_launcher(launcher):
        pods = _step_pods(launcher, run, step)
        # A step that ran in a step Job: its pods tell, wherever its beats came from (a pod's
        # pid is in the pod's own PID namespace, and a pod on the host's network has the host's
        # name: the daemon's, when it runs on that node or on that network too).
        if pods or sight.beat.host != hostname():
            return not any(pod_live(pod) for pod in pods)
    return sight.beat.host == hostname() and not is_alive(sight.beat.pid)


def _step_pods(launcher: Any, run: DagsterRun, step: str) -> list[Any]:
    """The pods of the step's Jobs (k8s_job_executor labels them with the step key)."""
    from dagster_k8s.utils import sanitize_k8s_label

    from dagster_run_monitor.integration.internals import k8s_core_api

    namespace = launcher.get_container_context_for_run(run).namespace
    selector = f"dagster/run-id={run.run_id},dagster/op={sanitize_k8s_label(step)}"
    return k8s_core_api(launcher).list_namespaced_pod(namespace, label_selector=selector).items
