"""Kubernetes for real: the one-node cluster of scripts/k8s-cluster, Dagster's K8sRunLauncher
and k8s_job_executor, Postgres storage, our daemon running as the stock `dagster-daemon run`.

Every pod uses the host's network (no CNI, no kube-proxy: nothing leaves 127.0.0.1) and the
offline image of scripts/docker-engine (never pulled); Python, the virtualenv, the code and
DAGSTER_HOME are mounted from the host at the same paths, as the Docker tests do. Each test
asserts what an operator checks: the run's status, its event log, its tags, and what is left
in the cluster.
"""

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.events import DagsterEventType
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG

from dagster_run_monitor.core import constants as c
from dagster_run_monitor_tests.support.home import load_instance, write_container_home
from dagster_run_monitor_tests.support.k8s import (
    CLUSTER_DIR,
    apis,
    cluster_unavailable,
    create_namespace,
    delete_namespace,
    put_instance_config_map,
    worker_containers,
)
from dagster_run_monitor_tests.support.k8s import launcher_config as k8s_launcher_config
from dagster_run_monitor_tests.support.runs import first_lines, monitor_pass
from dagster_run_monitor_tests.support.subprocesses import daemon, wait_until

pytestmark = [pytest.mark.k8s_cluster, pytest.mark.slow, pytest.mark.postgres]

NAMESPACE = f"run-monitor-test-{os.getpid()}"
JOBS_FILE = str(Path(__file__).with_name("k8s_jobs.py"))
K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster_k8s's USER_DEFINED_K8S_CONFIG_KEY


@dataclass
class Cluster:
    core: Any  # kubernetes.client.CoreV1Api
    batch: Any  # kubernetes.client.BatchV1Api
    namespace: str

    def jobs(self, run_id: str) -> dict[str, str]:
        """The run's Jobs (run worker and steps) by name, with their state."""
        items = self.batch.list_namespaced_job(
            self.namespace, label_selector=f"dagster/run-id={run_id}"
        ).items
        return {job.metadata.name: job_state(job) for job in items}

    def jobs_end(self, run_id: str, timeout: float = 60) -> None:
        """The run's Jobs all succeed or fail: a worker's pod exits a moment after its run
        ended."""
        wait_until(
            lambda: "active" not in self.jobs(run_id).values(),
            timeout,
            f"the run's Jobs to end ({self.jobs(run_id)})",
            interval=1,
        )

    def pods(self, run_id: str) -> list[Any]:
        return self.core.list_namespaced_pod(
            self.namespace, label_selector=f"dagster/run-id={run_id}"
        ).items

    def nothing_left(self, run_id: str, timeout: float = 90) -> None:
        """No Job and no pod of the run, within ``timeout`` (pods take their grace period)."""
        try:
            wait_until(
                lambda: not self.jobs(run_id) and not self.pods(run_id),
                timeout,
                "the run's Jobs and pods to be gone",
                interval=1,
            )
        except AssertionError as timed_out:
            pods = [pod.metadata.name for pod in self.pods(run_id)]
            raise AssertionError(f"{timed_out}; left: {self.jobs(run_id)}, pods {pods}") from None

    def worker_container(self, run_id: str) -> Any:
        """The Docker container of the run worker's pod."""
        workers = worker_containers(self.namespace, run_id)
        assert len(workers) == 1, f"expected one run worker container, found {workers}"
        return workers[0]

    def clear(self) -> None:
        """Delete every Job and pod of the namespace (between tests)."""
        for job in self.batch.list_namespaced_job(self.namespace).items:
            self.batch.delete_namespaced_job(
                job.metadata.name, self.namespace, propagation_policy="Background"
            )
        self.core.delete_collection_namespaced_pod(self.namespace, grace_period_seconds=0)


