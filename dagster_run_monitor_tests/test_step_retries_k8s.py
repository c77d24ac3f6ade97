"""Step workers that die on Kubernetes for real (issue 30): the one-node cluster of
scripts/k8s-cluster, Dagster's K8sRunLauncher and k8s_job_executor, Postgres storage, our
daemon as the stock ``dagster-daemon run`` with a workspace (it re-executes failed runs from
failure as new runs of their group). Step pods are OOM-killed by the kernel, deleted through
the API, or deleted while deaf to SIGTERM with a Job that replaces them
(dagster-io/dagster#33755). Each test asserts what an operator checks: the runs' statuses,
tags and events, the step pods' memory as the API shows it, and nothing left running."""

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.core import constants as c
from dagster_run_monitor_tests import test_k8s_cluster as k8s_tests
from dagster_run_monitor_tests.support.runs import first_lines
from dagster_run_monitor_tests.support.subprocesses import wait_until
from dagster_run_monitor_tests.support.workspace import (
    create_run,
    group,
    settled,
    workspace_daemon,
    write_workspace,
)
from dagster_run_monitor_tests.test_k8s_cluster import (
    NAMESPACE,
    Cluster,
    log,
    story,
    wait_for_step,
)

pytestmark = [pytest.mark.k8s_cluster, pytest.mark.slow, pytest.mark.postgres]
cluster = k8s_tests.cluster  # the fixtures: the namespace, and a home per test
k8s_home = k8s_tests.k8s_home

JOBS = Path(__file__).with_name("step_k8s_jobs.py")
LOCATION = "k8s_steps"
LIVE = ("Pending", "Running")


@contextmanager
def step_daemon(
    k8s_home: Callable[..., tuple], **run_monitoring: Any
) -> Iterator[tuple[Path, DagsterInstance, Any]]:
    """Step retries on, a workspace loading step_k8s_jobs.py (for the test to create runs
    with a remote origin, and for the daemon to re-execute them), and the daemon on it."""
    settings = {"step_retries": {"enabled": True, "max_retries": 2}, "max_resume_run_attempts": 0}
    home, instance = k8s_home(**{**settings, **run_monitoring})
    write_workspace(home, JOBS, LOCATION)
    with workspace_daemon(home, instance) as context:
        yield home, instance, context


def launch(instance: DagsterInstance, context: Any, job_name: str) -> DagsterRun:
    run = create_run(instance, context, LOCATION, JOBS, job_name)
    instance.launch_run(run.run_id, context.create_request_context())
    return run


def settle(instance: DagsterInstance, root: DagsterRun, runs: int, timeout: float = 240):
    """The run group once it has ``runs`` runs, the last finished (and decided, if failed)."""
    try:
        return wait_until(lambda: settled(instance, root, runs), timeout, f"{runs} runs to end", 1)
    except AssertionError as timed_out:
        raise AssertionError(
            f"{timed_out}; the group:\n{told(instance, group(instance, root))}"
        ) from None


def step_starts(instance: DagsterInstance, runs: list[DagsterRun]) -> list[Counter]:
    return [
        Counter(
            e.step_key for e in instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_START)
        )
        for r in runs
    ]


def step_pods(cluster: Cluster, run_id: str, step: str) -> list[Any]:
    pods = cluster.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"dagster/run-id={run_id},dagster/op={step}"
    ).items
    return sorted(pods, key=lambda pod: pod.metadata.creation_timestamp)


def running_pod(cluster: Cluster, run_id: str, step: str) -> str:
    """The name of the step's pod, once it runs."""
    return wait_until(
        lambda: next(
            (
                p.metadata.name
                for p in step_pods(cluster, run_id, step)
                if p.status.phase == "Running"
            ),
            None,
        ),
        60,
        f"step {step}'s pod to run",
        interval=0.5,
    )


