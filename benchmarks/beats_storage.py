"""What heartbeats cost PostgreSQL: N workers each beating once per interval with the watcher's
own code (a connection per beat, one UPDATE), for a while. Statements per second and the
server's CPU. ``python -m benchmarks.beats_storage [--workers 1000 10000] [--seconds 60]``.

The server's CPU: the postmaster's own and its reaped children's (utime, stime, cutime, cstime
in /proc), plus its live children's, before and after."""

import argparse
import os
import threading
import time

from dagster import instance_for_test

from benchmarks.monitor_pass.storage import scratch_database
from dagster_run_monitor.core.heartbeats import beat_key, stack_key
from dagster_run_monitor.worker.watcher import Watcher

DATABASE = "run_monitor_beats_storage"


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def server_cpu() -> float:
    """CPU seconds of the PostgreSQL server: postmaster, its reaped and its live children."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip().startswith("postgres"):
                        procs[int(entry)] = _stat(int(entry))
            except OSError:
                pass
    total = 0.0
    for fields in procs.values():
        parent = int(fields[1])
        if parent not in procs:  # the postmaster: its own and its reaped children's time
            total += sum(int(f) for f in fields[11:15]) / tick
        else:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def measure(
    workers: int, url: str, seconds: float, interval: float, threads: int, hold: bool
) -> str:
    watchers = [
        Watcher(
            {
                "database": "postgres",
                "target": url,
                "key": beat_key(f"run-{i}"),
                "stack_key": stack_key(f"run-{i}"),
                "token": f"t{i}",
                "pid": os.getpid(),  # (never signaled: no row here is taken over)
                "host": "h",
                "interval": interval,
            }
        )
        for i in range(workers)
    ]
    for w in watchers:  # the first beat of each (its upsert), before measuring
        w.beat()
        if hold:  # keep a connection open (as behind a pooler), not one per beat
            w.rows.close = lambda: None  # type: ignore[method-assign]
    rate = workers / interval  # beats a second
    done = [0]
    lock = threading.Lock()
    began = time.monotonic()

    def work(k: int) -> None:
        n = k
        while True:
            due = began + n / rate
            if due - began >= seconds:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            watchers[n % workers].beat()
            with lock:
                done[0] += 1
            n += threads

    cpu = server_cpu()
    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - began
    used = server_cpu() - cpu
    return (
        f"{workers:,} workers{' (connections held)' if hold else ''}, a beat each"
        f" {interval:g} s: {done[0] / elapsed:.0f} beats/s"
        f" (wanted {rate:.0f}), PostgreSQL CPU {used:.1f} s in {elapsed:.0f} s ="
        f" {100 * used / elapsed:.1f}% of a core"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workers", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--interval", type=float, default=30)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument(
        "--hold",
        action="store_true",
        help="keep each watcher's connection open (needs workers < max_connections)",
    )
    args = p.parse_args()
    with scratch_database(DATABASE) as url:
        with instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}):
            for n in args.workers:
                print(measure(n, url, args.seconds, args.interval, args.threads, args.hold))


if __name__ == "__main__":
    main()