def job_state(job: Any) -> str:
    status = job.status
    if status.succeeded:
        return "succeeded"
    if status.failed and not status.active:
        return "failed"
    return "active"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A namespace of this test session's own with the service account run workers use to
    create step Jobs (in-cluster config); deleted at the end of the module, and waited for (a
    namespace still terminating refuses to be made again)."""
    reason = cluster_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Kubernetes tests, but {reason}")
        pytest.skip(reason)
    create_namespace(NAMESPACE)
    core, batch, _ = apis()
    yield Cluster(core, batch, NAMESPACE)
    delete_namespace(NAMESPACE)  # the next module of this session makes it again


def launcher_config(home: Path) -> dict[str, Any]:
    """The cluster's K8sRunLauncher in this test's namespace, the home writable."""
    return k8s_launcher_config(NAMESPACE, writable=[str(home)])


@pytest.fixture
def k8s_home(tmp_path, cluster, postgres_database) -> Iterator[Callable[..., tuple]]:
    """Factory: ``home, instance = k8s_home(**run_monitoring)``; the namespace is cleared
    after the test."""

    def factory(**run_monitoring: Any) -> tuple[Path, DagsterInstance]:
        home = tmp_path / "home"
        settings = {
            "poll_interval_seconds": 2,
            "worker_unknown_grace_seconds": 5,
            "start_timeout_seconds": 300,
            **run_monitoring,
        }
        home = write_container_home(home, settings, launcher_config(home))
        put_instance_config_map(NAMESPACE, (home / "dagster.yaml").read_text())
        instance = load_instance(home)
        instance.wipe()
        return home, instance

    yield factory
    cluster.clear()


def launch(
    instance: DagsterInstance,
    job_name: str,
    tags: dict[str, str] | None = None,
    run_config: dict | None = None,
) -> DagsterRun:
    recon = ReconstructableRepository.for_file(JOBS_FILE, "defs").get_reconstructable_job(job_name)
    run = instance.create_run_for_job(
        job_def=recon.get_definition(),
        job_code_origin=recon.get_python_origin(),
        tags=tags or {},
        run_config=run_config or {},
    )
    instance.launch_run(run.run_id, workspace=None)  # type: ignore[arg-type]
    return instance.get_run_by_id(run.run_id)


def k8s_config(**config: Any) -> dict[str, str]:
    """The run tag through which a run sets its worker pod's Kubernetes config."""
    import json

    return {K8S_CONFIG_TAG: json.dumps(config)}


def status(instance: DagsterInstance, run_id: str) -> S:
    return instance.get_run_by_id(run_id).status


def log(instance: DagsterInstance, run_id: str) -> list[str]:
    return [e.message for e in instance.all_logs(run_id)]


def step_starts(instance: DagsterInstance, run_id: str) -> Counter:
    events = instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
    return Counter(e.step_key for e in events)


def wait_for_step(instance: DagsterInstance, run_id: str, step: str, timeout: float = 240) -> None:
    wait_until(
        lambda: step in step_starts(instance, run_id) or instance.get_run_by_id(run_id).is_finished,
        timeout,
        f"step {step} to start",
        interval=1,
    )
    assert step in step_starts(instance, run_id), log(instance, run_id)[-10:]


def assert_ends(instance: DagsterInstance, run_id: str, expected: S, timeout: float = 300) -> None:
    """The run ends with ``expected`` within ``timeout``; else the error shows its events."""
    try:
        wait_until(lambda: instance.get_run_by_id(run_id).is_finished, timeout, "the run to end", 1)
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; its events: {story(instance, run_id)}") from None
    ended = status(instance, run_id)
    assert ended == expected, f"{ended}; its events: {story(instance, run_id)}"


def story(instance: DagsterInstance, run_id: str, last: int = 15) -> str:
    """The run's last events, with the errors they carry, for an assertion's message."""
    lines = []
    for record in instance.all_logs(run_id)[-last:]:
        lines.append(record.message)
        data = record.dagster_event.event_specific_data if record.dagster_event else None
        error = getattr(data, "error", None)
        if error is not None:
            lines.append(f"  error: {error.to_string()[-1500:]}")
    return "\n".join(lines)


def event_time(instance: DagsterInstance, run_id: str, message: str) -> float:
    return next(e.timestamp for e in instance.all_logs(run_id) if e.message == message)


def job(run: DagsterRun, attempt: int = 0) -> str:
    return f"dagster-run-{run.run_id}" + (f"-{attempt}" if attempt else "")


ALL_STEPS = {"extract": 1, "transform": 1, "load": 1, "report": 1}


# --- 1. Dagster's test_k8s_run_monitoring_resume: the run worker's Job is deleted -----------