def nothing_running(cluster: Cluster, runs: list[DagsterRun], timeout: float = 90) -> None:
    """No Job of the group active, no pod pending or running."""

    def left() -> list[str]:
        found = []
        for run in runs:
            found += [
                f"Job {n}" for n, state in cluster.jobs(run.run_id).items() if state == "active"
            ]
            found += [
                f"pod {p.metadata.name} {p.status.phase}"
                for p in cluster.pods(run.run_id)
                if p.status.phase in LIVE
            ]
        return found

    try:
        wait_until(lambda: not left(), timeout, "the group's Jobs and pods to end", interval=1)
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; left: {left()}") from None


def told(instance: DagsterInstance, runs: list[DagsterRun]) -> str:
    """The group's runs and their last events, for an assertion's message."""
    return "\n".join(f"run {r.run_id} {r.status}:\n{story(instance, r.run_id, 40)}" for r in runs)


def died(instance: DagsterInstance, run_id: str) -> list[str]:
    """The dead and lost step workers' events, their first lines (a stack may follow)."""
    found = [m for m in log(instance, run_id) if "worker died" in m or "worker lost" in m]
    return first_lines(found)


# --- 1. a step pod OOM-killed by the kernel ---------------------------------------------------


def test_an_oom_killed_step_pod_is_retried_with_more_memory_and_succeeds(k8s_home, cluster):
    """oom_once touches 400 MiB under its op's 200Mi limit (request 100Mi) on the group's first
    run: the retry's step pod gets 400Mi (request 200Mi) through per_step_k8s_config."""
    oom = {"multiplier": 2, "max": "2Gi"}
    with step_daemon(k8s_home, oom_memory=oom) as (_, instance, context):
        root = launch(instance, context, "step_oom_once")
        failed, retry = settle(instance, root, 2)
    assert (failed.status, retry.status) == (S.FAILURE, S.SUCCESS), told(instance, [failed, retry])
    [killed] = step_pods(cluster, failed.run_id, "oom_once")
    assert died(instance, failed.run_id) == [
        f"Step 'oom_once' worker died (cause: oom_killed, pod {killed.metadata.name}: container"
        " 'dagster' terminated: OOMKilled, exit code 137)."
    ]
    assert (
        "Retrying from failure with memory limit 400Mi for step 'oom_once' (was 200Mi: 2 x the"
        " killed limit), as step 'oom_once' died (oom_killed)." in log(instance, failed.run_id)
    )
    assert failed.tags[c.STEP_RETRY_TAG] == "retry 1"
    assert failed.tags[c.AUTO_RETRY_RUN_ID_TAG] == retry.run_id
    assert retry.tags[c.REASON_TAG] == c.REASON_STEP_CRASH
    assert retry.tags[c.CRASH_CAUSE_TAG] == "oom_killed"
    assert retry.tags[c.RETRY_NUMBER_TAG] == "1"
    assert retry.tags[c.ROOT_RUN_TAG] == retry.tags[c.PARENT_RUN_TAG] == failed.run_id
    assert retry.run_config["execution"]["config"]["per_step_k8s_config"] == {
        "oom_once": {
            "container_config": {
                "resources": {"limits": {"memory": "400Mi"}, "requests": {"memory": "200Mi"}}
            }
        }
    }
    killed_resources = killed.spec.containers[0].resources
    assert (killed_resources.limits["memory"], killed_resources.requests["memory"]) == (
        "200Mi",
        "100Mi",
    )
    [raised] = step_pods(cluster, retry.run_id, "oom_once")
    resources = raised.spec.containers[0].resources
    assert (resources.limits["memory"], resources.requests["memory"]) == ("400Mi", "200Mi")
    assert step_starts(instance, [failed, retry]) == [
        Counter({"first": 1, "oom_once": 1}),
        Counter({"oom_once": 1}),  # first, done, is not run again
    ]
    nothing_running(cluster, [failed, retry])


# --- 2. a step pod deleted mid-step -----------------------------------------------------------


