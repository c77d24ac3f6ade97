"""Why step workers died, read from where they ran: a process's own messages, a step Job's
pods (one list per namespace and 100 runs for a pass), a step container's state, a step
task's document (one ``describe_tasks`` per 100 tasks). A platform that cannot be read leaves
the cause ``unknown``, with what the messages say; it never fails the pass."""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun, RunsFilter

from dagster_run_monitor.core.constants import MEMORY_TAG
from dagster_run_monitor.core.crash_cause import (
    OOM_KILLED,
    RUNNING,
    UNKNOWN,
    UNREPORTED,
    CrashCause,
    docker_cause,
    ecs_cause,
    k8s_step_cause,
)
from dagster_run_monitor.core.heartbeats import STEP_WORKER_PREFIX
from dagster_run_monitor.core.memory import format_memory
from dagster_run_monitor.core.memory_sizing import tagged_peaks
from dagster_run_monitor.core.step_crashes import (
    CRASH,
    DOCKER,
    DOCKER_CONTAINER,
    ECS,
    ECS_TASK,
    INTERRUPT,
    K8S,
    K8S_JOB,
    MULTIPROCESS,
    UNFINISHED,
    FailedRun,
    StepEnd,
    executor_of,
    kind_of,
    message_cause,
    worker_name,
)
from dagster_run_monitor.launchers.process.processes import hostname, is_alive
from dagster_run_monitor.storage.heartbeats import live_workers, read_peaks

LOGGER = logging.getLogger(__name__)
ECS_BATCH = 100  # tasks per describe_tasks
ECS_STOPPED = frozenset({"STOPPED", "DEPROVISIONING", "STOPPING", "DELETED"})
K8S_RUNS_PER_LIST = 100  # run ids in one pod list's selector (about 3.7 KB of URL)


def platform_causes(
    instance: DagsterInstance, runs: Mapping[str, DagsterRun], facts: Sequence[FailedRun]
) -> dict[str, dict[int, CrashCause]]:
    """Per run, the cause of each crashed attempt (by its index in ``ends``)."""
    crashed = [
        (run, i, end)
        for run in facts
        for i, end in enumerate(run.ends)
        if kind_of(end) in (CRASH, INTERRUPT) and not end.canceling
    ]
    by_kind: dict[str, list[tuple[FailedRun, int, StepEnd]]] = {}
    for item in crashed:
        by_kind.setdefault(executor_of(item[2].worker), []).append(item)
    causes: dict[str, dict[int, CrashCause]] = {}
    readers = {
        K8S: _k8s_causes,
        DOCKER: _docker_causes,
        ECS: _ecs_causes,
        MULTIPROCESS: _multiprocess_causes,
    }
    for kind, items in by_kind.items():
        found: dict[tuple[str, int], CrashCause] = {}
        reader = readers.get(kind)
        if reader is not None:
            try:
                found = reader(instance, runs, items)
            except Exception as error:  # the messages still tell what they can
                LOGGER.warning("Reading the step workers' platform failed: %s", error)
        for run, i, end in items:
            cause = found.get((run.run_id, i)) or message_cause(end)
            if cause is None and end.cls_name == UNFINISHED:
                cause = _process_alive(end)
            causes.setdefault(run.run_id, {})[i] = cause or CrashCause(UNKNOWN, worker_name(end))
    return causes


def _process_alive(end: StepEnd) -> CrashCause | None:
    """A step process that never ended: ``running`` while it runs, or where this host cannot
    tell (another host: no evidence that it died)."""
    worker = end.worker
    if worker.get(K8S_JOB) or worker.get(DOCKER_CONTAINER) or worker.get(ECS_TASK):
        return None
    pid, ticks = int(worker.get("pid") or 0), worker.get("start_ticks")
    if worker.get("host", hostname()) != hostname():
        return CrashCause(RUNNING, f"process {pid} on host {worker.get('host')}, not this one")
    if pid and is_alive(pid, int(ticks) if ticks else None):
        return CrashCause(RUNNING, f"process {pid}")
    return CrashCause(UNKNOWN, f"process {pid} is gone") if pid else None


def _multiprocess_causes(
    instance: DagsterInstance, runs: Mapping[str, DagsterRun], items: Sequence[Any]
) -> dict[tuple[str, int], CrashCause]:
    """A child SIGKILLed while the OOM-kill count of its memory cgroup moved, as its watcher
    saw it end (its memory row, or the run's ``run_monitor/memory`` tag once the rows are
    written there; three statements for the pass): ``oom_killed``; ``unreported`` while its
    watcher still beats for it (it writes that row moments after the child died)."""
    ids = sorted({run.run_id for run, _, _ in items})
    peaks, beating = read_peaks(instance, ids), live_workers(instance, ids)
    for record in instance.get_run_records(RunsFilter(run_ids=ids)):  # rows gone: their tag
        written = tagged_peaks(record.dagster_run.tags.get(MEMORY_TAG))
        peaks[record.dagster_run.run_id] = {**written, **peaks.get(record.dagster_run.run_id, {})}
    found = {}
    for run, i, end in items:
        cause = message_cause(end)
        worker = f"{STEP_WORKER_PREFIX}{end.step_key}"
        peak = peaks.get(run.run_id, {}).get(worker)
        if cause is None or cause.exit_code != -9:
            continue
        if peak is None and worker in beating.get(run.run_id, ()):
            found[(run.run_id, i)] = CrashCause(UNREPORTED, "its watcher has not reported yet")
        elif peak is not None and peak.oom:
            limit = f" of limit {format_memory(peak.limit)}" if peak.limit else ""
            detail = (
                f"SIGKILL while the kernel's OOM killer acted in its memory cgroup (peak"
                f" {format_memory(peak.peak)}{limit})"
            )
            memory = {"limits": format_memory(peak.limit)} if peak.limit else {}
            found[(run.run_id, i)] = CrashCause(OOM_KILLED, detail, -9, memory)
    return found