def test_a_deleted_run_worker_job_is_resumed_and_every_step_runs_once(k8s_home, cluster):
    from dagster_k8s.client import DagsterKubernetesClient

    home, instance = k8s_home(max_resume_run_attempts=2)
    with daemon(home):
        run = launch(instance, "k8s_steps")
        wait_for_step(instance, run.run_id, "transform")
        deleted_at = time.time()
        assert DagsterKubernetesClient.production_client().delete_job(job(run), NAMESPACE)
        assert_ends(instance, run.run_id, S.SUCCESS)
    messages = log(instance, run.run_id)
    assert messages.count(c.RESUME_RUN_LOG_MESSAGE) == 1
    cluster.jobs_end(run.run_id)
    detected = next(m for m in messages if m.startswith("Detected run worker status"))
    assert detected.startswith(f"Detected run worker status UNKNOWN: 'Job {job(run)} could not")
    assert "(cause: deleted, " in detected
    assert instance.get_run_by_id(run.run_id).tags[c.CRASH_CAUSE_TAG] == "deleted"
    assert step_starts(instance, run.run_id) == ALL_STEPS  # the step Job outlived the worker
    jobs = cluster.jobs(run.run_id)
    assert jobs[job(run, 1)] == "succeeded" and job(run) not in jobs
    assert sorted(state for name, state in jobs.items() if "step" in name) == ["succeeded"] * 4
    resumed_after = event_time(instance, run.run_id, c.RESUME_RUN_LOG_MESSAGE) - deleted_at
    print(f"\nJob deleted -> resume event: {resumed_after:.1f} s (grace 5 s, poll 2 s)")


# --- 2. the run worker's container is killed --------------------------------------------------


def test_a_killed_run_worker_container_is_resumed(k8s_home, cluster):
    home, instance = k8s_home(max_resume_run_attempts=2)
    with daemon(home):
        run = launch(instance, "k8s_steps")
        wait_for_step(instance, run.run_id, "transform")
        killed_at = time.time()
        cluster.worker_container(run.run_id).kill()  # SIGKILL: no clean-up in the worker
        assert_ends(instance, run.run_id, S.SUCCESS)
    messages = log(instance, run.run_id)
    assert messages.count(c.RESUME_RUN_LOG_MESSAGE) == 1
    detected = next(m for m in messages if m.startswith("Detected run worker status"))
    assert "(cause: signal, SIGKILL, pod dagster-run-" in detected
    assert "container 'dagster' terminated: Error, exit code 137" in detected
    assert step_starts(instance, run.run_id) == ALL_STEPS
    cluster.jobs_end(run.run_id)
    assert cluster.jobs(run.run_id)[job(run)] == "failed"
    assert cluster.jobs(run.run_id)[job(run, 1)] == "succeeded"
    resumed_after = event_time(instance, run.run_id, c.RESUME_RUN_LOG_MESSAGE) - killed_at
    print(f"\ncontainer killed -> resume event: {resumed_after:.1f} s (poll 2 s)")


def test_a_lost_node_is_fenced_and_resumed_within_the_heartbeat_timeout(k8s_home, cluster):
    """A lost node: the kubelet frozen (SIGSTOP: the API still shows the pod Running and the
    Job active, as for ~5 minutes after a real node goes) and the worker's container killed.
    The worker's heartbeats stop: the monitor deletes its Job and resumes the run within the
    timeout plus a poll interval; once the kubelet is back, the run succeeds, every step once."""
    beats = {"interval_seconds": 2, "timeout_seconds": 10}
    home, instance = k8s_home(max_resume_run_attempts=2, worker_heartbeats=beats)
    kubelet = int((CLUSTER_DIR / "kubelet.pid").read_text())
    with daemon(home):
        run = launch(instance, "k8s_steps")
        wait_for_step(instance, run.run_id, "transform")
        os.kill(kubelet, signal.SIGSTOP)
        try:
            killed_at = time.time()
            cluster.worker_container(run.run_id).kill()
            wait_until(
                lambda: c.RESUME_RUN_LOG_MESSAGE in log(instance, run.run_id), 60, "the resume"
            )
            resumed_after = event_time(instance, run.run_id, c.RESUME_RUN_LOG_MESSAGE) - killed_at
            fenced = cluster.batch.list_namespaced_job(
                cluster.namespace, field_selector=f"metadata.name={job(run)}"
            ).items
            assert not fenced or fenced[0].metadata.deletion_timestamp, (  # deleted (its pods
                f"the lost worker's Job is not being deleted: {story(instance, run.run_id)}"
            )  # wait for the frozen kubelet)
        finally:
            os.kill(kubelet, signal.SIGCONT)
        assert_ends(instance, run.run_id, S.SUCCESS)
    messages = log(instance, run.run_id)
    assert messages.count(c.RESUME_RUN_LOG_MESSAGE) == 1
    detected = next(m for m in messages if m.startswith("Detected run worker status"))
    assert (
        "no heartbeat from the run worker (host" in detected and "(cause: worker_lost)" in detected
    )
    assert step_starts(instance, run.run_id) == ALL_STEPS
    assert resumed_after < beats["timeout_seconds"] + 2 + 5  # timeout + poll, + the pass's work
    print(f"\nlost node (kubelet frozen, container killed) -> resume event: {resumed_after:.1f} s")


