"""Where the machine's CPU goes during the soak: the machine's busy time (/proc/stat), and
every process's CPU time (utime + stime from /proc), sampled every few seconds, summed by kind
of process (a daemon, a code server, a run worker, a step process, ...). A process is counted
from its start if it was first seen after the first sample; what it spent after the last
sample it was seen in is missed."""

import os
from collections import Counter
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
# The first needle found in a process's command line names its kind.
KINDS = (
    (b"dagster-daemon", "daemon"),
    (b"execute_step", "step process"),
    (b"execute_run", "run worker"),
    (b"resume_run", "run worker"),
    (b"multiprocessing", "multiprocess child"),
    (b"api grpc", "code server"),
    (b"code-server", "code server"),
    (b"dagster_run_monitor", "watcher"),
    (b"postgres", "PostgreSQL"),
    (b"kube", "Kubernetes"),
    (b"etcd", "Kubernetes"),
    (b"containerd", "Docker"),
    (b"dockerd", "Docker"),
    (b"benchmarks.soak", "the soak's driver"),
)


def kind_of(argv: bytes) -> str:
    for needle, kind in KINDS:
        if needle in argv:
            return kind
    return "other"


def busy_core_seconds() -> float:
    """The machine's CPU time so far, all cores, idle and iowait left out (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


Process = tuple[int, int]  # its pid and start time: a pid is reused


class CpuByKind:
    def __init__(self) -> None:
        self.first: dict[Process, float] = {}  # CPU seconds when first seen (0 if new)
        self.last: dict[Process, float] = {}
        self.kind: dict[Process, str] = {}
        self.new: set[Process] = set()  # started after the first sample
        self.started = False

    def sample(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                process = (int(entry.name), int(fields[19]))
                spent = (int(fields[11]) + int(fields[12])) / TICK
                if process not in self.kind:
                    self.kind[process] = kind_of((entry / "cmdline").read_bytes())
                    self.first[process] = 0.0 if self.started else spent
                    if self.started:
                        self.new.add(process)
            except (OSError, IndexError, ValueError):
                continue
            self.last[process] = spent
        self.started = True

    def totals(self) -> dict[str, dict[str, float]]:
        """Core-seconds and processes started, by kind."""
        seconds: Counter = Counter()
        started: Counter = Counter()
        for process, kind in self.kind.items():
            seconds[kind] += self.last[process] - self.first[process]
            started[kind] += process in self.new
        return {
            kind: {"core_seconds": round(seconds[kind], 1), "processes": started[kind]}
            for kind, _ in seconds.most_common()
        }
