"""Our monitor with the real ``dagster_k8s.K8sRunLauncher``; only the Kubernetes API is fake.

Runs are launched for real (the launcher builds and creates the first Job), so resume and
debug info go through dagster-k8s's own code. See ``fake_k8s.py`` for what is faked.
"""

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import SimpleNamespace
from typing import Any

import dagster_k8s.client
import pytest
import sqlalchemy
from dagster import DagsterInstance, Definitions, job, op
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.events import DagsterEventType
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from kubernetes import client as k8s
from sqlalchemy.engine import Engine

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor_tests.support.fake_k8s import (
    CLUSTER,
    LOG_TIME,
    POD_LOG,
    POD_SUFFIX,
    FakeCluster,
    api_error,
    read_timeout,
)
from dagster_run_monitor_tests.support.home import monitor_instance
from dagster_run_monitor_tests.support.runs import (
    T0,
    messages,
    monitor_pass,
    report,
    status_of,
    tags_of,
)

LAUNCHER_CONFIG: dict[str, Any] = {
    "service_account_name": "dagster",
    "instance_config_map": "dagster-instance",
    "dagster_home": "/opt/dagster/dagster_home",
    "job_image": "example.com/etl:1.0",
    "job_namespace": "dagster",
    "load_incluster_config": False,
}
NAMESPACE = LAUNCHER_CONFIG["job_namespace"]
FAKE_K8S_LAUNCHER = {
    "module": "dagster_run_monitor_tests.support.fake_k8s",
    "class": "FakeClusterK8sRunLauncher",
    "config": LAUNCHER_CONFIG,
}
NO_ACTIVE_PODS = "Run has not completed but K8s job has no active pods"  # the launcher's words
# ...and the cause, from what the Job's pod says, which the monitor adds (crash_cause.py)
POD_ENDED = {
    "failed": ("oom_killed", "container 'dagster' terminated: OOMKilled, exit code 137"),
    "succeeded": ("unknown", "container 'dagster' terminated: Completed, exit code 0"),
}


def crash_health(run: DagsterRun, ended: str = "failed", attempt: int = 0) -> str:
    pod = f"{job_name(run, attempt)}-{POD_SUFFIX}"
    cause, pod_says = POD_ENDED[ended]
    return f"FAILED: '{NO_ACTIVE_PODS}' (cause: {cause}, pod {pod}: {pod_says})"


@op
def work() -> None:
    pass


@job
def k8s_job() -> None:
    work()


defs = Definitions(jobs=[k8s_job])
ORIGIN = (
    ReconstructableRepository.for_file(__file__, "defs")
    .get_reconstructable_job("k8s_job")
    .get_python_origin()
)


@pytest.fixture
def cluster(monkeypatch) -> Iterator[FakeCluster]:
    """The fake cluster, emptied. dagster-k8s's retry back-off (3 x 10 s on a 5xx) is recorded
    in ``cluster.slept`` instead of slept."""
    CLUSTER.reset()
    clock = SimpleNamespace(sleep=CLUSTER.sleep, time=time.time)
    monkeypatch.setattr(dagster_k8s.client, "time", clock)
    yield CLUSTER
    assert CLUSTER.unexpected == [], "dagster-k8s called API methods the fake does not know"


@pytest.fixture
def k8s_instance(storage, cluster) -> Callable[..., AbstractContextManager[DagsterInstance]]:
    """Factory: ``with k8s_instance(**run_monitoring) as instance`` with the K8s launcher."""
    return lambda **run_monitoring: monitor_instance(storage, run_monitoring, FAKE_K8S_LAUNCHER)


def start(instance: DagsterInstance) -> DagsterRun:
    """A run launched through the launcher (its first Job created) whose worker started it."""
    run = instance.create_run_for_job(job_def=k8s_job, job_code_origin=ORIGIN)
    instance.launch_run(run.run_id, workspace=None)  # type: ignore[arg-type]
    report(instance, run, DagsterEventType.RUN_START)
    run = instance.get_run_by_id(run.run_id)
    assert run is not None and run.status == S.STARTED
    return run


