"""The kernel's OOM kills of a process, counted in its memory cgroup (Linux): a SIGKILL is an
OOM kill when the OOM-kill counter of a memory cgroup the process was seen in moved.

cgroup v1: ``memory.oom_control``'s ``oom_kill`` line; v2: ``memory.events``' ``oom_kill``
line. A cgroup counts the kills of its own processes (the root's, those of a global OOM), so
a kill in another container does not move this one's."""

from pathlib import Path

V1_MEMORY = Path("/sys/fs/cgroup/memory")
V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


def memory_cgroup(pid: int) -> Path | None:
    """The directory of the process's memory cgroup (None: gone, or no memory controller)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    unified = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return V1_MEMORY / path.lstrip("/")
        if controllers == "":
            unified = path.lstrip("/")
    if unified is not None:
        for root in V2_ROOTS:
            candidate = root / unified
            if (candidate / "memory.events").exists():
                return candidate
    return None


def oom_kills(cgroup: Path) -> int | None:
    """The cgroup's OOM-kill count (None: unreadable)."""
    for name in ("memory.oom_control", "memory.events"):
        try:
            text = (cgroup / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return None


class OomWatch:
    """The memory cgroups one process was seen in, with their counts when first seen."""

    def __init__(self) -> None:
        self.seen: dict[Path, int] = {}

    def look(self, pid: int) -> None:
        """Note the process's cgroup now (a process can be moved); cheap: two small reads."""
        cgroup = memory_cgroup(pid)
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
                return after - before, str(cgroup)
        return None
