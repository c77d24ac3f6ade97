"""A code location for the real-cluster step-retry tests: steps as Kubernetes Jobs
(k8s_job_executor, in-cluster config, as in a Helm deployment) whose step pods die once.

Each op that dies does so on its run group's first run only (``root_run_id`` is None there), so
the monitor's retry from failure, a new run of the group, succeeds."""

import os
import signal
import time
from typing import Any

from dagster import Definitions, Field, OpExecutionContext, Permissive, job, op
from dagster_k8s import k8s_job_executor

K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster_k8s's USER_DEFINED_K8S_CONFIG_KEY


def _in_cluster(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "load_incluster_config": True, "kubeconfig_file": None}


# As k8s_jobs.steps_in_pods, but a function of the run config's ``per_step_k8s_config``: an
# executor configured with a plain dict ignores its run config, and the memory oom_memory
# gives a retry's step would never reach the step's pod.
steps_in_pods = k8s_job_executor.configured(
    _in_cluster,
    config_schema={"per_step_k8s_config": Field(Permissive(), is_required=False)},
    name="k8s_in_cluster_per_step",
)


def first_run(context: OpExecutionContext) -> bool:
    return context.run.root_run_id is None


@op
def first(context: OpExecutionContext) -> int:
    return 1


SMALL = {"limits": {"memory": "200Mi"}, "requests": {"memory": "100Mi"}}


@op(tags={K8S_CONFIG_TAG: {"container_config": {"resources": SMALL}}})
def oom_once(context: OpExecutionContext, value: int) -> int:
    """Touches 400 MiB under a 200Mi limit on the group's first run: the OOM killer."""
    if first_run(context):
        hog = bytearray(400 << 20)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
    return value + 1


@op
def slow_once(context: OpExecutionContext, value: int) -> int:
    """Works for 5 minutes on the group's first run (its pod is deleted meanwhile)."""
    if first_run(context):
        context.log.info("slow_once: working")
        time.sleep(300)
    return value + 1


@op(tags={K8S_CONFIG_TAG: {"job_spec_config": {"backoff_limit": 1}}})
def lost_once(context: OpExecutionContext, value: int) -> int:
    """On the group's first run, deaf to SIGTERM (as a process busy in native code, or on a
    node that is gone, writes nothing when its pod goes): its step never ends when its pod is
    deleted; the Job's replacement pod (backoff_limit 1) exits 0 in ``verify_step``
    (dagster-io/dagster#33755)."""
    if first_run(context):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        context.log.info("lost_once: working, deaf to SIGTERM")
        time.sleep(300)
    return value + 1


@op
def fails_while_worker_down(context: OpExecutionContext, value: int) -> int:
    """Exits 3 once the monitor has seen its run worker dead (so its Job fails while the run
    has no worker); succeeds when run again."""
    deadline = time.monotonic() + 120
    while first_run(context) and time.monotonic() < deadline:
        messages = [e.message for e in context.instance.all_logs(context.run_id)]
        if any(m.startswith("Detected run worker status") for m in messages):
            os._exit(3)
        time.sleep(0.5)
    return value + 1


@job(executor_def=steps_in_pods)
def step_oom_once():
    oom_once(first())


@job(executor_def=steps_in_pods)
def step_deleted_once():
    slow_once(first())


@job(executor_def=steps_in_pods)
def step_lost_once():
    lost_once(first())


@job(executor_def=steps_in_pods)
def step_fails_while_worker_down():
    fails_while_worker_down(first())


defs = Definitions(
    jobs=[step_oom_once, step_deleted_once, step_lost_once, step_fails_while_worker_down]
)
