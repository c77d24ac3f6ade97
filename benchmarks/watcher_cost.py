"""What heartbeats cost a worker: the watcher process beside it (memory, CPU), the sampling
thread inside it (CPU per sample), and the watcher's reading of the worker's memory (per
sample: its memory cgroup, where it has one with a limit; else its process tree, found by a
scan of /proc at most once a minute). ``python -m benchmarks.watcher_cost [--seconds 120]
[--no-bytecode]``. The watcher's modules are first compiled to bytecode, as ``pip install``
does (without it, as under ``PYTHONDONTWRITEBYTECODE``, each watcher compiles
``memory_reader`` from its source: about 0.7 MB more USS).

The watcher is started exactly as a run worker starts it (``worker.beats.Heartbeat``), by this
process standing in for the worker, against a real run storage: SQLite in a temporary folder,
and PostgreSQL on 127.0.0.1:5432 (a database of its own, dropped at the end)."""

import argparse
import compileall
import os
import subprocess
import tempfile
import time
import timeit
from pathlib import Path

from dagster import instance_for_test

from benchmarks.monitor_pass.storage import scratch_database
from dagster_run_monitor.worker import memory_reader
from dagster_run_monitor.worker.beats import Heartbeat, sample
from dagster_run_monitor.worker.memory_reader import V1_MEMORY, MemoryReader, descendants

DATABASE = "run_monitor_watcher_cost"


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    """The process's CPU time, in nanoseconds from the scheduler (``/proc/<pid>/schedstat``),
    else in clock ticks from ``stat`` (10 ms: too coarse for a few beats)."""
    try:
        with open(f"/proc/{pid}/schedstat") as schedstat:
            return int(schedstat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(storage: str, url: str, seconds: float, interval: float) -> str:
    overrides = {}
    if storage == "postgres":
        overrides = {"storage": {"postgres": {"postgres_url": url}}}
    overrides["run_monitoring"] = {"enabled": True}
    with instance_for_test(overrides=overrides) as instance:
        beat = Heartbeat(instance, "benchmark-run", "run", interval)
        time.sleep(2)  # started and connected
        pid = beat.process.pid
        cpu_before, began = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        cpu = cpu_seconds(pid) - cpu_before
        elapsed = time.monotonic() - began
        mem = memory_kb(pid)
        beat.stop()
    uss = (mem["Private_Clean"] + mem["Private_Dirty"]) / 1024
    return (
        f"{storage}: watcher USS {uss:.1f} MB, PSS {mem['Pss'] / 1024:.1f} MB, RSS"
        f" {mem['Rss'] / 1024:.1f} MB; CPU {cpu * 1e3:.1f} ms in {elapsed:.0f} s ="
        f" {100 * cpu / elapsed:.4f}% of a core (interval {interval:g} s)"
    )


def per_call(call, number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=5)) / number


def memory_samples() -> str:
    """Seconds a memory sample takes: process tree (this process), cgroup v1 (root: a child in
    a cgroup of its own with a limit), and one scan of /proc."""
    tree = MemoryReader(os.getpid(), skip=0)
    tree.sample()  # the tree found once
    processes = sum(name.isdigit() for name in os.listdir("/proc"))
    parts = [
        f"process tree {per_call(tree.sample, 1000) * 1e3:.3f} ms",
        f"a scan of /proc ({processes} processes, at most once a minute)"
        f" {per_call(lambda: descendants(os.getpid(), 0), 20) * 1e3:.2f} ms",
    ]
    if os.geteuid() == 0 and Path(V1_MEMORY, "memory.limit_in_bytes").exists():
        cgroup = Path(tempfile.mkdtemp(prefix="run-monitor-cost-", dir=V1_MEMORY))
        child = subprocess.Popen(["sleep", "300"])
        try:
            (cgroup / "memory.limit_in_bytes").write_text(str(2**30))
            (cgroup / "cgroup.procs").write_text(str(child.pid))
            reader = MemoryReader(child.pid, skip=0)
            assert reader.sample()["limit"] == 2**30
            parts.insert(0, f"cgroup v1 {per_call(reader.sample, 1000) * 1e3:.3f} ms")
        finally:
            child.kill()
            child.wait()
            time.sleep(0.2)
            cgroup.rmdir()
    return "memory sample: " + "; ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--interval", type=float, default=30)
    p.add_argument("--no-bytecode", action="store_true", help="leave the modules uncompiled")
    args = p.parse_args()
    if not args.no_bytecode:
        compileall.compile_dir(str(Path(memory_reader.__file__).parent), quiet=1)
    with scratch_database(DATABASE) as url:
        for storage in ("sqlite", "postgres"):
            print(measure(storage, url, args.seconds, args.interval), flush=True)
    per_sample = min(timeit.repeat(lambda: sample(0, {"load"}), number=100, repeat=5)) / 100
    print(
        f"sampling thread: {per_sample * 1e3:.2f} ms a sample (this process's threads), once per"
        f" interval = {100 * per_sample / args.interval:.4f}% of a core at {args.interval:g} s"
    )
    print(memory_samples())


if __name__ == "__main__":
    main()