def job_name(run: DagsterRun, attempt: int = 0) -> str:
    """The launcher's Job name for the run's first worker (0) and each resume (1, 2, ...)."""
    return f"dagster-run-{run.run_id}" + (f"-{attempt}" if attempt else "")


def resumes(instance: DagsterInstance, run: DagsterRun) -> int:
    return messages(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE)


def worker_command(cluster: FakeCluster, name: str) -> list[str]:
    return cluster.jobs[name].spec.template.spec.containers[0].args[:3]


# --- a crashed worker ------------------------------------------------------------------


@pytest.mark.parametrize("ended", ["failed", "succeeded"])
def test_a_job_that_ended_under_a_started_run_is_resumed_with_a_new_job(
    k8s_instance, cluster, workspace_context, ended
):
    """``succeeded``: the worker exited 0 without ending the run; the launcher calls it FAILED."""
    with k8s_instance() as instance, workspace_context(instance) as ctx:
        run = start(instance)
        assert worker_command(cluster, job_name(run)) == ["dagster", "api", "execute_run"]
        assert monitor_pass(instance, ctx, now=T0) == []
        assert resumes(instance, run) == 0

        cluster.set_state(job_name(run), ended)
        assert monitor_pass(instance, ctx, now=T0 + 120) == []
        assert cluster.state(job_name(run, 1)) == "active"
        assert worker_command(cluster, job_name(run, 1)) == ["dagster", "api", "resume_run"]
        assert status_of(instance, run.run_id) == S.STARTED
        assert messages(instance, run.run_id)[-4:] == [
            f"Detected run worker status {crash_health(run, ended)}. Resuming run"
            f" {run.run_id} with a new worker.",
            c.RESUME_RUN_LOG_MESSAGE,
            "[FakeClusterK8sRunLauncher] Creating Kubernetes run worker job",
            "[FakeClusterK8sRunLauncher] Kubernetes run worker job created",
        ]

        assert monitor_pass(instance, ctx, now=T0 + 240) == []  # the new Job is running
        report(instance, run, DagsterEventType.RUN_SUCCESS)  # the new worker finishes the run
        cluster.set_state(job_name(run, 1), "succeeded")
        assert monitor_pass(instance, ctx, now=T0 + 360) == []
        assert status_of(instance, run.run_id) == S.SUCCESS
        assert resumes(instance, run) == 1
        assert cluster.count(run.run_id)["create_namespaced_job"] == 2


def test_a_run_resumed_by_another_daemon_during_the_pass_is_not_resumed_again(
    k8s_instance, cluster, workspace_context, monkeypatch
):
    """The pass's health checks name each Job from the resume count read at the pass's start;
    another daemon resumes the run after that read, before this pass lists the Jobs it checks.
    The claim's fresh count sees it: no second resume, no second Job."""
    with k8s_instance() as instance, workspace_context(instance) as ctx:
        run = start(instance)
        cluster.set_state(job_name(run), "failed")
        list_jobs = cluster.list_run_worker_jobs

        def another_daemon_resumes_first(namespace: str, limit: int, token: str | None):
            if resumes(instance, run) == 0:
                instance.resume_run(run.run_id, ctx.create_request_context(), 1)
            return list_jobs(namespace, limit, token)

        monkeypatch.setattr(cluster, "list_run_worker_jobs", another_daemon_resumes_first)
        assert monitor_pass(instance, ctx, now=T0 + 120) == []
        assert resumes(instance, run) == 1
        assert cluster.count(run.run_id)["create_namespaced_job"] == 2  # the launch, the resume
        assert cluster.state(job_name(run, 1)) == "active"
        assert status_of(instance, run.run_id) == S.STARTED


# --- disruptions one node cannot produce: preemption, a lost node, eviction -------------------


