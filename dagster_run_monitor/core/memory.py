"""More memory for a worker the OOM killer ended: its size (``raised_size``: the killed limit
times ``multiplier``, 1.15 x its usual peak, or the killed limit + 100Mi, whichever is largest,
capped), and for a run worker the run tags its launcher reads when it starts the resumed
worker: ``dagster-k8s/config`` (``K8sRunLauncher``), ``ecs/memory`` and ``ecs/cpu``
(``EcsRunLauncher``). Pure."""

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from dagster_run_monitor.core.heartbeats import RUN_WORKER
from dagster_run_monitor.core.learned import Sample

K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster_k8s's USER_DEFINED_K8S_CONFIG_KEY
ECS_MEMORY_TAG, ECS_CPU_TAG = "ecs/memory", "ecs/cpu"  # MiB and CPU units (EcsRunLauncher)
MIB = 2**20
HEADROOM = 1.15  # over a percentile of the peaks (the Vertical Pod Autoscaler's margin)
ADDED = 100 * MIB  # at least this much more than the killed limit (VPA's OOM bump)
# Fargate's task sizes: CPU units -> the memory (MiB) each admits (AWS's table of valid
# CPU and memory combinations). EC2 tasks take any memory.
FARGATE_SIZES: Mapping[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}
_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?(?:[eE][0-9]+)?)([a-zA-Z]*)$")


def parse_memory(quantity: str) -> int:
    """Bytes of a Kubernetes quantity such as ``400Mi``, ``2Gi``, ``1.5G``, ``1e9``."""
    match = _QUANTITY.match(str(quantity).strip())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a memory quantity: {quantity!r} (such as 512Mi or 2Gi)")
    return math.ceil(float(match.group(1)) * _UNITS[match.group(2)])


