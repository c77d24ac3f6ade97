"""What a Kubernetes run worker's pods say, for Dagster's ``K8sRunLauncher``.

The launcher reads only the Job's status: a Job whose pod can never start (a missing
ConfigMap, an image that cannot be pulled) reads as active, so the run would wait for the
start timeout; and a failed Job says nothing of why its pod died. One pod list per run, only
for runs that need it (STARTING, or a worker already found unhealthy), tells both
(``crash_cause.k8s_cause`` reads it).
"""

import sys
from dataclasses import replace
from typing import Any

from dagster._core.launcher import RunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from dagster_run_monitor.core.crash_cause import CANNOT_START, k8s_cause, waiting_reason
from dagster_run_monitor.core.model import Health
from dagster_run_monitor.integration.internals import k8s_core_api, launcher_instance


def is_k8s_launcher(launcher: RunLauncher) -> bool:
    """A ``K8sRunLauncher`` (or a subclass); dagster_k8s is loaded wherever one exists."""
    module = sys.modules.get("dagster_k8s")
    return module is not None and isinstance(launcher, module.K8sRunLauncher)


def with_pod_status(launcher: RunLauncher, run: DagsterRun, health: Health) -> Health:
    """``health`` with the crash's cause from the worker's pods; FAILED if the run is STARTING
    and a container waits for something that will not come by itself. A pod list that fails
    leaves ``health`` as it is."""
    if health.healthy and run.status != DagsterRunStatus.STARTING:
        return health
    try:
        pods = _worker_pods(launcher, run)
    except Exception:
        return health
    if health.healthy:
        stuck = [pod for pod in pods if waiting_reason(pod) in CANNOT_START]
        if not stuck:
            return health
        message = "The run worker's pod cannot start"
        return replace(
            health, status=WorkerStatus.FAILED.value, message=message, cause=k8s_cause(stuck)
        )
    return replace(health, cause=k8s_cause(pods))


def _worker_pods(launcher: RunLauncher, run: DagsterRun) -> list[Any]:
    """The pods of the run's current worker Job, newest last (one API call)."""
    from dagster_k8s.job import get_job_name_from_run_id

    attempt = launcher_instance(launcher).count_resume_run_attempts(run.run_id)
    job_name = get_job_name_from_run_id(run.run_id, resume_attempt_number=attempt)
    namespace = launcher.get_container_context_for_run(run).namespace  # type: ignore[attr-defined]
    pods = (
        k8s_core_api(launcher)
        .list_namespaced_pod(namespace, label_selector=f"job-name={job_name}")
        .items
    )
    return sorted(pods, key=lambda pod: str(pod.metadata.creation_timestamp or ""))