def test_a_deleted_step_pod_is_retried_uncounted_and_succeeds(k8s_home, cluster):
    """slow_once's pod is deleted mid-step: SIGTERM interrupts the op (the step fails with
    DagsterExecutionInterruptedError), and the Job controller of Kubernetes 1.20 replaces the
    deleted pod even with backoff_limit 0 (a deleted pod is not counted failed there)."""
    policy = [{"causes": ["deleted", "preempted"], "action": "resume_uncounted"}]
    with step_daemon(k8s_home, crash_policy=policy) as (_, instance, context):
        root = launch(instance, context, "step_deleted_once")
        wait_for_step(instance, root.run_id, "slow_once")
        pod = running_pod(cluster, root.run_id, "slow_once")
        cluster.core.delete_namespaced_pod(pod, NAMESPACE)  # as a preemption or a drain does
        failed, retry = settle(instance, root, 2)
    assert (failed.status, retry.status) == (S.FAILURE, S.SUCCESS), told(instance, [failed, retry])
    assert step_starts(instance, [failed, retry]) == [
        Counter({"first": 1, "slow_once": 1}),
        Counter({"slow_once": 1}),
    ]
    nothing_running(cluster, [failed, retry])
    [message] = died(instance, failed.run_id)
    assert failed.tags[c.STEP_RETRY_TAG] == "retry 1"
    assert retry.tags[c.REASON_TAG] == c.REASON_STEP_CRASH
    # The Job (Kubernetes 1.20) replaced the deleted pod: the cause is read from the pod that
    # ran the step, not from its replacement.
    assert message.startswith("Step 'slow_once' worker died (cause: deleted"), told(
        instance, [failed, retry]
    )
    assert (
        "Retrying from failure, as step 'slow_once' died (deleted, not counted against"
        " step_retries.max_retries)." in log(instance, failed.run_id)
    )
    assert retry.tags[c.UNCOUNTED_STEP_RETRY_TAG] == "true"
    assert retry.tags[c.CRASH_CAUSE_TAG] == "deleted"


# --- 3. dagster-io/dagster#33755: a replacement pod exits 0, the step never ends -------------


def test_a_lost_step_whose_job_replaced_its_pod_is_failed_and_retried(k8s_home, cluster):
    """lost_once's Job has backoff_limit 1 and its process ignores SIGTERM: its pod force-deleted
    (killed, not counted failed), the Job's replacement pod sees the step already started and
    exits 0; the Job succeeds and, without the monitor, the step stays IN_PROGRESS forever. Its
    heartbeats stop while the run worker's go on and its Job has no live pod: the run is failed
    (step_lost) and retried."""
    beats = {"interval_seconds": 2, "timeout_seconds": 10}
    with step_daemon(k8s_home, worker_heartbeats=beats) as (_, instance, context):
        root = launch(instance, context, "step_lost_once")
        wait_for_step(instance, root.run_id, "lost_once")
        wait_until(
            lambda: "lost_once: working, deaf to SIGTERM" in log(instance, root.run_id),
            60,
            "the op to ignore SIGTERM",
        )
        pod = running_pod(cluster, root.run_id, "lost_once")
        # Force-deleted, as the pod GC deletes the pods of a node that is gone: the Job does
        # not count it failed (dagster_k8s's health check would see that) but replaces it.
        deleted_at = time.time()
        cluster.core.delete_namespaced_pod(pod, NAMESPACE, grace_period_seconds=0)
        failed, retry = settle(instance, root, 2)
    messages = log(instance, failed.run_id)
    assert (failed.status, retry.status) == (S.FAILURE, S.SUCCESS), told(instance, [failed, retry])
    assert any(
        m.startswith("Attempted to run lost_once again even though it was already started.")
        for m in messages
    ), story(instance, failed.run_id, 40)  # the replacement pod's verify_step
    lost = [m for m in first_lines(messages) if m.startswith("Step 'lost_once' worker lost")]
    why = (
        r"Step 'lost_once' worker lost \(cause: worker_lost, no heartbeat from the step worker of"
        r" 'lost_once' \(host \S+, pid \d+\) for \d+ seconds\), and the step never ended"
    )
    assert len(lost) == 2, told(instance, [failed, retry])
    assert re.fullmatch(why + ": canceling the run so that it does not hang.", lost[0]), lost
    assert re.fullmatch(why + ".", lost[1]), lost
    assert not [m for m in messages if m.startswith("Step worker lost:")]  # no mere warning
    assert died(instance, failed.run_id)[-1] == (
        "Step 'lost_once' worker died (cause: worker_lost, its worker's heartbeats stopped and"
        " its worker was gone)."
    )
    assert "Retrying from failure, as step 'lost_once' died (worker_lost)." in messages
    canceled_at = next(
        e.timestamp
        for e in instance.all_logs(failed.run_id)
        if e.message.startswith("Step 'lost_once' worker lost")
    )
    print(f"\nstep pod force-deleted -> run canceled: {canceled_at - deleted_at:.1f} s")
    assert failed.tags[c.REASON_TAG] == c.REASON_STEP_LOST
    assert failed.tags[c.LOST_STEP_TAG] == "lost_once"
    assert failed.tags[c.STEP_RETRY_TAG] == "retry 1"
    assert retry.tags[c.CRASH_CAUSE_TAG] == "worker_lost"
    assert retry.tags[c.REASON_TAG] == c.REASON_STEP_CRASH
    assert step_starts(instance, [failed, retry]) == [
        Counter({"first": 1, "lost_once": 1}),
        Counter({"lost_once": 1}),
    ]
    nothing_running(cluster, [failed, retry])