def test_a_lost_node_is_fenced_then_resumed_before_kubernetes_notices(
    k8s_instance, cluster, workspace_context
):
    """The worker's node is gone, but its pod still reads Running and its Job active (the
    ~5 minutes before Kubernetes notices): its heartbeats stop, so the monitor deletes that Job
    (its pods with it) and resumes the run with a new Job, without a second live worker."""
    from dagster_run_monitor.core.heartbeats import beat_key, stack_key
    from dagster_run_monitor.integration.internals import run_storage_database
    from dagster_run_monitor.worker.watcher import Watcher

    beats = {"worker_heartbeats": {"interval_seconds": 30, "timeout_seconds": 180}}
    node_worker = subprocess.Popen(["sleep", "300"])  # stands in for the worker on the node
    with k8s_instance(**beats) as instance, workspace_context(instance) as ctx:
        run = start(instance)
        database, target = run_storage_database(instance)
        watcher = Watcher(  # the beats the worker's watcher writes, from the node
            {
                "database": database,
                "target": target,
                "key": beat_key(run.run_id),
                "stack_key": stack_key(run.run_id),
                "token": "on-the-node",
                "pid": node_worker.pid,
                "host": "node-1",
                "interval": 30,
            }
        )
        watcher.beat()
        daemon = RunMonitorDaemon.from_instance(instance)
        assert monitor_pass(instance, ctx, T0, daemon) == []
        assert monitor_pass(instance, ctx, T0 + 179, daemon) == []  # (the node goes at T0)
        assert resumes(instance, run) == 0
        assert monitor_pass(instance, ctx, T0 + 180, daemon) == []
        assert cluster.state(job_name(run)) is None  # deleted, before...
        assert cluster.state(job_name(run, 1)) == "active"  # ...the resume's Job
        assert cluster.count(run.run_id)["delete_namespaced_job"] == 1
        assert resumes(instance, run) == 1
        assert status_of(instance, run.run_id) == S.STARTED
        detected = next(m for m in messages(instance, run.run_id) if m.startswith("Detected"))
        assert detected.startswith(
            "Detected run worker status FAILED: 'no heartbeat from the run worker (host node-1,"
            f" pid {node_worker.pid}) for 180 seconds' (cause: worker_lost). Resuming run"
        )
        assert tags_of(instance, run.run_id)[c.CRASH_CAUSE_TAG] == "worker_lost"
        assert monitor_pass(instance, ctx, T0 + 240, daemon) == []  # the new Job is running
        assert resumes(instance, run) == 1
        assert not watcher.beat()  # the old worker, back: its row is taken over, it stops
        assert node_worker.wait(10) == -9  # (SIGKILL)


PREEMPTED = ("", "PreemptionByScheduler", "Preempted by a higher priority pod")
NODE_LOST = ("", "DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint")
EVICTED = ("Evicted", None, "The node was low on resource: memory.")


def test_preemptions_and_lost_nodes_resume_without_using_an_attempt(
    k8s_instance, cluster, workspace_context
):
    """crash_policy resume_uncounted for preempted and node_lost: two such crashes leave the
    one attempt of max_resume_run_attempts for the OOM kill that follows; the next fails."""
    policy = [{"causes": ["preempted", "node_lost"], "action": "resume_uncounted"}]
    with (
        k8s_instance(max_resume_run_attempts=1, crash_policy=policy) as instance,
        workspace_context(instance) as ctx,
    ):
        run = start(instance)
        for attempt, (disruption, cause) in enumerate(
            [(PREEMPTED, "preempted"), (NODE_LOST, "node_lost")]
        ):
            cluster.disrupt(job_name(run, attempt), *disruption)
            assert monitor_pass(instance, ctx, now=T0 + 120 * (attempt + 1)) == []
            assert resumes(instance, run) == attempt + 1
            tags = tags_of(instance, run.run_id)
            assert tags[c.CRASH_CAUSE_TAG] == cause
            assert tags[c.UNCOUNTED_RESUMES_TAG] == ",".join(str(n) for n in range(1, attempt + 2))
            resumed = messages(instance, run.run_id)[-4]
            assert f"(cause: {cause}, pod {job_name(run, attempt)}-{POD_SUFFIX}: " in resumed
            assert resumed.endswith(f", not counted against max_resume_run_attempts ({cause}).")
        cluster.set_state(job_name(run, 2), "failed")  # OOMKilled: counts
        assert monitor_pass(instance, ctx, now=T0 + 360) == []
        assert resumes(instance, run) == 3
        assert tags_of(instance, run.run_id)[c.CRASH_CAUSE_TAG] == "oom_killed"
        assert tags_of(instance, run.run_id)[c.UNCOUNTED_RESUMES_TAG] == "1,2"
        cluster.set_state(job_name(run, 3), "failed")
        assert monitor_pass(instance, ctx, now=T0 + 480) == []
        assert status_of(instance, run.run_id) == S.FAILURE
        assert resumes(instance, run) == 3
        assert "surpassed the configured maximum attempts to resume the run: 1" in "".join(
            messages(instance, run.run_id)[-3:]
        )


