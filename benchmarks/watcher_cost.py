"""What heartbeats cost a worker: the watcher process beside it (memory, CPU) and the sampling
thread inside it (CPU per sample). ``python -m benchmarks.watcher_cost [--seconds 120]``.

The watcher is started exactly as a run worker starts it (``worker.beats.Heartbeat``), by this
process standing in for the worker, against a real run storage: SQLite in a temporary folder,
and PostgreSQL on 127.0.0.1:5432 (a database of its own, dropped at the end)."""

import argparse
import os
import time
import timeit

from dagster import instance_for_test

from benchmarks.monitor_pass.storage import scratch_database
from dagster_run_monitor.worker.beats import Heartbeat, sample

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
        f" {mem['Rss'] / 1024:.1f} MB; CPU {cpu:.2f} s in {elapsed:.0f} s ="
        f" {100 * cpu / elapsed:.3f}% of a core (interval {interval:g} s)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--interval", type=float, default=30)
    args = p.parse_args()
    with scratch_database(DATABASE) as url:
        for storage in ("sqlite", "postgres"):
            print(measure(storage, url, args.seconds, args.interval), flush=True)
    per_sample = min(timeit.repeat(lambda: sample(0, {"load"}), number=100, repeat=5)) / 100
    print(
        f"sampling thread: {per_sample * 1e3:.2f} ms a sample (this process's threads), once per"
        f" interval = {100 * per_sample / args.interval:.4f}% of a core at {args.interval:g} s"
    )


if __name__ == "__main__":
    main()
