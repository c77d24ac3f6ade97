"""The benchmark's instance, code location and N failed runs whose step pod was OOM-killed
(events as a real run writes them, pods in the faked Kubernetes API)."""

import contextlib
import datetime
import hashlib
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dagster import DagsterEvent, DagsterInstance
from dagster._core.definitions.metadata import MetadataValue
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.events import DagsterEventType, EngineEventData, RunFailureReason
from dagster._core.execution.plan.objects import ErrorSource, StepFailureData, StepSuccessData
from dagster._core.execution.plan.outputs import StepOutputData, StepOutputHandle
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus, RunsFilter
from dagster._utils.error import SerializableErrorInfo
from kubernetes import client as k8s

from benchmarks.monitor_pass.measure import (
    say,
)
from benchmarks.monitor_pass.storage import pg_admin, scratch_database
from dagster_run_monitor.config.dagster_yaml import instance_config, write_dagster_yaml
from dagster_run_monitor_tests.support.fake_k8s import CLUSTER
from dagster_run_monitor_tests.support.step_events import step_event
from dagster_run_monitor_tests.support.workspace import write_workspace

DATABASE = "bench_step_retries"
LOCATION = "step_retries_bench"
JOB = "train_job"
NAMESPACE = "dagster"
IMAGE = "example.com/etl:1.0"
K8S_JOB_KEY = "Kubernetes Job name"  # k8s_job_executor's STEP_WORKER_STARTING metadata
MONITORING = {
    "enabled": True,
    "start_timeout_seconds": 3600,
    "cancel_timeout_seconds": 3600,
    "max_runtime_seconds": 86400,
    "poll_interval_seconds": 120,
    "oom_memory": {"multiplier": 1.5, "max": "8Gi"},
}
LAUNCHER = {
    "module": "dagster_run_monitor_tests.support.fake_k8s",
    "class": "FakeClusterK8sRunLauncher",
    "config": {
        "service_account_name": "dagster",
        "instance_config_map": "dagster-instance",
        "dagster_home": "/opt/dagster/dagster_home",
        "job_image": IMAGE,
        "job_namespace": NAMESPACE,
        "load_incluster_config": False,
    },
}
JOBS_SOURCE = '''"""The benchmark's code location: a k8s_job_executor job of two ops."""

from dagster import Definitions, job, op
from dagster_k8s import k8s_job_executor


@op
def extract() -> int:
    return 1


@op
def train(rows: int) -> int:
    return rows + 1


@job(executor_def=k8s_job_executor)
def train_job() -> None:
    train(extract())


defs = Definitions(jobs=[train_job])
'''
# Functions whose cumulative time the report names (file part, function name).
NAMED = (
    ("daemon/observe.py", "observe"),
    ("dagster_run_monitor/daemon/", "failed_run_facts"),
    ("storage/eventlog.py", "step_histories"),
    ("daemon/step_causes.py", "platform_causes"),
    ("dagster_run_monitor/daemon/", "_with_group"),
    ("storage/claims.py", "claims"),
    ("daemon/step_retries.py", "apply_verdict"),
    ("auto_run_reexecution.py", "get_automatically_retried_run_if_exists"),
    ("daemon/step_retries.py", "create_retry"),
    ("dagster/_core/instance", "create_reexecuted_run"),
    ("code_location.py", "get_execution_plan"),
    ("code_location.py", "get_job"),
    ("dagster/_core/instance", "submit_run"),
    ("dagster/_core/instance", "report_engine_event"),
    ("dagster/_core/instance", "add_run_tags"),
    ("dagster/_core/instance", "get_run_group"),
    ("dagster/_core/instance", "get_run_by_id"),
    ("workspace/context.py", "create_request_context"),
)


# --- the fake Kubernetes API: counted calls, and the step cause read's selector -------------

API_CALLS: Counter[str] = Counter()
SELECTORS: list[tuple[int, int]] = []  # (runs in the set, characters) of each step pod list
_SET_SELECTOR = re.compile(r"dagster/run-id in \((.*)\)")


