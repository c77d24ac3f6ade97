"""Why a run worker died, from what its launcher can see. Pure: each classifier takes objects
already read (Kubernetes pods, a Docker container's ``State``, a process's exit data)."""

import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OOM_KILLED = "oom_killed"
EVICTED = "evicted"
PREEMPTED = "preempted"
NODE_LOST = "node_lost"
DELETED = "deleted"
IMAGE_PULL = "image_pull"
CONFIG_ERROR = "config_error"
EXIT_CODE = "exit_code"
SIGNAL = "signal"
WORKER_LOST = "worker_lost"  # its heartbeats stopped (worker.watcher)
UNKNOWN = "unknown"
RUNNING = "running"  # not a cause: a step worker the platform still shows running
UNREPORTED = "unreported"  # not a cause (yet): a dead step worker its watcher has not reported
CAUSES = (
    OOM_KILLED,
    EVICTED,
    PREEMPTED,
    NODE_LOST,
    DELETED,
    IMAGE_PULL,
    CONFIG_ERROR,
    EXIT_CODE,
    SIGNAL,
    WORKER_LOST,
    UNKNOWN,
)


@dataclass(frozen=True)
class CrashCause:
    """One cause, with what showed it (``detail``) and, after an OOM kill, the memory the
    worker had (``memory``: Kubernetes ``limits`` / ``requests`` -> quantity; ECS ``memory``,
    ``cpu``, ``launch_type``)."""

    kind: str  # one of CAUSES
    detail: str = ""
    exit_code: int | None = None
    memory: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"cause: {self.kind}" + (f", {self.detail}" if self.detail else "")


# Container waiting reasons of a pod that will not start by itself (an Unschedulable pod is
# not among them: a node may still come; the start timeout covers it).
IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CONFIG_ERROR_REASONS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
CANNOT_START = IMAGE_PULL_REASONS | CONFIG_ERROR_REASONS
# The pod condition DisruptionTarget's reasons (Kubernetes 1.26+) and pod status reasons.
PREEMPTION_REASONS = frozenset(
    {"PreemptionByScheduler", "PreemptionByKubeScheduler", "Preempting", "NodeShutdown", "Shutdown"}
)
NODE_LOST_REASONS = frozenset({"DeletionByTaintManager", "DeletionByPodGC", "NodeLost"})
EVICTION_REASONS = frozenset({"Evicted", "EvictionByEvictionAPI", "TerminationByKubelet"})


def exit_cause(exit_code: int, shown: str, shell_convention: bool) -> CrashCause:
    """``signal`` for a code that says a signal ended the process (negative, as Python reports
    it, or 128 + N where a shell or container runtime reports it), ``exit_code`` otherwise.
    ``shown``: what showed it (a pod's summary, a container's status)."""
    number = -exit_code if exit_code < 0 else exit_code - 128 if shell_convention else 0
    code = "" if "exit code" in shown else f"exit code {exit_code}"
    if number > 0:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return CrashCause(SIGNAL, _joined(name, shown, code if shown else ""), exit_code)
    return CrashCause(EXIT_CODE, _joined(shown, code), exit_code)


def _joined(*parts: str) -> str:
    return ", ".join(part for part in parts if part)


# --- Kubernetes (K8sRunLauncher: the pods of the run worker's Job) --------------------------


def k8s_cause(pods: Sequence[Any]) -> CrashCause:
    """The cause shown by the newest pod that shows one; ``deleted`` when no pod is left or
    every pod is being deleted without a disruption condition; else ``unknown`` with what the
    newest pod says (a worker that exited 0 without ending its run)."""
    for pod in reversed(pods):
        cause = _pod_cause(pod)
        if cause is not None:
            return cause
    if not pods:
        return CrashCause(DELETED, "no pod of the run worker's Job is left")
    if all(getattr(pod.metadata, "deletion_timestamp", None) for pod in pods):
        return CrashCause(DELETED, f"{pod_summary(pods[-1])}, being deleted".lstrip(", "))
    return CrashCause(UNKNOWN, pod_summary(pods[-1]))


def k8s_step_cause(pods: Sequence[Any], started_at: float | None) -> CrashCause:
    """The cause of a step attempt's death from its step Job's pods: those made by the time
    the attempt started (a pod made later replaced it, as a Job replaces a deleted pod), newest
    last; ``deleted`` when none of them is left; ``running`` while one of them runs."""
    # Creation times are whole seconds: a pod made in the second the attempt started is a
    # replacement (a pod takes more than a second to start Python and the step).
    own = [pod for pod in pods if started_at is None or _created(pod) + 1 <= started_at]
    if not own:
        replaced = f" (replaced by pod {pods[-1].metadata.name})" if pods else ""
        return CrashCause(DELETED, f"the step's pod is gone{replaced}")
    if any(pod_live(pod) for pod in own):
        return CrashCause(RUNNING, pod_summary(own[-1]) or f"pod {own[-1].metadata.name}")
    return k8s_cause(own)


