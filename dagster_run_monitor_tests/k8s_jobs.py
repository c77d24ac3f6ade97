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


defs = Definitions(jobs=[k8s_steps, k8s_sleeps, k8s_dies, k8s_oom])