def format_memory(size: int) -> str:
    """``size`` bytes in the largest binary unit that holds it whole (at least Mi: rounded up)."""
    for unit in ("Ei", "Pi", "Ti", "Gi", "Mi"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return f"{math.ceil(size / _UNITS['Mi'])}Mi"


def mebibytes_up(size: float) -> int:
    """``size`` bytes rounded up to whole MiB."""
    return math.ceil(size / MIB) * MIB


@dataclass(frozen=True)
class OomMemory:
    """``oom_memory:``: raise a worker's memory by ``multiplier``, up to ``max``."""

    multiplier: float = 1.5
    max: str = "16Gi"

    @property
    def max_bytes(self) -> int:
        return parse_memory(self.max)


def whose(worker: str) -> str:
    """Whose peaks size a worker: a job's (its run worker) or an op's (its step worker)."""
    return "this job's" if worker == RUN_WORKER else "this op's"


@dataclass(frozen=True)
class Sized:
    """The memory of a worker's next attempt, and the rule that chose it."""

    size: int
    why: str


def raised_size(old: int, oom: OomMemory, usual: Sample | None, worker: str) -> Sized:
    """The largest of: the killed limit x ``multiplier``; ``HEADROOM`` x the p95 peak of the
    worker over its job's last successful runs; the killed limit + 100Mi. Capped at ``max``."""
    rules = [
        (mebibytes_up(old * oom.multiplier), f"{oom.multiplier:g} x the killed limit"),
        (old + ADDED, "the killed limit + 100Mi"),
    ]
    if usual is not None:
        rules.append(
            (
                mebibytes_up(usual.value * HEADROOM),
                f"{HEADROOM:g} x {whose(worker)} p95 peak over its last {usual.count}"
                " successful runs",
            )
        )
    size, why = max(rules, key=lambda rule: rule[0])  # a tie: the first rule
    if size > oom.max_bytes:
        return Sized(oom.max_bytes, f"oom_memory.max (not {format_memory(size)}: {why})")
    return Sized(size, why)


@dataclass(frozen=True)
class RaisedMemory:
    """What a resume after an OOM kill changes: the tags to write (none at the cap) and the
    event that says so."""

    tags: Mapping[str, str]
    note: str


def raised_memory(
    tags: Mapping[str, str],
    memory: Mapping[str, str],
    oom: OomMemory,
    usual: Sample | None = None,
) -> RaisedMemory | None:
    """The raised memory for the killed worker's platform (what ``memory`` holds: an ECS
    task's ``memory``/``cpu``/``launch_type``, or a Kubernetes container's ``limits``);
    ``usual``: the p95 of the run worker's peaks over its job's last successful runs."""
    if "launch_type" in memory:
        return raised_ecs_memory(memory, oom, usual)
    return raised_k8s_memory(tags, memory, oom, usual)


def raised_k8s_memory(
    tags: Mapping[str, str],
    memory: Mapping[str, str],
    oom: OomMemory,
    usual: Sample | None = None,
) -> RaisedMemory | None:
    """The run's ``dagster-k8s/config`` tag with the worker container's memory limit raised
    (``raised_size``) and its request in proportion (``memory``: what the killed container
    had); None if
    the container had no limit (the node ran out, not the container) or the tag is not
    JSON."""
    if not memory.get("limits"):
        return None
    try:
        config = json.loads(tags.get(K8S_CONFIG_TAG) or "{}")
        old = {kind: parse_memory(value) for kind, value in memory.items()}
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    cap = oom.max_bytes
    if old["limits"] >= cap:
        note = (
            f"The worker was OOMKilled with memory limit {memory['limits']}, at the cap of"
            f" oom_memory.max ({oom.max}): resuming with the same memory."
        )
        return RaisedMemory({}, note)
    sized = raised_size(old["limits"], oom, usual, RUN_WORKER)
    new = {"limits": format_memory(sized.size)}
    if "requests" in old:  # in proportion, within the limit
        grown = mebibytes_up(old["requests"] * sized.size / old["limits"])
        new["requests"] = format_memory(min(sized.size, grown))
    container = config.setdefault("container_config", {})
    resources = container.setdefault("resources", {})
    for kind, value in new.items():
        resources.setdefault(kind, {})["memory"] = value
    note = (
        f"Resuming with memory limit {new['limits']} (was {memory['limits']}) after the worker"
        f" was OOMKilled: {sized.why}."
    )
    return RaisedMemory({K8S_CONFIG_TAG: json.dumps(config, sort_keys=True)}, note)


def raised_ecs_memory(
    memory: Mapping[str, str], oom: OomMemory, usual: Sample | None = None, worker: str = RUN_WORKER
) -> RaisedMemory | None:
    """The run's ``ecs/memory`` tag raised (``raised_size``); on Fargate, the smallest valid
    size at or above that memory, its CPU in ``ecs/cpu`` when it grows (None: the task's size
    is unknown)."""
    try:
        old, cpu = int(memory["memory"]), int(memory.get("cpu") or 0)
    except (KeyError, ValueError):
        return None
    cap = oom.max_bytes // MIB
    sized = raised_size(old * MIB, oom, usual, worker)
    wanted = sized.size // MIB
    fargate = memory["launch_type"] == "FARGATE"
    size = fargate_size(cpu, old, wanted, cap) if fargate else (cpu, wanted)
    if size is None or size[1] <= old:
        within = " (no larger Fargate size within it)" if fargate else ""
        note = (
            f"The worker was OOM-killed with memory {old} MiB, at the cap of oom_memory.max"
            f" ({oom.max}){within}: resuming with the same memory."
        )
        return RaisedMemory({}, note)
    new_cpu, new = size
    tags = {ECS_MEMORY_TAG: str(new)}
    grown = ""
    if new_cpu != cpu:
        tags[ECS_CPU_TAG] = str(new_cpu)
        grown = f" and CPU {new_cpu} units (was {cpu}: Fargate's smallest size for it)"
    note = (
        f"Resuming with memory {new} MiB (was {old} MiB){grown} after the worker was"
        f" OOM-killed: {sized.why}."
    )
    return RaisedMemory(tags, note)


def fargate_size(cpu: int, old: int, wanted: int, cap: int) -> tuple[int, int] | None:
    """The Fargate (CPU, memory) with the least memory at or above ``wanted`` and then the
    least CPU, no less CPU than ``cpu`` and memory in (``old``, ``cap``]; without one at
    ``wanted``, the most memory under the cap; None if no size has more than ``old``."""
    sizes = [
        (mib, units)
        for units, memories in FARGATE_SIZES.items()
        if units >= cpu
        for mib in memories
        if old < mib <= cap
    ]
    if not sizes:
        return None
    enough = [size for size in sizes if size[0] >= wanted]
    mib, units = min(enough) if enough else max(sizes, key=lambda size: (size[0], -size[1]))
    return units, mib


def memory_of(tags: Mapping[str, str]) -> tuple[str, str] | None:
    """The run worker's memory set in the run's tags, if any, and the tag that sets it:
    ``dagster-k8s/config``'s container limit or ``ecs/memory``."""
    if tags.get(ECS_MEMORY_TAG):
        return f"{tags[ECS_MEMORY_TAG]} MiB", ECS_MEMORY_TAG
    try:
        config = json.loads(tags.get(K8S_CONFIG_TAG) or "{}")
        return config["container_config"]["resources"]["limits"]["memory"], K8S_CONFIG_TAG
    except (ValueError, KeyError, TypeError):
        return None