def test_an_evicted_worker_is_resumed_and_counted(k8s_instance, cluster, workspace_context):
    with (
        k8s_instance(max_resume_run_attempts=1) as instance,
        workspace_context(instance) as ctx,
    ):
        run = start(instance)
        cluster.disrupt(job_name(run), *EVICTED)
        assert monitor_pass(instance, ctx, now=T0 + 120) == []
        assert resumes(instance, run) == 1
        assert tags_of(instance, run.run_id)[c.CRASH_CAUSE_TAG] == "evicted"
        assert c.UNCOUNTED_RESUMES_TAG not in tags_of(instance, run.run_id)
        assert messages(instance, run.run_id)[-4] == (
            f"Detected run worker status FAILED: '{NO_ACTIVE_PODS}' (cause: evicted, pod"
            f" {job_name(run)}-{POD_SUFFIX}: Evicted: The node was low on resource: memory.)."
            f" Resuming run {run.run_id} with a new worker."
        )


# --- a STARTING run whose pod cannot start ------------------------------------------------


def launched(instance: DagsterInstance) -> DagsterRun:
    """A run launched through the launcher (its Job created) whose worker has not started it."""
    run = instance.create_run_for_job(job_def=k8s_job, job_code_origin=ORIGIN)
    instance.launch_run(run.run_id, workspace=None)  # type: ignore[arg-type]
    run = instance.get_run_by_id(run.run_id)
    assert run is not None and run.status == S.STARTING
    return run


def pending_pod(cluster: FakeCluster, name: str, waiting: str | None, message: str) -> None:
    """The Job's pod is Pending: its container waits for ``waiting``, or (None) no node fits."""
    pod = cluster.pods[f"{name}-{POD_SUFFIX}"]
    if waiting is None:
        unschedulable = k8s.V1PodCondition(
            type="PodScheduled", status="False", reason="Unschedulable", message=message
        )
        pod.status = k8s.V1PodStatus(phase="Pending", conditions=[unschedulable])
        return
    state = k8s.V1ContainerState(
        waiting=k8s.V1ContainerStateWaiting(reason=waiting, message=message)
    )
    container = k8s.V1ContainerStatus(
        name="dagster",
        image="example.com/etl:1.0",
        image_id="",
        ready=False,
        restart_count=0,
        state=state,
    )
    pod.status = k8s.V1PodStatus(phase="Pending", container_statuses=[container])


@pytest.mark.parametrize(
    "waiting, message",
    [
        ("CreateContainerConfigError", 'configmap "app-env" not found'),
        ("ImagePullBackOff", 'Back-off pulling image "example.com/etl:1.0"'),
    ],
)
def test_a_pod_that_cannot_start_fails_the_starting_run_after_the_grace_period(
    k8s_instance, cluster, workspace_context, waiting, message
):
    with (
        k8s_instance(worker_unknown_grace_seconds=60) as instance,
        workspace_context(instance) as ctx,
    ):
        run = launched(instance)
        pending_pod(cluster, job_name(run), waiting, message)
        daemon = RunMonitorDaemon.from_instance(instance)
        launch_time = instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp()
        for now in (launch_time + 10, launch_time + 69):
            assert monitor_pass(instance, ctx, now=now, daemon=daemon) == []
            assert status_of(instance, run.run_id) == S.STARTING  # the Job reads as active
        assert monitor_pass(instance, ctx, now=launch_time + 70, daemon=daemon) == []
        assert status_of(instance, run.run_id) == S.FAILURE
        assert tags_of(instance, run.run_id)[c.REASON_TAG] == c.REASON_START_FAILED
        pod = f"{job_name(run)}-{POD_SUFFIX}"
        failure = messages(instance, run.run_id)[-1]
        cause = "config_error" if waiting == "CreateContainerConfigError" else "image_pull"
        assert failure.startswith(
            "Detected run worker status FAILED: 'The run worker's pod cannot start' (cause:"
            f" {cause}, pod {pod}: container 'dagster' waiting: {waiting}: {message}) before the"
            f" run started. Marking run {run.run_id} as failed."
        )
        assert tags_of(instance, run.run_id)[c.CRASH_CAUSE_TAG] == cause
        assert cluster.state(job_name(run)) is None  # the Job was deleted: no Pending pod left


