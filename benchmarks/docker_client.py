"""What DockerRunLauncher's new docker client per call costs, on the engine of DOCKER_HOST
(scripts/docker-engine): a container read through a new client (docker-py first asks the
engine ``GET /version``), through one client reused, and through a new client with its API
version pinned. Wall time per read, the engine's CPU (dockerd and containerd, with their
children) and the processes it starts, per read.

    DOCKER_HOST=unix:///tmp/dagster-run-monitor-docker/docker.sock \\
        .venv/bin/python -m benchmarks.docker_client
"""

import os
import time
from collections.abc import Callable

import docker

IMAGE = "dagster-run-monitor-worker:bookworm"
READS = 300


def engine_cpu_seconds() -> float:
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] in ("dockerd", "containerd"):
            fields = stat.rsplit(")", 1)[1].split()
            total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
    return total


def processes_started() -> int:
    with open("/proc/stat") as f:
        return int(next(line for line in f if line.startswith("processes")).split()[1])


def main() -> None:
    client = docker.from_env()
    container = client.containers.run(
        IMAGE, ["sleep", "infinity"], network_mode="host", detach=True
    )
    version = client.version()["ApiVersion"]
    reads: dict[str, Callable[[], object]] = {
        "a new client (as DockerRunLauncher)": lambda: docker.client.from_env().containers.get(
            container.id
        ),
        "one client reused (our daemon)": lambda: client.containers.get(container.id),
        "a new client, API version pinned": lambda: docker.client.from_env(
            version=version
        ).containers.get(container.id),
    }
    try:
        for label, read in reads.items():
            cpu, started, began = engine_cpu_seconds(), processes_started(), time.perf_counter()
            for _ in range(READS):
                read()
            wall = (time.perf_counter() - began) / READS * 1000
            engine = (engine_cpu_seconds() - cpu) / READS * 1000
            forks = (processes_started() - started) / READS
            print(f"{label}: {wall:.1f} ms, engine CPU {engine:.1f} ms, {forks:.1f} processes")
    finally:
        container.remove(force=True)


if __name__ == "__main__":
    main()