# --- 4. the run worker killed while a step Job fails ------------------------------------------


def test_a_step_job_that_fails_while_the_run_worker_is_down(k8s_home, cluster):
    """The run worker killed, then the step Job fails before the resumed worker looks: the
    resumed worker relaunches the step under the same Job name, which still exists (409
    Conflict, Dagster's behaviour): the run fails with an engine error while the step never
    ended. The monitor reads the step Job's pod (exit code 3) and retries the step from
    failure in a new run (a new Job name): SUCCESS, each step run once."""
    with step_daemon(k8s_home, max_resume_run_attempts=1) as (_, instance, context):
        root = launch(instance, context, "step_fails_while_worker_down")
        step = "fails_while_worker_down"
        wait_for_step(instance, root.run_id, step)
        running_pod(cluster, root.run_id, step)
        cluster.worker_container(root.run_id).kill()
        wait_until(lambda: instance.get_run_by_id(root.run_id).is_finished, 150, "the run's end", 1)
        messages = log(instance, root.run_id)
        assert messages.count(c.RESUME_RUN_LOG_MESSAGE) == 1, told(instance, [root])
        assert (
            f"Including step {step} in the new run since it is not currently running: Discovered"
            f" failed Kubernetes job {step_job(cluster, root.run_id, step)} for step {step}."
        ) in messages
        # The resumed worker relaunched the step under the same Job name, which still exists
        # (409): the run failed while the step never ended. The monitor reads the step's
        # Job (exit code 3) and retries it.
        error = run_failure_error(instance, root.run_id)
        assert "(409)" in error and "already exists" in error, error[-2000:]
        assert step_starts(instance, [root]) == [Counter({"first": 1, step: 1})]
        failed, retry = settle(instance, root, 2)
        assert (failed.status, retry.status) == (S.FAILURE, S.SUCCESS), told(instance, [root])
        [message] = died(instance, failed.run_id)
        assert message.startswith(
            f"Step '{step}' worker died (cause: exit_code, pod "
        ) and message.endswith("exit code 3)."), message
        assert retry.tags[c.CRASH_CAUSE_TAG] == "exit_code"
        assert step_starts(instance, [failed, retry]) == [
            Counter({"first": 1, step: 1}),
            Counter({step: 1}),
        ]
    nothing_running(cluster, [failed, retry])


def step_job(cluster: Cluster, run_id: str, step: str) -> str:
    [pod] = step_pods(cluster, run_id, step)[:1]
    return pod.metadata.labels["job-name"]


def run_failure_error(instance: DagsterInstance, run_id: str) -> str:
    """The error of the run's failure event ('' without one)."""
    events = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    error = events[-1].dagster_event.event_specific_data.error if events else None
    return error.to_string() if error else ""