def test_an_unschedulable_pod_waits_for_the_start_timeout(k8s_instance, cluster, workspace_context):
    """A node may still come (an autoscaler): only the start timeout ends the run."""
    with (
        k8s_instance(worker_unknown_grace_seconds=60, start_timeout_seconds=300) as instance,
        workspace_context(instance) as ctx,
    ):
        run = launched(instance)
        pending_pod(cluster, job_name(run), None, "0/3 nodes are available")
        daemon = RunMonitorDaemon.from_instance(instance)
        launch_time = instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp()
        for now in (launch_time + 10, launch_time + 120, launch_time + 299):
            assert monitor_pass(instance, ctx, now=now, daemon=daemon) == []
            assert status_of(instance, run.run_id) == S.STARTING
        assert monitor_pass(instance, ctx, now=launch_time + 302, daemon=daemon) == []
        assert status_of(instance, run.run_id) == S.FAILURE
        assert messages(instance, run.run_id)[-1].startswith(
            "Run timed out due to taking longer than 300 seconds to start."
        )


# --- a missing Job or an API failure: UNKNOWN, then the grace period ---------------------

FAULTS: dict[str, tuple[Callable[[FakeCluster, str], None], str]] = {
    # how the fault is made, and what the launcher's health message then contains
    "job_missing_404": (lambda cluster, name: cluster.remove(name), "could not be found"),
    "api_503": (
        lambda cluster, name: cluster.fail_reads(lambda: api_error(503), name),
        "DagsterK8sAPIRetryLimitExceeded: Retry limit of 3 exceeded",
    ),
    "read_timeout": (
        lambda cluster, name: cluster.fail_reads(read_timeout, name),
        "ReadTimeoutError",
    ),
}
READS_PER_CHECK = {"job_missing_404": 1, "api_503": 4, "read_timeout": 1}  # 503: 1 + 3 retries


@pytest.mark.parametrize("fault", list(FAULTS))
def test_unknown_worker_health_is_resumed_only_after_the_grace_period(
    k8s_instance, cluster, workspace_context, fault
):
    make_fault, health_message = FAULTS[fault]
    with (
        k8s_instance(worker_unknown_grace_seconds=60) as instance,
        workspace_context(instance) as ctx,
    ):
        run = start(instance)
        make_fault(cluster, job_name(run))
        daemon = RunMonitorDaemon.from_instance(instance)
        for now in (T0, T0 + 59):
            assert monitor_pass(instance, ctx, now=now, daemon=daemon) == []
            assert resumes(instance, run) == 0
            assert status_of(instance, run.run_id) == S.STARTED
        reads = cluster.count(run.run_id)["read_namespaced_job_status"]
        assert reads == 2 * READS_PER_CHECK[fault]
        assert cluster.slept == ([10.0] * 6 if fault == "api_503" else [])

        assert monitor_pass(instance, ctx, now=T0 + 60, daemon=daemon) == []
        assert resumes(instance, run) == 1
        detected = messages(instance, run.run_id)[-4]
        assert detected.startswith("Detected run worker status UNKNOWN: '")
        assert health_message in detected
        assert detected.endswith(f"Resuming run {run.run_id} with a new worker.")
        assert cluster.state(job_name(run, 1)) == "active"
        # Only the API failed: the first worker's Job is still running next to the new one.
        expected_first = None if fault == "job_missing_404" else "active"
        assert cluster.state(job_name(run)) == expected_first

        assert monitor_pass(instance, ctx, now=T0 + 180, daemon=daemon) == []
        assert resumes(instance, run) == 1
        assert status_of(instance, run.run_id) == S.STARTED