# --- 3. Dagster's test_k8s_run_monitoring_startup_fail: the pod cannot start ----------------


def test_a_pod_that_cannot_start_fails_the_run_long_before_the_start_timeout(k8s_home, cluster):
    home, instance = k8s_home(start_timeout_seconds=300)
    missing = {"env_from": [{"config_map_ref": {"name": "no-such-config-map"}}]}
    with daemon(home):
        run = launch(instance, "k8s_sleeps", tags=k8s_config(container_config=missing))
        assert_ends(instance, run.run_id, S.FAILURE, timeout=120)
    run = instance.get_run_by_id(run.run_id)
    failure = log(instance, run.run_id)[-1]
    assert failure.startswith("Detected run worker status FAILED: 'The run worker's pod cannot")
    assert "(cause: config_error, pod dagster-run-" in failure
    assert "CreateContainerConfigError" in failure and "no-such-config-map" in failure
    assert "before the run started" in failure
    assert run.tags[c.REASON_TAG] == c.REASON_START_FAILED
    cluster.nothing_left(run.run_id)  # no Pending pod left behind (dagster-io/dagster#14833)
    records = instance.all_logs(run.run_id)
    took = records[-1].timestamp - records[0].timestamp
    print(f"\npod that cannot start -> FAILURE: {took:.1f} s after launch (grace 5 s)")


# --- 4. a worker that exits non-zero every time --------------------------------------------


def test_a_worker_that_keeps_exiting_is_resumed_max_times_then_failed(k8s_home, cluster):
    home, instance = k8s_home(max_resume_run_attempts=2)
    with daemon(home):
        run = launch(instance, "k8s_dies")
        assert_ends(instance, run.run_id, S.FAILURE)
    messages = log(instance, run.run_id)
    assert messages.count(c.RESUME_RUN_LOG_MESSAGE) == 2
    assert cluster.jobs(run.run_id) == {
        job(run): "failed",
        job(run, 1): "failed",
        job(run, 2): "failed",
    }
    failure = messages[-1]
    assert "surpassed the configured maximum attempts to resume the run: 2" in failure
    assert "(cause: exit_code, pod dagster-run-" in failure
    assert "container 'dagster' terminated: Error, exit code 3" in failure
    assert f"Debug information for pod {job(run, 2)}-" in failure  # the launcher's pod info
    assert "run worker about to exit with code 3" in failure  # the pod's log tail


# --- 5. max runtime ---------------------------------------------------------------------------


def test_max_runtime_deletes_the_worker_and_step_jobs(k8s_home, cluster):
    home, instance = k8s_home()
    with daemon(home):
        run = launch(instance, "k8s_sleeps", tags={c.MAX_RUNTIME_TAG: "20"})
        wait_for_step(instance, run.run_id, "sleep_long")
        assert_ends(instance, run.run_id, S.FAILURE, timeout=180)
    messages = log(instance, run.run_id)
    assert "Canceling due to exceeding maximum runtime of 20 seconds." in first_lines(messages)
    assert "Exceeded maximum runtime of 20 seconds." in first_lines(messages)
    for first in ("Canceling due to exceeding", "Exceeded maximum runtime"):  # both carry it
        event = next(m for m in messages if m.startswith(first))
        assert "The step worker of 'sleep_long' (host" in event  # the step pod's stack
        assert "in sleep_long" in event
    assert instance.get_run_by_id(run.run_id).tags[c.REASON_TAG] == c.REASON_MAX_RUNTIME
    cluster.nothing_left(run.run_id)


