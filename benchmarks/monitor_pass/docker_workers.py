"""``--launcher docker``: the run workers. Up to ``--docker-real-max-n`` runs, one real
container per STARTED/STARTING run on the local engine (``sleep infinity``, host network,
labelled with this process's id, removed at the end, also on failure, Ctrl-C or SIGTERM);
beyond, container ids only, which the fake engine reads as running. Each such run is tagged
``docker/container_id`` as DockerRunLauncher tags the runs it launches."""

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dagster import DagsterInstance, RunsFilter
from dagster._core.storage.dagster_run import DagsterRun

from benchmarks.monitor_pass.measure import say

LABEL = "dagster-run-monitor-bench"  # value: the id of the benchmark process that owns it
IMAGE = "dagster-run-monitor-worker:bookworm"  # local only: never pulled
ENGINE_HOST = "unix:///tmp/dagster-run-monitor-docker/docker.sock"  # scripts/docker-engine
CONTAINER_TAG = "docker/container_id"  # dagster_docker's DOCKER_CONTAINER_ID_TAG
THREADS = 8  # containers created, killed or removed at a time
MODULE = "benchmarks.docker_launcher"
CRASHED: dict[str, str] = {}  # run id -> the id of its container that crashed

WorkerTags = Callable[[], dict[str, str]]


def real_engine(args: Any, n: int) -> bool:
    return args.launcher == "docker" and n <= args.docker_real_max_n


def launcher_config(args: Any, n: int) -> dict[str, Any]:
    """DockerRunLauncher's config: resumed workers run ``sleep infinity`` in the local image
    (the entrypoint ignores the dagster command) on the host network, labelled as ours."""
    config: dict[str, Any] = {
        "image": IMAGE,
        "network": "host",
        "container_kwargs": {
            "entrypoint": ["/bin/sh", "-c", "sleep infinity"],
            "labels": {LABEL: str(os.getpid())},
        },
    }
    if real_engine(args, n):
        return {"module": MODULE, "class": "EngineDockerRunLauncher", "config": config}
    config["latency_seconds"] = args.latency
    return {"module": MODULE, "class": "LatencyDockerRunLauncher", "config": config}


def engine_client() -> Any:
    import docker

    os.environ.setdefault("DOCKER_HOST", ENGINE_HOST)
    return docker.from_env()


def _each(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``function`` of each item, ``THREADS`` at a time; on Ctrl-C the items not begun are
    dropped (the containers made so far are removed by ``docker_workers``)."""
    pool = ThreadPoolExecutor(THREADS)
    try:
        return list(pool.map(function, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def docker_workers(args: Any, n: int, workers: int) -> Iterator[WorkerTags | None]:
    """The tags of ``workers`` runs' containers, one per call; None for other launchers."""
    if args.launcher != "docker":
        yield None
        return
    if not real_engine(args, n):
        from dagster_run_monitor_tests.support.fake_docker import ENGINE

        try:
            yield lambda: {CONTAINER_TAG: uuid.uuid4().hex + uuid.uuid4().hex}
        finally:
            if ENGINE.unexpected:
                say(f"  the fake docker client was asked for {sorted(set(ENGINE.unexpected))}")
            ENGINE.forget()
        return
    client = engine_client()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        client.images.get(IMAGE)  # raises ImageNotFound: start scripts/docker-engine
        _remove(client, stale=True)
        ids = iter(_create(client, workers))
        yield lambda: {CONTAINER_TAG: next(ids)}
    finally:
        CRASHED.clear()
        _remove(client)
        signal.signal(signal.SIGTERM, previous)
        client.close()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _create(client: Any, count: int) -> list[str]:
    labels = {LABEL: str(os.getpid())}
    started = time.perf_counter()

    def one(_: int) -> str:
        container = client.api.create_container(
            IMAGE,
            ["sleep", "infinity"],
            labels=labels,
            host_config=client.api.create_host_config(network_mode="host"),
        )
        client.api.start(container["Id"])
        return container["Id"]

    ids = _each(one, range(count))
    seconds = time.perf_counter() - started
    say(f"  {count} containers created and started in {seconds:.0f}s ({count / seconds:.1f}/s)")
    return ids


def _remove(client: Any, stale: bool = False) -> None:
    """Our containers (``stale``: those of benchmark processes that are gone)."""
    found = client.api.containers(all=True, filters={"label": LABEL})
    owners = {c["Id"]: c["Labels"][LABEL] for c in found}
    mine = str(os.getpid())
    if stale:
        doomed = [cid for cid, owner in owners.items() if not _alive(owner)]
    else:
        doomed = [cid for cid, owner in owners.items() if owner == mine]
    if doomed:
        started = time.perf_counter()
        _each(lambda cid: client.api.remove_container(cid, force=True), doomed)
        seconds = time.perf_counter() - started
        say(f"  {len(doomed)}{' stale' if stale else ''} containers removed in {seconds:.0f}s")


def _alive(pid: str) -> bool:
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


def _runs(instance: DagsterInstance, run_ids: Sequence[str]) -> dict[str, DagsterRun]:
    records = instance.get_run_records(filters=RunsFilter(run_ids=list(run_ids)))
    return {r.dagster_run.run_id: r.dagster_run for r in records}


def crash_workers(instance: DagsterInstance, run_ids: Sequence[str]) -> None:
    """The runs' containers die: SIGKILL through the engine (``docker kill``: exited, exit
    code 137), or, on the fake engine, exited OOMKilled with exit code 137."""
    runs = _runs(instance, run_ids)
    crashed = {run_id: runs[run_id].tags[CONTAINER_TAG] for run_id in run_ids}
    CRASHED.update(crashed)
    if not _is_real(instance):
        from dagster_run_monitor_tests.support.fake_docker import ENGINE

        for container_id in crashed.values():
            ENGINE.put_state(container_id)
        return
    client = engine_client()
    try:
        _each(lambda cid: client.api.kill(cid, signal="SIGKILL"), list(crashed.values()))
        deadline = time.monotonic() + 60
        left = list(crashed.values())
        while left and time.monotonic() < deadline:
            states = _each(lambda cid: client.api.inspect_container(cid)["State"], left)
            left = [cid for cid, s in zip(left, states, strict=True) if s["Status"] != "exited"]
            wrong = [s for s in states if s["Status"] == "exited" and s["ExitCode"] != 137]
            assert not wrong, f"killed containers exited with {wrong[:1]}"
        assert not left, f"{len(left)} containers still running 60 s after docker kill"
    finally:
        client.close()


def running_again(instance: DagsterInstance, runs: Sequence[DagsterRun]) -> set[str]:
    """The runs whose container id tag names a new container that is running."""
    fresh = {
        run.run_id: run.tags[CONTAINER_TAG]
        for run in runs
        if run.tags.get(CONTAINER_TAG) not in (None, CRASHED.get(run.run_id))
    }
    if not _is_real(instance):
        from dagster_run_monitor_tests.support.fake_docker import ENGINE

        return {run_id for run_id, cid in fresh.items() if ENGINE.state(cid) == "running"}
    client = engine_client()
    try:
        items = list(fresh.items())
        states = _each(lambda item: _status(client, item[1]), items)
        found = zip(items, states, strict=True)
        return {run_id for (run_id, _), status in found if status == "running"}
    finally:
        client.close()


def _status(client: Any, container_id: str) -> str | None:
    import docker.errors

    try:
        return client.api.inspect_container(container_id)["State"]["Status"]
    except docker.errors.NotFound:
        return None


def _is_real(instance: DagsterInstance) -> bool:
    return type(instance.run_launcher).__name__ == "EngineDockerRunLauncher"