# --- attempts used up ------------------------------------------------------------------


def test_a_job_that_keeps_failing_fails_the_run_with_the_launchers_debug_info(
    k8s_instance, cluster, workspace_context
):
    cluster.new_job_state = "failed"  # every Job's pod is OOMKilled
    with (
        k8s_instance(max_resume_run_attempts=1) as instance,
        workspace_context(instance) as ctx,
    ):
        run = start(instance)
        assert monitor_pass(instance, ctx, now=T0) == []
        assert resumes(instance, run) == 1
        cluster.calls.clear()
        assert monitor_pass(instance, ctx, now=T0 + 120) == []

        assert cluster.count(f"of {NAMESPACE}") == {"list_namespaced_job": 1}  # the checks'
        assert cluster.count(run.run_id) == {  # the re-check under the claim, the debug info
            "read_namespaced_job_status": 1,  # the crash seen again before the failure
            "list_namespaced_pod": 3,  # the Job's pods (health, debug info), each pod by name
            "read_namespaced_pod_log": 1,
            "list_namespaced_event": 1,
        }
        assert status_of(instance, run.run_id) == S.FAILURE
        assert tags_of(instance, run.run_id)[c.REASON_TAG] == c.REASON_WORKER_CRASH
        pod = f"{job_name(run, 1)}-{POD_SUFFIX}"
        assert messages(instance, run.run_id)[-1] == (
            f"Detected run worker status {crash_health(run, attempt=1)}. Marking run"
            f" {run.run_id} as failed, because it has surpassed the configured maximum attempts"
            f" to resume the run: 1.\nDebug information for pod {pod}:\n\n"
            "Pod status: Failed\n"
            "Container 'dagster' status: Terminated with exit code 137: OOMKilled\n\n"
            "Last 25 log lines for container 'dagster':\n"
            + "\n".join(f"{LOG_TIME} {line}" for line in POD_LOG)
            + "\n\nNo warning events for pod.\n"
            f"For more information about the failure, try running `kubectl describe pod {pod}`,"
            f" `kubectl logs {pod}`, or `kubectl describe job {job_name(run, 1)}` in your"
            " cluster."
        )
        assert resumes(instance, run) == 1


# --- cost ------------------------------------------------------------------------------


