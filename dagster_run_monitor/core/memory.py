"""More memory for a Kubernetes run worker the OOM killer ended: its ``dagster-k8s/config``
run tag, which ``K8sRunLauncher`` reads when it builds the resumed Job. Pure."""

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster_k8s's USER_DEFINED_K8S_CONFIG_KEY
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


@dataclass(frozen=True)
class OomMemory:
    """``oom_memory:``: raise a worker's memory by ``multiplier``, up to ``max``."""

    multiplier: float = 1.5
    max: str = "16Gi"

    @property
    def max_bytes(self) -> int:
        return parse_memory(self.max)


@dataclass(frozen=True)
class RaisedMemory:
    """What a resume after an OOM kill changes: the tags to write (none at the cap) and the
    event that says so."""

    tags: Mapping[str, str]
    note: str


def raised_memory(
    tags: Mapping[str, str], memory: Mapping[str, str], oom: OomMemory
) -> RaisedMemory | None:
    """The run's ``dagster-k8s/config`` tag with the worker container's memory limit and
    request (``memory``: what the killed container had) multiplied, up to the cap; None if
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
    new = {
        kind: format_memory(min(cap, math.ceil(size * oom.multiplier)))
        for kind, size in old.items()
    }
    container = config.setdefault("container_config", {})
    resources = container.setdefault("resources", {})
    for kind, value in new.items():
        resources.setdefault(kind, {})["memory"] = value
    note = (
        f"Resuming with memory limit {new['limits']} (was {memory['limits']}) after the worker"
        " was OOMKilled."
    )
    return RaisedMemory({K8S_CONFIG_TAG: json.dumps(config, sort_keys=True)}, note)


def memory_of(tags: Mapping[str, str]) -> str | None:
    """The run worker's memory limit set in the run's ``dagster-k8s/config`` tag, if any."""
    try:
        config = json.loads(tags.get(K8S_CONFIG_TAG) or "{}")
        return config["container_config"]["resources"]["limits"]["memory"]
    except (ValueError, KeyError, TypeError):
        return None
