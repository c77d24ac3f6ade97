"""A worker's memory, read from outside it by its watcher (standard library only: the watcher
imports this file as its neighbour, and the step process executor imports it from the package).

Where the worker has a memory cgroup of its own (one with a limit: a container, a pod, a step
put in a cgroup), the cgroup's working set, as the kubelet counts it: v2 ``memory.current``, v1
``memory.usage_in_bytes``, less the inactive file cache of ``memory.stat`` (which the kernel
reclaims before it OOM-kills); the limit ``memory.max`` / ``memory.limit_in_bytes``; the peak
the larger of the sampled maximum and the worker process's own ``VmHWM`` (the kernel's
``memory.peak`` and ``max_usage_in_bytes`` count the cache). Otherwise its process tree's: the
sum of the processes' RSS, the peak the larger of that sum's sampled maximum and the sum of
their ``VmHWM`` (an upper bound: they may have peaked at different times), no limit. The
worker's cgroup is read from ``/proc/<pid>/cgroup`` at each sample (a process can be moved).

The kernel's OOM kills are counted per cgroup (v1 ``memory.oom_control``, v2 ``memory.events``,
line ``oom_kill``): a worker that ended while a memory cgroup it was seen in counted a kill
was, as far as can be told from outside, OOM-killed."""

import os
import time

V1_MEMORY = "/sys/fs/cgroup/memory"
V2_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
UNLIMITED = 2**62  # at or above: no limit (v1 writes 9223372036854771712)
TREE_SECONDS = 60.0  # how often the process tree is found again (a scan of /proc)
V1 = ("memory.usage_in_bytes", "memory.limit_in_bytes", "total_inactive_file")
V2 = ("memory.current", "memory.max", "inactive_file")


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:  # bytes: text mode would load the locale machinery
            return f.read().decode()
    except (OSError, ValueError):
        return None


def _number(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return UNLIMITED
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def memory_cgroup(pid: int) -> str | None:
    """The directory of the process's memory cgroup (None: gone, or no memory controller).
    Inside a container whose view of the hierarchy starts at its own cgroup, the path's
    leading parts are dropped until it exists."""
    text = _read(f"/proc/{pid}/cgroup")
    if text is None:
        return None
    unified = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if "memory" in parts[1].split(","):
            return _existing(V1_MEMORY, parts[2], "memory.usage_in_bytes")
        if parts[1] == "":
            unified = parts[2]
    if unified is not None:
        for root in V2_ROOTS:
            found = _existing(root, unified, "memory.current")
            if found is not None:
                return found
    return None


def _existing(root: str, path: str, probe: str) -> str | None:
    parts = [p for p in path.split("/") if p]
    for start in range(len(parts) + 1):
        candidate = "/".join([root, *parts[start:]])
        if os.path.exists(f"{candidate}/{probe}"):
            return candidate
    return None


def oom_kills(cgroup: str) -> int | None:
    """The cgroup's OOM-kill count (None: unreadable)."""
    for name in ("memory.oom_control", "memory.events"):
        text = _read(f"{cgroup}/{name}")
        for line in (text or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return None


class OomWatch:
    """The memory cgroups one process was seen in, with their OOM-kill counts when first seen."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def look(self, pid: int, cgroup: str | None = None) -> None:
        """Note the process's cgroup now (``cgroup``: already read); two small reads."""
        cgroup = cgroup or memory_cgroup(pid)
        if cgroup is not None and cgroup not in self.seen:
            count = oom_kills(cgroup)
            if count is not None:
                self.seen[cgroup] = count

    def killed(self) -> tuple[int, str] | None:
        """(kills, where) if a cgroup it was seen in counted an OOM kill since; None if none
        did; raises LookupError if none was seen (no evidence either way)."""
        if not self.seen:
            raise LookupError("no memory cgroup seen")
        for cgroup, before in self.seen.items():
            after = oom_kills(cgroup)
            if after is not None and after > before:
                return after - before, cgroup
        return None


def _stat(path: str, key: str) -> int:
    """One counter of a ``memory.stat`` file (0: absent)."""
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _status(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in bytes; None for a process gone (or a kernel thread)."""
    text = _read(f"/proc/{pid}/status")
    if text is None:
        return None
    found = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            found[line[:5]] = int(line.split()[1]) * 1024
    if len(found) < 2:
        return None
    return found["VmRSS"], found["VmHWM"]


def descendants(pid: int, skip: int) -> list[int]:
    """``pid`` and its descendants but ``skip`` (the watcher's own), by one scan of /proc."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [pid]
    for entry in entries:
        if not entry.isdigit():
            continue
        text = _read(f"/proc/{entry}/stat")
        if text is None:
            continue
        try:
            parent = int(text.rsplit(")", 1)[1].split()[1])
        except (IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current != skip:
            tree.append(current)
            todo += children.get(current, [])
    return tree


class MemoryReader:
    """One worker's memory, sample by sample: ``used``, ``peak`` and ``limit`` (bytes, None
    where there is none), ``oom``: an OOM kill counted in a cgroup the worker was seen in."""

    def __init__(self, pid: int, skip: int | None = None) -> None:
        self.pid = pid
        self.skip = os.getpid() if skip is None else skip
        self.used = self.peak = 0
        self.limit: int | None = None
        self.oom = OomWatch()
        self._tree: list[int] = []
        self._tree_at = -TREE_SECONDS

    def sample(self) -> dict:
        """Read once; never raises. ``{"used": .., "peak": .., "limit": ..}``."""
        try:
            cgroup = memory_cgroup(self.pid)
            if cgroup is not None:
                self.oom.look(self.pid, cgroup)
            if cgroup is None or not self._from_cgroup(cgroup):
                self._from_tree()
        except Exception:
            pass
        return {"used": self.used, "peak": self.peak, "limit": self.limit}

    def _from_cgroup(self, cgroup: str) -> bool:
        """The cgroup's figures, where it has a limit (False: not a cgroup of its own)."""
        usage, limit_file, inactive_key = V1 if cgroup.startswith(V1_MEMORY) else V2
        limit = _number(f"{cgroup}/{limit_file}")
        if limit is None or limit >= UNLIMITED:
            return False
        usage_bytes = _number(f"{cgroup}/{usage}")
        if usage_bytes is None:
            return False
        used = max(0, usage_bytes - _stat(f"{cgroup}/memory.stat", inactive_key))
        own = _status(self.pid)
        self.used, self.limit = used, limit
        self.peak = max(self.peak, used, own[1] if own else 0)
        return True

    def _from_tree(self) -> None:
        now = time.monotonic()
        if now - self._tree_at >= TREE_SECONDS or not self._tree:
            self._tree, self._tree_at = descendants(self.pid, self.skip), now
        used = hwm = 0
        alive = []
        for pid in self._tree:
            found = _status(pid)
            if found is not None:
                alive.append(pid)
                used, hwm = used + found[0], hwm + found[1]
        self._tree = alive
        if alive:
            self.used, self.limit = used, None
            self.peak = max(self.peak, used, hwm)

    def oom_killed(self) -> bool:
        """An OOM kill was counted in a memory cgroup the worker was seen in (evidence only)."""
        try:
            return self.oom.killed() is not None
        except Exception:
            return False