# --- 6. start timeout: a pod that is never scheduled ------------------------------------------


def test_start_timeout_deletes_the_pending_job(k8s_home, cluster):
    home, instance = k8s_home(start_timeout_seconds=15)
    nowhere = {"node_selector": {"dagster-run-monitor/no-such-node": "true"}}
    with daemon(home):
        run = launch(instance, "k8s_sleeps", tags=k8s_config(pod_spec_config=nowhere))
        assert_ends(instance, run.run_id, S.FAILURE, timeout=120)
    run = instance.get_run_by_id(run.run_id)
    assert run.tags[RUN_FAILURE_REASON_TAG] == "START_TIMEOUT"
    failure = log(instance, run.run_id)[-1]
    assert failure.startswith("Run timed out due to taking longer than 15 seconds to start.")
    cluster.nothing_left(run.run_id)


# --- 7. a user's Terminate with resumes enabled (dagster-io/dagster#33923) ------------------


def test_terminate_stops_the_step_jobs_and_the_run_is_never_resumed(k8s_home, cluster):
    home, instance = k8s_home(max_resume_run_attempts=3)
    with daemon(home):
        run = launch(instance, "k8s_sleeps")
        wait_for_step(instance, run.run_id, "sleep_long")
        assert instance.run_coordinator.cancel_run(run.run_id)  # what the UI's Terminate does
        assert_ends(instance, run.run_id, S.CANCELED, timeout=120)
        cluster.nothing_left(run.run_id)  # the step Job too, not left running
    messages = log(instance, run.run_id)
    assert c.RESUME_RUN_LOG_MESSAGE not in messages
    assert any(m.startswith("Deleting Kubernetes job dagster-step-") for m in messages)
    assert status(instance, run.run_id) == S.CANCELED


# --- 8. the OOM killer, and more memory on the resume -------------------------------------


def test_an_oom_killed_worker_is_resumed_with_more_memory_and_succeeds(k8s_home, cluster):
    """The step needs 500 MiB on every attempt: killed under 400Mi, it succeeds once
    oom_memory has raised the worker's limit (x2.5: 1000Mi) in the run's dagster-k8s/config."""
    home, instance = k8s_home(
        max_resume_run_attempts=1, oom_memory={"multiplier": 2.5, "max": "2Gi"}
    )
    small = {"resources": {"limits": {"memory": "400Mi"}, "requests": {"memory": "400Mi"}}}
    with daemon(home):
        run = launch(instance, "k8s_oom", tags=k8s_config(container_config=small))
        assert_ends(instance, run.run_id, S.SUCCESS)
    messages = log(instance, run.run_id)
    assert messages.count(c.RESUME_RUN_LOG_MESSAGE) == 1
    detected = next(m for m in messages if m.startswith("Detected run worker status"))
    assert "(cause: oom_killed, pod dagster-run-" in detected
    assert "container 'dagster' terminated: OOMKilled, exit code 137" in detected
    assert (
        "Resuming with memory limit 1000Mi (was 400Mi) after the worker was OOMKilled: 2.5 x the"
        " killed limit." in messages
    )
    assert instance.get_run_by_id(run.run_id).tags[c.CRASH_CAUSE_TAG] == "oom_killed"
    resumed = cluster.batch.read_namespaced_job(job(run, 1), NAMESPACE)
    resources = resumed.spec.template.spec.containers[0].resources
    assert resources.limits["memory"] == "1000Mi" and resources.requests["memory"] == "1000Mi"
    cluster.jobs_end(run.run_id)
    assert cluster.jobs(run.run_id) == {job(run): "failed", job(run, 1): "succeeded"}


# --- 9. an image that cannot be pulled, and crash_policy fail ---------------------------------

MISSING_IMAGE = "127.0.0.1:9/dagster-run-monitor-missing:none"  # loopback; never pulled