def _k8s_causes(
    instance: DagsterInstance, runs: Mapping[str, DagsterRun], items: Sequence[Any]
) -> dict[tuple[str, int], CrashCause]:
    """The pods of each step Job, listed by run once per namespace (``dagster/run-id``)."""
    from dagster_run_monitor.integration.internals import k8s_core_api
    from dagster_run_monitor.launchers.kubernetes.pods import is_k8s_launcher

    launcher = instance.run_launcher
    if not is_k8s_launcher(launcher):
        return {}
    api = k8s_core_api(launcher)
    by_namespace: dict[str, set[str]] = {}
    for run_id in {run.run_id for run, _, _ in items}:  # one container context per run
        namespace = launcher.get_container_context_for_run(runs[run_id]).namespace  # type: ignore[attr-defined]
        by_namespace.setdefault(namespace, set()).add(run_id)
    pods_of: dict[str, list[Any]] = {}
    for namespace, run_ids in by_namespace.items():
        ids = sorted(run_ids)
        for start in range(0, len(ids), K8S_RUNS_PER_LIST):  # a selector's URL stays short
            chunk = ",".join(ids[start : start + K8S_RUNS_PER_LIST])
            listed = api.list_namespaced_pod(
                namespace, label_selector=f"dagster/run-id in ({chunk})"
            )
            for pod in listed.items:
                job = (pod.metadata.labels or {}).get("job-name")
                if job:
                    pods_of.setdefault(job, []).append(pod)
    found = {}
    for run, i, end in items:
        pods = sorted(
            pods_of.get(end.worker.get(K8S_JOB, ""), []),
            key=lambda pod: str(pod.metadata.creation_timestamp or ""),
        )
        found[(run.run_id, i)] = k8s_step_cause(pods, end.started_at)
    return found


def _docker_causes(
    instance: DagsterInstance, runs: Mapping[str, DagsterRun], items: Sequence[Any]
) -> dict[tuple[str, int], CrashCause]:
    """Each step container's ``State`` (and its memory limit, for an OOM kill)."""
    import docker
    from docker.errors import NotFound

    client = docker.from_env()
    found = {}
    for run, i, end in items:
        try:
            attrs = client.containers.get(end.worker[DOCKER_CONTAINER]).attrs
        except NotFound:
            attrs = None
        state = attrs["State"] if attrs else None
        if state and state.get("Running"):
            found[(run.run_id, i)] = CrashCause(RUNNING, f"container {state.get('Status')}")
            continue
        cause = docker_cause(state)
        limit = int(((attrs or {}).get("HostConfig") or {}).get("Memory") or 0)
        if limit:
            cause = CrashCause(
                cause.kind, cause.detail, cause.exit_code, {"limits": format_memory(limit)}
            )
        found[(run.run_id, i)] = cause
    return found


def _ecs_causes(
    instance: DagsterInstance, runs: Mapping[str, DagsterRun], items: Sequence[Any]
) -> dict[tuple[str, int], CrashCause]:
    """Each step task's document, ``describe_tasks`` by cluster, 100 tasks a call. The cluster
    is named in the task's ARN (``task/CLUSTER/ID``); an old-format ARN (``task/ID``) names
    none: ``ecs_executor`` runs its step tasks in the run worker's cluster (the run's
    ``ecs/cluster`` tag, written by ``EcsRunLauncher``), where its health check describes them."""
    from dagster_run_monitor.launchers.ecs.launcher import CLUSTER_TAG, is_ecs_launcher

    launcher = instance.run_launcher
    if not is_ecs_launcher(launcher):
        return {}
    client = launcher.ecs  # type: ignore[attr-defined]
    by_cluster: dict[str, list[str]] = {}
    for run, _, end in items:
        arn = end.worker[ECS_TASK]
        resource = arn.split(":task/", 1)[-1]
        parent = runs.get(run.run_id)
        cluster = resource.split("/", 1)[0] if "/" in resource else None
        cluster = cluster or (parent.tags.get(CLUSTER_TAG) if parent else None) or "default"
        by_cluster.setdefault(cluster, []).append(arn)
    tasks: dict[str, Any] = {}
    for cluster, arns in by_cluster.items():
        for start in range(0, len(arns), ECS_BATCH):
            described = client.describe_tasks(
                cluster=cluster, tasks=arns[start : start + ECS_BATCH]
            )
            tasks.update({task["taskArn"]: task for task in described.get("tasks") or []})
    found = {}
    for run, i, end in items:
        task = tasks.get(end.worker[ECS_TASK])
        if task is not None and task.get("lastStatus") not in ECS_STOPPED:
            found[(run.run_id, i)] = CrashCause(RUNNING, f"task {task.get('lastStatus')}")
        else:
            found[(run.run_id, i)] = ecs_cause(task, None)
    return found