@contextmanager
def event_log_selects() -> Iterator[list[str]]:
    """Every SELECT on the event_logs table while inside, from any thread or engine."""
    statements: list[str] = []

    def record(conn, cursor, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "event_logs" in statement:
            statements.append(statement)

    sqlalchemy.event.listen(Engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sqlalchemy.event.remove(Engine, "before_cursor_execute", record)


def test_a_resume_rewrites_no_tag_the_run_already_has(k8s_instance, cluster, workspace_context):
    """K8sRunLauncher writes the run's image tag on every resume, the same value each time:
    the daemon writes the resume's tags (the crash's cause) once, and the launcher's unchanged
    image tag not at all; a run worker of Dagster's own still sees every tag."""
    with k8s_instance() as instance, workspace_context(instance) as ctx:
        run = start(instance)
        image = tags_of(instance, run.run_id)["dagster/image"]
        cluster.set_state(job_name(run), "failed")
        writes: list[str] = []

        def record(conn, cursor, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("UPDATE RUNS"):
                writes.append(statement)

        sqlalchemy.event.listen(Engine, "before_cursor_execute", record)
        try:
            assert monitor_pass(instance, ctx, now=T0) == []
            assert resumes(instance, run) == 1
            assert len(writes) == 1  # the cause tag, with the run's other tags in its body
            instance.add_run_tags(run.run_id, {"dagster/image": image})  # not the daemon's
            assert len(writes) == 2  # Dagster writes it, as always
        finally:
            sqlalchemy.event.remove(Engine, "before_cursor_execute", record)
        assert tags_of(instance, run.run_id)["dagster/image"] == image
        assert tags_of(instance, run.run_id)[c.CRASH_CAUSE_TAG] == "oom_killed"


def test_kubernetes_api_calls_and_event_log_reads_per_run_per_pass(
    k8s_instance, cluster, workspace_context, storage
):
    with k8s_instance() as instance, workspace_context(instance) as ctx:
        runs = {"healthy": start(instance), "crashed": start(instance)}
        cluster.set_state(job_name(runs["crashed"]), "failed")

        with event_log_selects() as launcher_reads:  # the health check alone, one run
            assert instance.run_launcher.check_run_worker_health(runs["healthy"]).status == (
                WorkerStatus.RUNNING
            )
        calls: list[dict[str, dict[str, int]]] = []
        selects: list[int] = []
        for now in (T0, T0 + 120):
            cluster.calls.clear()
            with event_log_selects() as pass_reads:
                assert monitor_pass(instance, ctx, now=now) == []
            calls.append({name: dict(cluster.count(r.run_id)) for name, r in runs.items()})
            calls[-1]["namespace"] = dict(cluster.count(f"of {NAMESPACE}"))
            selects.append(len(pass_reads))
        print(f"\nK8s API calls per run, pass 1 (resumes 'crashed'): {calls[0]}")
        print(f"K8s API calls per run, pass 2 (both healthy): {calls[1]}")
        print(
            f"event-log SELECTs: one launcher health check {len(launcher_reads)},"
            f" pass 1 {selects[0]}, pass 2 {selects[1]}"
        )

        # The health checks answer from one list of the namespace's run worker Jobs a pass;
        # the crashed run's Job is read again under its claim, just before its resume (another
        # daemon may have resumed it since); what its pod says is read once, for the crash
        # message.
        assert calls == [
            {
                "healthy": {},
                "crashed": {
                    "read_namespaced_job_status": 1,
                    "list_namespaced_pod": 1,
                    "create_namespaced_job": 1,
                },
                "namespace": {"list_namespaced_job": 1},
            },
            {"healthy": {}, "crashed": {}, "namespace": {"list_namespaced_job": 1}},
        ]
        # check_run_worker_health counts the run's resumes (to name the Job) on every call; in
        # a pass it is answered from the daemon's counts, read again only for runs whose row
        # changed (pass 1: both, new to the daemon; pass 2: the resumed one), in one statement
        # on Postgres (SQLite has an event-log file per run: one read each). Then, for the
        # crashed run only: its resume history for the decision and the re-count under its
        # claim, which also answers the launcher's count in the health check under the claim
        # before resuming it (never the pass's count).
        assert len(launcher_reads) == 1
        assert selects == {"postgres": [3, 1], "sqlite": [4, 2]}[storage]


def test_the_daemon_remembers_each_runs_container_context_until_its_tags_change(
    k8s_instance, cluster, workspace_context, monkeypatch
):
    """K8sRunLauncher rebuilds a run's container context on every call; the daemon's launcher
    builds it once per run and Kubernetes config tags, and the context stays what the launcher
    would build."""
    from dagster_k8s.container_context import K8sContainerContext

    built: list[str] = []
    create_for_run = K8sContainerContext.create_for_run

    def counted(run, launcher, include_run_tags):
        built.append(run.run_id)
        return create_for_run(run, launcher, include_run_tags)

    monkeypatch.setattr(K8sContainerContext, "create_for_run", staticmethod(counted))
    with k8s_instance() as instance, workspace_context(instance) as ctx:
        run = start(instance)
        built.clear()
        for now in (T0, T0 + 120, T0 + 240):
            assert monitor_pass(instance, ctx, now=now) == []
        assert built == [run.run_id]  # three passes, one build
        instance.add_run_tags(run.run_id, {"team": "data"})  # a tag the context does not read
        assert monitor_pass(instance, ctx, now=T0 + 300) == []
        assert built == [run.run_id]
        instance.add_run_tags(run.run_id, {"dagster-k8s/config": '{"pod_spec_config": {}}'})
        assert monitor_pass(instance, ctx, now=T0 + 360) == []
        assert built == [run.run_id, run.run_id]  # new tags: built again
        fresh = create_for_run(instance.get_run_by_id(run.run_id), instance.run_launcher, True)
        remembered = instance.run_launcher.get_container_context_for_run(
            instance.get_run_by_id(run.run_id)
        )
        assert remembered == fresh