def test_an_image_that_cannot_be_pulled_fails_without_a_resume(k8s_home, cluster):
    """resume_on_start_failure would relaunch a worker that died while starting; crash_policy
    says an image that cannot be pulled is not worth it."""
    home, instance = k8s_home(
        resume_on_start_failure=True,
        max_resume_run_attempts=2,
        crash_policy=[{"causes": ["image_pull"], "action": "fail"}],
    )
    with daemon(home):
        run = launch(
            instance, "k8s_sleeps", tags=k8s_config(container_config={"image": MISSING_IMAGE})
        )
        assert_ends(instance, run.run_id, S.FAILURE, timeout=120)
    messages = log(instance, run.run_id)
    assert c.RESUME_RUN_LOG_MESSAGE not in messages
    failure = messages[-1]
    assert failure.startswith("Detected run worker status FAILED: 'The run worker's pod cannot")
    assert "(cause: image_pull, pod dagster-run-" in failure and "ErrImageNeverPull" in failure
    assert "as crash_policy[1] (causes image_pull: fail) says." in failure
    tags = instance.get_run_by_id(run.run_id).tags
    assert tags[c.CRASH_CAUSE_TAG] == "image_pull"
    assert tags[c.REASON_TAG] == c.REASON_START_FAILED
    cluster.nothing_left(run.run_id)


# --- cost on the real cluster -------------------------------------------------------------------


def test_kubernetes_api_calls_per_run_per_pass(k8s_home, cluster, workspace_context):
    """Our pass in this process (as the daemon runs it), every HTTP request to the API server
    counted by path: a healthy run, then the same run after its worker was killed."""
    from kubernetes.client import ApiClient

    home, instance = k8s_home(max_resume_run_attempts=1)
    run = launch(instance, "k8s_sleeps")
    wait_for_step(instance, run.run_id, "sleep_long")
    calls: list[tuple[str, str]] = []
    real_call_api = ApiClient.call_api

    def counted(self, resource_path, method, path_params=None, *args, **kwargs):
        path = resource_path
        for key, value in (path_params or {}).items():
            path = path.replace("{" + key + "}", str(value))
        calls.append((method, path))
        return real_call_api(self, resource_path, method, path_params, *args, **kwargs)

    def one_pass() -> dict[str, int]:
        calls.clear()
        ApiClient.call_api = counted
        try:
            assert monitor_pass(instance, ctx, now=time.time()) == []
        finally:
            ApiClient.call_api = real_call_api
        return dict(
            Counter(
                f"{method} {path.replace(run.run_id, '<id>').replace(NAMESPACE, '<ns>')}"
                for method, path in calls
            )
        )

    with workspace_context(instance) as ctx:
        healthy = one_pass()
        cluster.worker_container(run.run_id).kill()
        wait_until(
            lambda: (
                instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.FAILED
            ),
            60,
            "the worker's Job to fail",
        )
        crashed = one_pass()
    print(f"\nK8s API calls, healthy STARTED run, one pass: {healthy}")
    print(f"K8s API calls, crashed run resumed, one pass: {crashed}")
    assert sum(healthy.values()) == 1
    assert status(instance, run.run_id) == S.STARTED
    assert log(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1
    assert sum(crashed.values()) == 4  # Job list (pass), pods (why), job status (claim), create


# --- the network rule -------------------------------------------------------------------------

CLUSTER_PROCESSES = ("etcd", "kube-apiserver", "kube-controller", "kube-scheduler", "kubelet")


def test_the_cluster_listens_and_connects_on_loopback_only(cluster):
    """Every socket of the cluster's processes, listening or connected, is on 127.0.0.1."""
    import subprocess

    sockets = subprocess.run(["ss", "-Htanp"], capture_output=True, text=True, check=True).stdout
    seen, outside = 0, []
    for line in sockets.splitlines():
        fields = line.split()
        if len(fields) < 6 or not any(f'(("{name}"' in fields[5] for name in CLUSTER_PROCESSES):
            continue
        seen += 1
        (local, _), (peer, peer_port) = (a.rsplit(":", 1) for a in fields[3:5])
        if not _loopback(local) or not (peer_port == "*" or _loopback(peer)):
            outside.append(line)
    assert seen >= len(CLUSTER_PROCESSES), sockets  # each listens at least once
    assert outside == []


def _loopback(address: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(address.strip("[]").removeprefix("::ffff:")).is_loopback