def _created(pod: Any) -> float:
    created = getattr(pod.metadata, "creation_timestamp", None)
    return created.timestamp() if created is not None else 0.0


def pod_live(pod: Any) -> bool:
    """Pending or running, and not being deleted."""
    phase = getattr(pod.status, "phase", None) if pod.status else None
    return phase in ("Pending", "Running") and not pod.metadata.deletion_timestamp


def _pod_cause(pod: Any) -> CrashCause | None:
    summary = pod_summary(pod)
    status = pod.status
    reasons = {getattr(status, "reason", None)} | {
        condition.reason
        for condition in (getattr(status, "conditions", None) or [])
        if condition.type == "DisruptionTarget" and condition.status == "True"
    }
    if reasons & PREEMPTION_REASONS or "node shutdown" in summary:  # spot / preemptible nodes
        return CrashCause(PREEMPTED, summary)
    if reasons & NODE_LOST_REASONS or getattr(status, "phase", None) == "Unknown":
        return CrashCause(NODE_LOST, summary)
    if reasons & EVICTION_REASONS:
        return CrashCause(EVICTED, summary)
    for container in _container_statuses(pod):
        state = container.state
        terminated = state.terminated if state else None
        if terminated is not None and terminated.reason == "OOMKilled":
            memory = _memory_of(pod, container.name)
            return CrashCause(OOM_KILLED, summary, terminated.exit_code, memory)
    reason = waiting_reason(pod)
    if reason in IMAGE_PULL_REASONS:
        return CrashCause(IMAGE_PULL, summary)
    if reason in CONFIG_ERROR_REASONS:
        return CrashCause(CONFIG_ERROR, summary)
    if getattr(pod.metadata, "deletion_timestamp", None):
        return None  # being deleted: decided with the other pods
    for container in _container_statuses(pod):
        terminated = container.state.terminated if container.state else None
        if terminated is not None and terminated.exit_code:
            if terminated.signal:
                return exit_cause(-int(terminated.signal), summary, shell_convention=False)
            return exit_cause(int(terminated.exit_code), summary, shell_convention=True)
    return None


def waiting_reason(pod: Any) -> str | None:
    for status in _container_statuses(pod):
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason:
            return waiting.reason
    return None


def pod_summary(pod: Any) -> str:
    """``pod NAME: container 'dagster' terminated: OOMKilled, exit code 137`` and the like."""
    parts = []
    status = pod.status
    reason = getattr(status, "reason", None)
    if reason:
        parts.append(f"{reason}: {status.message}" if status.message else reason)
    for condition in getattr(status, "conditions", None) or []:
        if condition.type == "DisruptionTarget" and condition.status == "True":
            text = f"{condition.reason}: {condition.message}" if condition.message else ""
            parts.append(f"DisruptionTarget {text or condition.reason}")
    if getattr(status, "phase", None) == "Unknown":
        parts.append("phase Unknown (its node does not report)")
    for container in _container_statuses(pod):
        state = container.state
        if state is None:
            continue
        if state.waiting is not None and state.waiting.reason:
            waiting = state.waiting
            text = f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason
            parts.append(f"container '{container.name}' waiting: {text}")
        elif state.terminated is not None:
            ended = state.terminated
            text = f"{ended.reason or 'terminated'}, exit code {ended.exit_code}"
            if ended.signal:
                text += f", signal {ended.signal}"
            parts.append(f"container '{container.name}' terminated: {text}")
    return f"pod {pod.metadata.name}: {', '.join(parts)}" if parts else ""


def _container_statuses(pod: Any) -> list[Any]:
    status = pod.status
    if status is None:
        return []
    return [*(status.init_container_statuses or []), *(status.container_statuses or [])]


def _memory_of(pod: Any, container_name: str) -> dict[str, str]:
    for container in getattr(pod.spec, "containers", None) or []:
        if container.name == container_name and container.resources is not None:
            resources = container.resources
            return {
                kind: str(values["memory"])
                for kind, values in (("limits", resources.limits), ("requests", resources.requests))
                if values and values.get("memory")
            }
    return {}


# --- Docker (DockerRunLauncher: the container's State) ---------------------------------------


