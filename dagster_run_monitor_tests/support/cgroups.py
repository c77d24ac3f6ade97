"""Memory cgroups for tests that need the kernel's OOM killer for real (root only): cgroup v1's
memory controller where it is mounted (these machines), cgroup v2's where it is enabled."""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

V1 = Path("/sys/fs/cgroup/memory")
V2_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


def v2_root() -> Path | None:
    """A cgroup v2 hierarchy whose children can have the memory controller, if any."""
    for root in V2_ROOTS:
        try:
            if "memory" in (root / "cgroup.controllers").read_text().split():
                return root
        except OSError:
            continue
    return None


def unavailable(version: int) -> str | None:
    """Why a memory cgroup of ``version`` cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "memory cgroups need root"
    if version == 1 and not (V1 / "memory.limit_in_bytes").exists():
        return f"no cgroup v1 memory controller at {V1}"
    if version == 2 and v2_root() is None:
        return "no cgroup v2 hierarchy with the memory controller (it is bound to cgroup v1 here)"
    return None


@contextmanager
def memory_cgroup(version: int, limit_bytes: int, name: str) -> Iterator[Path]:
    """A new memory cgroup with ``limit_bytes`` (swap included); yields its directory, where a
    process joins by writing its pid to ``cgroup.procs``. Removed afterwards."""
    if version == 1:
        path = V1 / name
        path.mkdir()
        (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        swap = path / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(limit_bytes))
    else:
        root = v2_root()
        assert root is not None
        subtree = root / "cgroup.subtree_control"
        if "memory" not in subtree.read_text().split():
            subtree.write_text("+memory")
        path = root / name
        path.mkdir()
        (path / "memory.max").write_text(str(limit_bytes))
        (path / "memory.swap.max").write_text("0")
    try:
        yield path
    finally:
        deadline = time.monotonic() + 10
        while (path / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.1)  # a killed process leaves its cgroup a moment later
        path.rmdir()