def fake_api(latency: float) -> None:
    """Count every call by method; answer ``dagster/run-id in (...)`` pod lists from the
    cluster's pods (a scan by label, as the API server does); the rest as the fake does."""
    CLUSTER.reset()
    CLUSTER.latency_seconds = latency
    CLUSTER.default_job_state = "active"
    CLUSTER.light = True  # created Jobs kept without their spec: the fake's memory, not ours
    call = CLUSTER._call
    list_pods = CLUSTER.core_api.list_namespaced_pod

    def counted(method: str, subject: str, read: bool = True) -> None:
        API_CALLS[method] += 1
        call(method, subject, read)

    def list_namespaced_pod(namespace: str, label_selector: str | None = None, **kwargs: Any):
        found = _SET_SELECTOR.fullmatch(label_selector or "")
        if found is None:
            return list_pods(namespace, label_selector=label_selector, **kwargs)
        run_ids = set(found.group(1).split(","))
        SELECTORS.append((len(run_ids), len(label_selector or "")))
        CLUSTER._call("list_namespaced_pod", f"dagster/run-id in ({len(run_ids)} runs)")
        with CLUSTER._lock:
            items = [
                pod
                for pod in CLUSTER.pods.values()
                if pod.metadata.namespace == namespace
                and (pod.metadata.labels or {}).get("dagster/run-id") in run_ids
            ]
        return k8s.V1PodList(items=items)

    CLUSTER._call = counted  # type: ignore[method-assign]
    CLUSTER.core_api.list_namespaced_pod = list_namespaced_pod  # type: ignore[method-assign]


def oom_killed_pod(run_id: str, job_name: str) -> k8s.V1Pod:
    """The step Job's one pod: container ``dagster`` OOM-killed under a 2Gi limit."""
    resources = k8s.V1ResourceRequirements(limits={"memory": "2Gi"}, requests={"memory": "1Gi"})
    spec = k8s.V1PodSpec(
        containers=[k8s.V1Container(name="dagster", image=IMAGE, resources=resources)]
    )
    terminated = k8s.V1ContainerStateTerminated(exit_code=137, reason="OOMKilled")
    status = k8s.V1PodStatus(
        phase="Failed",
        container_statuses=[
            k8s.V1ContainerStatus(
                name="dagster",
                image=IMAGE,
                image_id="",
                ready=False,
                restart_count=0,
                state=k8s.V1ContainerState(terminated=terminated),
            )
        ],
    )
    labels = {"dagster/run-id": run_id, "job-name": job_name, "dagster/op": "train"}
    meta = k8s.V1ObjectMeta(
        name=f"{job_name}-x2v9q",
        namespace=NAMESPACE,
        labels=labels,
        # Made before the step started (its STEP_START is written now): a pod made after the
        # attempt started would be a replacement, whose state is not the attempt's cause.
        creation_timestamp=datetime.datetime.now(datetime.timezone.utc)
        - datetime.timedelta(minutes=10),
    )
    return k8s.V1Pod(metadata=meta, spec=spec, status=status)


def worker_starting(run: DagsterRun, step_key: str) -> tuple[str, DagsterEvent]:
    """k8s_job_executor's STEP_WORKER_STARTING for the step's Job (``launch_step``)."""
    digest = hashlib.md5(f"{run.run_id}{step_key}".encode()).hexdigest()
    job_name = f"dagster-step-{digest}"
    data = EngineEventData(
        metadata={K8S_JOB_KEY: MetadataValue.text(job_name)}, marker_start="step_process_start"
    )
    message = f'Executing step "{step_key}" in Kubernetes job {job_name}.'
    return job_name, step_event(run, step_key, DagsterEventType.STEP_WORKER_STARTING, data, message)


def current(instance: DagsterInstance, run_ids: list[str]) -> dict[str, DagsterRun]:
    found: dict[str, DagsterRun] = {}
    for start in range(0, len(run_ids), 500):
        chunk = run_ids[start : start + 500]
        found.update({r.run_id: r for r in instance.get_runs(RunsFilter(run_ids=chunk))})
    return found


