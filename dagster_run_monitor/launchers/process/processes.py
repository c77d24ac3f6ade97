"""Local processes by pid, safe against pid reuse and zombies (Linux /proc, POSIX fallback)."""

import os
import signal
import socket
import time

_HOST = socket.gethostname()


def hostname() -> str:
    return _HOST


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: fall back to a signal-0 probe, without reuse detection
        return 0 if _exists(pid) else None
    state, ticks = fields[0], int(fields[19])
    return None if state in ("Z", "X") else ticks


def is_alive(pid: int, ticks: int | None = None) -> bool:
    """True if ``pid`` runs and, when ``ticks`` is given, is the process that started then."""
    current = start_ticks(pid)
    return current is not None and (not ticks or not current or current == ticks)


def oom_kills() -> int | None:
    """The kernel's count of processes its OOM killer ended since boot (None: not Linux)."""
    try:
        with open("/proc/vmstat") as vmstat:
            for line in vmstat:
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def stop_group(pid: int, ticks: int | None, grace_seconds: float) -> str:
    """SIGTERM the process group led by ``pid``, SIGKILL it after the grace period.

    Returns ``"gone"`` (nothing to stop), ``"terminated"`` or ``"killed"``.
    """
    if not is_alive(pid, ticks):
        return "gone"  # the pid may belong to someone else by now: do not signal it
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not is_alive(pid, ticks):
            _signal_group(pid, signal.SIGKILL)
            return "terminated"
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)
    return "killed"


def kill_group(pid: int, ticks: int | None) -> bool:
    """SIGKILL the process group led by ``pid`` at once; False if it was not running."""
    if not is_alive(pid, ticks):
        return False
    _signal_group(pid, signal.SIGKILL)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