def docker_cause(state: Mapping[str, Any] | None) -> CrashCause:
    """From ``docker inspect``'s ``State`` of the worker's container (None: it is gone)."""
    if state is None:
        return CrashCause(DELETED, "the run worker's container no longer exists")
    code = int(state.get("ExitCode") or 0)
    detail = f"container {state.get('Status', 'ended')}"
    if state.get("OOMKilled"):
        return CrashCause(OOM_KILLED, f"{detail}, OOMKilled, exit code {code}", code)
    if state.get("Error"):
        detail += f", error {state['Error']!r}"
    if code:
        return exit_cause(code, detail, shell_convention=True)
    return CrashCause(UNKNOWN, detail)


# --- a local process (ProcessRunLauncher: its return code, the kernel's OOM kill count) -----


def process_cause(returncode: int | None, oom_kills: tuple[int, int] | None = None) -> CrashCause:
    """``returncode`` as ``subprocess`` reports it (negative: the signal); ``oom_kills``: the
    kernel's OOM kill counter when the worker started and when it ended. A SIGKILL while that
    counter moved reads as ``oom_killed``."""
    if returncode is None:
        return CrashCause(UNKNOWN, "the worker's exit status was not recorded")
    moved = oom_kills is not None and oom_kills[1] > oom_kills[0]
    if returncode == -signal.SIGKILL and moved:
        detail = (
            f"SIGKILL while the kernel's OOM killer acted ({oom_kills[1] - oom_kills[0]}"  # type: ignore[index]
            " kill(s) in /proc/vmstat oom_kill)"
        )
        return CrashCause(OOM_KILLED, detail, returncode)
    return exit_cause(returncode, "", shell_convention=False)


# --- Amazon ECS (EcsRunLauncher: the stopped task, as describe_tasks returns it) -------------

ECS_PREEMPTION_STOP_CODES = frozenset({"SpotInterruption", "TerminationNotice"})
ECS_DELETION_STOP_CODES = frozenset({"UserInitiated", "ServiceSchedulerInitiated"})
ECS_CONFIG_ERRORS = ("ResourceInitializationError", "CannotStartContainerError")
ECS_NODE_LOST = ("Host EC2", "Container instance deregistration", "instance terminated")


def ecs_cause(
    task: Mapping[str, Any] | None, container: str | None, transient: bool = False
) -> CrashCause:
    """From the stopped task's document (None: ECS no longer knows it). ``container``: the run
    worker's container (else the first that failed); ``transient``: dagster-aws reads the
    stopped reason as a failure to retry (``is_transient_task_stopped_reason``)."""
    if task is None:
        return CrashCause(DELETED, "ECS no longer knows the run worker's task")
    code, reason = task.get("stopCode") or "", task.get("stoppedReason") or ""
    containers = task.get("containers") or []
    worker = next((c for c in containers if c.get("name") == container), None) or next(
        (c for c in containers if c.get("exitCode") not in (None, 0)), {}
    )
    exit_code, said = worker.get("exitCode"), worker.get("reason") or ""
    detail = _joined(
        f"task {str(task.get('taskArn', '')).rsplit('/', 1)[-1]} {code}".strip(),
        reason,
        f"container '{worker['name']}': {said}" if said and worker.get("name") else said,
        f"exit code {exit_code}" if exit_code is not None else "",
    )
    reasons = f"{reason} {said} " + " ".join(c.get("reason") or "" for c in containers)
    if "OutOfMemoryError" in reasons:
        return CrashCause(OOM_KILLED, detail, exit_code, _ecs_size(task))
    if any(lost in reasons for lost in ECS_NODE_LOST):  # a host terminated (whatever its code)
        return CrashCause(NODE_LOST, detail, exit_code)
    if code in ECS_PREEMPTION_STOP_CODES:
        return CrashCause(PREEMPTED, detail, exit_code)
    if "CannotPullContainerError" in reasons and not transient:
        return CrashCause(IMAGE_PULL, detail)
    if any(error in reasons for error in ECS_CONFIG_ERRORS):
        return CrashCause(CONFIG_ERROR, detail)
    if code in ECS_DELETION_STOP_CODES:
        return CrashCause(DELETED, detail, exit_code)
    if exit_code:
        return exit_cause(int(exit_code), detail, shell_convention=True)
    return CrashCause(UNKNOWN, detail)


def _ecs_size(task: Mapping[str, Any]) -> dict[str, str]:
    """The task's ``memory`` (MiB) and ``cpu`` (units), and ``launch_type`` (Fargate's sizes
    are a fixed table; FARGATE_SPOT is Fargate)."""
    provider = str(task.get("capacityProviderName") or "")
    fargate = task.get("launchType") == "FARGATE" or provider.startswith("FARGATE")
    size = {k: str(task[k]) for k in ("memory", "cpu") if task.get(k)}
    return {**size, "launch_type": "FARGATE" if fargate else "EC2"}
