"""A code location for the real-cluster tests: steps as Kubernetes Jobs (k8s_job_executor,
in-cluster config, as in a Helm deployment), and run workers that die in chosen ways."""

import os
import time

from dagster import Definitions, OpExecutionContext, in_process_executor, job, op
from dagster_k8s import k8s_job_executor

from dagster_run_monitor.demo_job import extract, load, report

STEP_SECONDS = float(os.environ.get("K8S_TEST_STEP_SECONDS", "20"))

# Step pods reach the API server through their service account token and the in-cluster
# config (KUBERNETES_SERVICE_HOST=127.0.0.1), as step pods of a Helm deployment do.
steps_in_pods = k8s_job_executor.configured(
    {"load_incluster_config": True, "kubeconfig_file": None}, name="k8s_in_cluster"
)


@op
def transform(context: OpExecutionContext, upstream: str) -> str:
    """The step during which the tests kill the run worker."""
    context.log.info(f"transform: working for {STEP_SECONDS:g}s")
    time.sleep(STEP_SECONDS)
    return "transform"


@job(executor_def=steps_in_pods)
def k8s_steps():
    report(load(transform(extract())))


@op
def sleep_long() -> None:
    time.sleep(600)


@job(executor_def=steps_in_pods)
def k8s_sleeps():
    sleep_long()


@op
def exit_the_worker() -> None:
    print("run worker about to exit with code 3", flush=True)
    os._exit(3)  # in_process: the op runs in the run worker's container


@job(executor_def=in_process_executor)
def k8s_dies():
    exit_the_worker()


@op
def allocate_500mi(context: OpExecutionContext) -> None:
    """Needs 500 MiB on every attempt: OOMKilled under a 400Mi limit, fine under 1000Mi."""
    hog = bytearray(500 << 20)
    for i in range(0, len(hog), 4096):  # touch every page
        hog[i] = 1
    context.log.info(f"allocated {len(hog) >> 20} MiB")


@job(executor_def=in_process_executor)
def k8s_oom():
    allocate_500mi()


def _container_memory() -> str:
    """The container's memory cgroup as the kernel counts it (v1, else v2), for the log."""
    for used, limit in (
        ("memory/memory.usage_in_bytes", "memory/memory.limit_in_bytes"),
        ("memory.current", "memory.max"),
    ):
        try:
            with open(f"/sys/fs/cgroup/{used}") as u, open(f"/sys/fs/cgroup/{limit}") as m:
                return f"{int(u.read()) >> 20} MiB of {m.read().strip()} bytes"
        except (OSError, ValueError):
            continue
    return "unknown"


@op(config_schema={"megabytes": int, "hold_seconds": float})
def touch_memory(context: OpExecutionContext) -> int:
    """Allocates ``megabytes`` MB in the run worker, writes every page, and holds them
    ``hold_seconds`` (for its watcher to sample); logs the container's memory before and
    after."""
    before = _container_memory()
    hog = bytearray(context.op_config["megabytes"] * 10**6)
    for i in range(0, len(hog), 4096):
        hog[i] = 1
    context.log.info(
        f"touched {len(hog)} bytes; the container's memory: {before} -> {_container_memory()}"
    )
    time.sleep(context.op_config["hold_seconds"])
    return len(hog)


@job(executor_def=in_process_executor)
def k8s_touch():
    touch_memory()


defs = Definitions(jobs=[k8s_steps, k8s_sleeps, k8s_dies, k8s_oom, k8s_touch])
