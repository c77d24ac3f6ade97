"""What a Kubernetes run worker's pods say, for Dagster's ``K8sRunLauncher``.

The launcher reads only the Job's status: a Job whose pod can never start (a missing
ConfigMap, an image that cannot be pulled) reads as active, so the run would wait for the
start timeout; and a failed Job says nothing of why its pod died. One pod list per run, only
for runs that need it (STARTING, or a worker already found unhealthy), tells both.
"""

import sys
from dataclasses import replace
from typing import Any

from dagster._core.launcher import RunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from dagster_run_monitor.internals import k8s_core_api, launcher_instance
from dagster_run_monitor.model import Health

# Container waiting reasons of a pod that will not start by itself. Unschedulable pods are
# not among them: a node may still come (an autoscaler); the start timeout covers them.
CANNOT_START = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "InvalidImageName",
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "RunContainerError",
    }
)


def is_k8s_launcher(launcher: RunLauncher) -> bool:
    """A ``K8sRunLauncher`` (or a subclass); dagster_k8s is loaded wherever one exists."""
    module = sys.modules.get("dagster_k8s")
    return module is not None and isinstance(launcher, module.K8sRunLauncher)


def with_pod_status(launcher: RunLauncher, run: DagsterRun, health: Health) -> Health:
    """``health`` with what the worker's pods say appended to its message; FAILED if the run
    is STARTING and a container waits for something that will not come by itself. A pod
    list that fails leaves ``health`` as it is."""
    if health.healthy and run.status != DagsterRunStatus.STARTING:
        return health
    try:
        pods = _worker_pods(launcher, run)
    except Exception:
        return health
    summaries = [summary for pod in pods if (summary := pod_summary(pod))]
    if not summaries:
        return health
    detail = "; ".join(summaries)
    stuck = [pod for pod in pods if waiting_reason(pod) in CANNOT_START]
    if health.healthy and stuck:
        return replace(health, status=WorkerStatus.FAILED.value, message=detail)
    if health.healthy:
        return health
    return replace(health, message=f"{health.message} ({detail})" if health.message else detail)


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


def waiting_reason(pod: Any) -> str | None:
    for status in _container_statuses(pod):
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason:
            return waiting.reason
    return None


def pod_summary(pod: Any) -> str:
    """``pod NAME: container 'dagster' terminated: OOMKilled, exit code 137`` and the like."""
    parts = []
    reason = getattr(pod.status, "reason", None)
    if reason:
        parts.append(f"{reason}: {pod.status.message}" if pod.status.message else reason)
    for status in _container_statuses(pod):
        state = status.state
        if state is None:
            continue
        if state.waiting is not None and state.waiting.reason:
            waiting = state.waiting
            text = f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason
            parts.append(f"container '{status.name}' waiting: {text}")
        elif state.terminated is not None:
            ended = state.terminated
            text = f"{ended.reason or 'terminated'}, exit code {ended.exit_code}"
            if ended.signal:
                text += f", signal {ended.signal}"
            parts.append(f"container '{status.name}' terminated: {text}")
    return f"pod {pod.metadata.name}: {', '.join(parts)}" if parts else ""


def _container_statuses(pod: Any) -> list[Any]:
    status = pod.status
    if status is None:
        return []
    return [*(status.init_container_statuses or []), *(status.container_statuses or [])]