class Runs:
    """Creates runs of the code location's job with their remote origin (as the UI does)."""

    def __init__(self, instance: DagsterInstance, context: Any, jobs_file: Path) -> None:
        self.instance = instance
        remote = (
            context.create_request_context()
            .get_code_location(LOCATION)
            .get_repository("__repository__")
            .get_full_job(JOB)
        )
        self.origin = remote.get_remote_origin()
        self.python_origin = remote.get_python_origin()
        recon = ReconstructableRepository.for_file(str(jobs_file), "defs")
        self.job_def = recon.get_reconstructable_job(JOB).get_definition()

    def failed(self, _: int = 0) -> tuple[str, k8s.V1Pod]:
        """A run whose ``train`` step pod was OOM-killed, as its event log shows it; the pod."""
        instance = self.instance
        run = instance.create_run_for_job(
            job_def=self.job_def,
            remote_job_origin=self.origin,
            job_code_origin=self.python_origin,
            run_config={},
            tags={},
        )
        events = [
            DagsterEvent(event_type_value=DagsterEventType.PIPELINE_STARTING.value, job_name=JOB),
            DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=JOB),
        ]
        _, extract_starting = worker_starting(run, "extract")
        job_name, train_starting = worker_starting(run, "train")
        output = StepOutputData(StepOutputHandle("extract", "result"))
        error = SerializableErrorInfo(
            f"Step train failed health check: Discovered failed Kubernetes job {job_name} for"
            " step train.",
            [],
            None,
        )
        failure = StepFailureData(
            error=error, user_failure_data=None, error_source=ErrorSource.FRAMEWORK_ERROR
        )
        t = DagsterEventType
        events += [
            extract_starting,
            step_event(run, "extract", t.STEP_START, None, 'Started execution of step "extract".'),
            step_event(run, "extract", t.STEP_OUTPUT, output, 'Yielded output "result".'),
            step_event(
                run,
                "extract",
                t.STEP_SUCCESS,
                StepSuccessData(duration_ms=1200.0),
                'Finished execution of step "extract" in 1.2s.',
            ),
            train_starting,
            step_event(run, "train", t.STEP_START, None, 'Started execution of step "train".'),
            step_event(run, "train", t.STEP_FAILURE, failure, 'Execution of step "train" failed.'),
        ]
        first = events[-1]
        events.append(
            DagsterEvent.job_failure(
                JOB,
                "Steps failed: ['train'].",
                RunFailureReason.STEP_FAILURE,
                first_step_failure_event=first,
            )
        )
        for event in events:
            instance.report_dagster_event(event, run_id=run.run_id)
        return run.run_id, oom_killed_pod(run.run_id, job_name)


def make_failures(runs: Runs, n: int, threads: int) -> list[str]:
    """``n`` failed runs, ``threads`` at a time; their step pods registered with the fake."""
    done: list[str] = []
    lock = threading.Lock()
    began = time.monotonic()

    def one(i: int) -> tuple[str, k8s.V1Pod]:
        made = runs.failed(i)
        with lock:
            done.append(made[0])
            if len(done) % 100 == 0:
                say(f"  {len(done)}/{n} failed runs ({time.monotonic() - began:.0f}s)")
        return made

    with ThreadPoolExecutor(threads) as pool:
        made = list(pool.map(one, range(n)))
    with CLUSTER._lock:
        CLUSTER.pods.update({pod.metadata.name: pod for _, pod in made})
    statuses = Counter(r.status for r in current(runs.instance, [i for i, _ in made]).values())
    assert statuses == Counter({DagsterRunStatus.FAILURE: n}), statuses
    return [run_id for run_id, _ in made]


def write_home(home: Path, jobs_file: Path, url: str | None, step_retries: bool) -> Path:
    """A home with step retries on or off; on SQLite both homes share one storage directory."""
    monitoring = {**MONITORING, "step_retries": {"enabled": step_retries, "max_retries": 3}}
    more = {} if url else {"storage": {"sqlite": {"base_dir": str(home.parent / "storage")}}}
    write_dagster_yaml(home, instance_config(monitoring, LAUNCHER, url, **more))
    return write_workspace(home, jobs_file, LOCATION)


def quiet_loggers(log_file: Any) -> None:
    """Loggers that write to the terminal write to the benchmark's log file instead."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.setStream(log_file)


@contextlib.contextmanager
def database(storage: str, name: str) -> Iterator[str | None]:
    if storage != "postgres":
        yield None
        return
    if not name.startswith("bench_step_"):
        raise SystemExit(f"--database must start with bench_step_ (got {name!r})")
    with scratch_database(name) as url:
        try:
            yield url
        finally:  # the daemon's pooled connections outlive its instance
            pg_admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
