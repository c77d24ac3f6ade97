"""A fake Kubernetes API under the real ``dagster_k8s.K8sRunLauncher``.

Only the two API objects that dagster-k8s's ``DagsterKubernetesClient`` calls are faked
(``kubernetes.client.BatchV1Api`` and ``CoreV1Api``); job construction, retries, health checks,
resume and debug info are dagster-k8s's own code. Answers are real ``kubernetes.client`` models,
and every API call is recorded, so tests can count what a monitoring pass costs.

``dagster.yaml``::

    run_launcher:
      module: dagster_run_monitor_tests.support.fake_k8s
      class: FakeClusterK8sRunLauncher
      config: {service_account_name: dagster, instance_config_map: dagster-instance, ...}
"""

import copy
import datetime
import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Literal

from dagster_k8s import K8sRunLauncher
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from urllib3 import HTTPResponse
from urllib3.exceptions import ReadTimeoutError

JobState = Literal["active", "succeeded", "failed"]
POD_SUFFIX = "x2v9q"  # the random suffix Kubernetes gives a Job's pod, fixed here
POD_LOG = ("Started execution of run.", "Loading the day's orders into memory...")  # any pod's
LOG_TIME = "2027-01-15T08:00:00.000000000Z"
REASONS = {
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def api_error(status: int) -> ApiException:
    """What the kubernetes client raises for an HTTP error answer."""
    return ApiException(status=status, reason=REASONS.get(status, "Error"))


def read_timeout() -> ReadTimeoutError:
    """What the kubernetes client raises when the API server does not answer in time."""
    return ReadTimeoutError(None, "/apis/batch/v1", "Read timed out. (read timeout=60)")  # type: ignore[arg-type]


class FakeCluster:
    """Jobs and their pods by name, faults to inject, and a record of every API call."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.batch_api = FakeBatchV1Api(self)
        self.core_api = FakeCoreV1Api(self)
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.jobs: dict[str, k8s.V1Job] = {}
            self.pods: dict[str, k8s.V1Pod] = {}
            self.new_job_state: JobState = "active"  # the state a created Job starts in
            self.read_faults: dict[str | None, Callable[[], Exception]] = {}  # None: every read
            self.calls: list[tuple[str, str]] = []  # (API method, object name or selector value)
            self.call_count = 0  # every call, also those not kept (``light``)
            # The benchmark's cluster: calls counted, not kept; created Jobs kept without
            # their spec (10,000s of them would be the benchmark's memory, not the monitor's).
            self.light = False
            self.unexpected: list[str] = []  # API methods called that the fake does not know
            self.slept: list[float] = []  # retry back-offs of dagster-k8s (see ``sleep``)
            self.latency_seconds = 0.0  # what each API call takes (the benchmark: 20 ms)
            # The state of a Job the fake has no record of (the benchmark: "active", so 10,000
            # workers need no objects); None: such a Job does not exist (404).
            self.default_job_state: JobState | None = None
            # Jobs in that state that lists show (the benchmark's healthy workers, by name)
            self.listed_defaults: dict[str, str] = {}  # Job name -> namespace
            self._listing: tuple[list[str], dict[str, dict]] = ([], {})  # a list's snapshot

    # --- what tests do to the cluster --------------------------------------------------------

    def set_state(self, job_name: str, state: JobState) -> None:
        """The Job's pod is running, has succeeded, or has failed (OOMKilled)."""
        with self._lock:
            job = self.jobs[job_name]
            job.status = _job_status(state, job.status.start_time)
            pod = self.pods[f"{job_name}-{POD_SUFFIX}"]
            pod.status = _pod_status(state, pod.spec)

    def disrupt(self, job_name: str, reason: str, condition: str | None, message: str) -> None:
        """What a multi-node cluster does to the Job's pod, which one node cannot: preemption,
        eviction, a lost node. The pod fails with the pod ``reason`` and a ``DisruptionTarget``
        ``condition`` (Kubernetes 1.26+), as Kubernetes' documentation describes; the Job
        (backoffLimit 0) fails."""
        with self._lock:
            job = self.jobs[job_name]
            job.status = _job_status("failed", job.status.start_time)
            pod = self.pods[f"{job_name}-{POD_SUFFIX}"]
            conditions = []
            if condition:
                conditions.append(
                    k8s.V1PodCondition(
                        type="DisruptionTarget", status="True", reason=condition, message=message
                    )
                )
            pod.metadata.deletion_timestamp = _now() if condition else None
            pod.status = k8s.V1PodStatus(
                phase="Failed",
                reason=reason or None,
                message=None if condition else message,
                conditions=conditions,
            )

    def put_job(self, job_name: str, namespace: str, state: JobState) -> None:
        """A run worker's Job and its pod, as the launcher would have created them."""
        with self._lock:
            start = _now()
            self.jobs[job_name] = k8s.V1Job(
                metadata=k8s.V1ObjectMeta(name=job_name, namespace=namespace, uid=job_name),
                status=_job_status(state, start),
            )
            spec = k8s.V1PodSpec(containers=[k8s.V1Container(name="dagster", image="etl:1")])
            pod_name = f"{job_name}-{POD_SUFFIX}"
            self.pods[pod_name] = k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(
                    name=pod_name, namespace=namespace, labels={"job-name": job_name}
                ),
                spec=spec,
                status=_pod_status(state, spec),
            )

    def remove(self, job_name: str) -> None:
        """The Job is gone (TTL, ``kubectl delete``, a lost namespace): reads answer 404."""
        with self._lock:
            self.jobs.pop(job_name, None)
            self.pods.pop(f"{job_name}-{POD_SUFFIX}", None)

    def fail_reads(self, error: Callable[[], Exception], job_name: str | None = None) -> None:
        """Reads about ``job_name`` (every read if None) raise ``error()`` until ``heal``."""
        with self._lock:
            self.read_faults[job_name] = error

    def heal(self) -> None:
        with self._lock:
            self.read_faults.clear()

    def sleep(self, seconds: float) -> None:
        """Stands in for ``time.sleep`` in dagster-k8s's retry loop (``cluster`` fixture)."""
        with self._lock:
            self.slept.append(seconds)

    # --- what tests read -----------------------------------------------------------------

    def state(self, job_name: str) -> JobState | None:
        job = self.jobs.get(job_name)
        if job is None:
            return None
        status = job.status
        return "active" if status.active else "succeeded" if status.succeeded else "failed"

    def count(self, about: str = "") -> Counter[str]:
        """API calls per method whose object name contains ``about`` (e.g. a run id)."""
        with self._lock:
            return Counter(method for method, subject in self.calls if about in subject)

    # --- the API ----------------------------------------------------------------------------

    def _call(self, method: str, subject: str, read: bool = True) -> None:
        """Record the call, take ``latency_seconds``; raise the fault injected for it, outside
        the lock."""
        with self._lock:
            self.call_count += 1
            if not self.light:
                self.calls.append((method, subject))
            fault = (self.read_faults.get(subject) or self.read_faults.get(None)) if read else None
        if self.latency_seconds:
            time.sleep(self.latency_seconds)
        if fault is not None:
            raise fault()

    def read_job(self, method: str, name: str, namespace: str) -> k8s.V1Job:
        self._call(method, name)
        with self._lock:
            job = self.jobs.get(name)
            if job is None and self.default_job_state == "active":
                return _recorded_active_job(name, namespace)
            if job is None and self.default_job_state is not None:
                return k8s.V1Job(
                    metadata=k8s.V1ObjectMeta(name=name, namespace=namespace),
                    status=_job_status(self.default_job_state, _now()),
                )
            if job is None or job.metadata.namespace != namespace:
                raise api_error(404)
            return job

    def create_job(self, body: k8s.V1Job, namespace: str) -> k8s.V1Job:
        name = body.metadata.name
        self._call("create_namespaced_job", name, read=False)
        with self._lock:
            if name in self.jobs:
                raise api_error(409)
            now = _now()
            if self.light:  # no spec, no pod
                meta = k8s.V1ObjectMeta(name=name, namespace=namespace, uid=f"uid-{name}")
                self.jobs[name] = k8s.V1Job(metadata=meta, status=_job_status("active", now))
                return self.jobs[name]
            body = copy.deepcopy(body)  # the API server stores its own copy
            body.metadata.namespace = namespace
            body.metadata.uid = f"uid-{name}"
            body.metadata.creation_timestamp = now
            body.status = _job_status(self.new_job_state, now)
            self.jobs[name] = body
            template = body.spec.template
            pod_name = f"{name}-{POD_SUFFIX}"
            labels = {**(template.metadata.labels or {}), "job-name": name}
            self.pods[pod_name] = k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(name=pod_name, namespace=namespace, labels=labels),
                spec=template.spec,
                status=_pod_status(self.new_job_state, template.spec),
            )
            return body

    def list_jobs(self, namespace: str, field_selector: str) -> k8s.V1JobList:
        name = _selected(field_selector, "metadata.name")
        self._call("list_namespaced_job", name)
        with self._lock:
            job = self.jobs.get(name)
            items = [job] if job is not None and job.metadata.namespace == namespace else []
            return k8s.V1JobList(items=items)

    def list_run_worker_jobs(self, namespace: str, limit: int, token: str | None) -> HTTPResponse:
        """A page of the namespace's Jobs (every Job here is a run worker's) as the API server
        sends it: JSON, each Job the recorded one with its own name and status, and a
        ``continue`` token while more are left. A read fault injected for any Job (the API in
        trouble) fails the list too."""
        self._call("list_namespaced_job", f"page {token or 0} of {namespace}", read=False)
        with self._lock:
            fault = next(iter(self.read_faults.values()), None)
        if fault is not None:
            raise fault()
        if token is None:  # a list's pages are one snapshot, taken at its first page
            with self._lock:
                statuses = {
                    name: {k: v for k in COUNTS if (v := getattr(job.status, k)) is not None}
                    for name, job in self.jobs.items()
                    if job.metadata.namespace == namespace
                }
                for name, in_namespace in self.listed_defaults.items():
                    if in_namespace == namespace and name not in statuses:
                        statuses[name] = {"active": 1}
            self._listing = (sorted(statuses), statuses)
        names, statuses = self._listing
        start = int(token or 0)
        page = names[start : start + limit]
        more = str(start + limit) if start + limit < len(names) else None
        items = ",".join(_job_json(name, namespace, statuses[name]) for name in page)
        metadata = json.dumps({"resourceVersion": "1", **({"continue": more} if more else {})})
        body = (
            f'{{"kind":"JobList","apiVersion":"batch/v1","metadata":{metadata},"items":[{items}]}}'
        )
        return HTTPResponse(body=body.encode(), preload_content=True)

    def delete_job(self, name: str, namespace: str) -> k8s.V1Status:
        self._call("delete_namespaced_job", name, read=False)
        with self._lock:
            if self.jobs.get(name) is None:
                raise api_error(404)
            del self.jobs[name]
            return k8s.V1Status(status="Success")

    def list_pods(
        self, namespace: str, field_selector: str | None, label_selector: str | None
    ) -> k8s.V1PodList:
        by_job = bool(label_selector)
        if by_job:
            subject = _selected(label_selector or "", "job-name")
        else:
            subject = _selected(field_selector or "", "metadata.name")
        self._call("list_namespaced_pod", subject)
        with self._lock:  # a Job's one pod is named after it: a look-up, not a scan
            pod = self.pods.get(f"{subject}-{POD_SUFFIX}" if by_job else subject)
            found = pod is not None and pod.metadata.namespace == namespace
            if found and by_job:
                found = pod.metadata.labels["job-name"] == subject
            return k8s.V1PodList(items=[pod] if found else [])

    def delete_pod(self, name: str, namespace: str) -> k8s.V1Pod:
        self._call("delete_namespaced_pod", name, read=False)
        with self._lock:
            pod = self.pods.pop(name, None)
            if pod is None:
                raise api_error(404)
            return pod

    def pod_log(self, name: str, preload: bool, timestamps: bool) -> HTTPResponse | str:
        self._call("read_namespaced_pod_log", name)
        with self._lock:
            if name not in self.pods:
                raise api_error(404)
        stamp = f"{LOG_TIME} " if timestamps else ""
        text = "".join(f"{stamp}{line}\n" for line in POD_LOG)
        return text if preload else HTTPResponse(body=text.encode(), preload_content=True)

    def list_events(self, field_selector: str) -> k8s.CoreV1EventList:
        self._call("list_namespaced_event", _selected(field_selector, "involvedObject.name"))
        with self._lock:
            return k8s.CoreV1EventList(items=[])


class _FakeApi:
    """Records calls to API methods the fake does not implement, so tests can assert none."""

    def __init__(self, cluster: FakeCluster) -> None:
        self._cluster = cluster

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            self._cluster.unexpected.append(f"{type(self).__name__}.{name}")
        raise AttributeError(name)


class FakeBatchV1Api(_FakeApi):
    """The ``BatchV1Api`` methods dagster-k8s calls."""

    def create_namespaced_job(self, namespace: str, body: k8s.V1Job, **_: Any) -> k8s.V1Job:
        return self._cluster.create_job(body, namespace)

    def read_namespaced_job_status(self, name: str, namespace: str, **_: Any) -> k8s.V1Job:
        return self._cluster.read_job("read_namespaced_job_status", name, namespace)

    def read_namespaced_job(self, name: str, namespace: str, **_: Any) -> k8s.V1Job:
        return self._cluster.read_job("read_namespaced_job", name, namespace)

    def list_namespaced_job(
        self,
        namespace: str,
        field_selector: str = "",
        label_selector: str = "",
        limit: int = 0,
        _continue: str | None = None,
        _preload_content: bool = True,
        **_: Any,
    ):
        if label_selector:
            assert label_selector == "app.kubernetes.io/component=run_worker", label_selector
            assert not _preload_content, "the fake answers Job lists as JSON only"
            return self._cluster.list_run_worker_jobs(namespace, limit or 10**9, _continue)
        return self._cluster.list_jobs(namespace, field_selector)

    def delete_namespaced_job(self, name: str, namespace: str, **_: Any) -> k8s.V1Status:
        return self._cluster.delete_job(name, namespace)


class FakeCoreV1Api(_FakeApi):
    """The ``CoreV1Api`` methods dagster-k8s calls."""

    def list_namespaced_pod(
        self,
        namespace: str,
        field_selector: str | None = None,
        label_selector: str | None = None,
        **_: Any,
    ) -> k8s.V1PodList:
        return self._cluster.list_pods(namespace, field_selector, label_selector)

    def read_namespaced_pod_log(
        self,
        name: str,
        namespace: str,
        _preload_content: bool = True,
        timestamps: bool = False,
        **_: Any,
    ) -> HTTPResponse | str:
        return self._cluster.pod_log(name, _preload_content, timestamps)

    def list_namespaced_event(
        self, namespace: str, field_selector: str = "", **_: Any
    ) -> k8s.CoreV1EventList:
        return self._cluster.list_events(field_selector)

    def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> k8s.V1Pod:
        return self._cluster.delete_pod(name, namespace)


CLUSTER = FakeCluster()  # the cluster every FakeClusterK8sRunLauncher talks to


class FakeClusterK8sRunLauncher(K8sRunLauncher):
    """The real ``K8sRunLauncher``, its API client pointed at :data:`CLUSTER`.

    Takes K8sRunLauncher's own config; the kubeconfig it loads (a Kubernetes client
    requirement) names a server that is never contacted."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["load_incluster_config"] = False
        kwargs["kubeconfig_file"] = kwargs.get("kubeconfig_file") or fake_kubeconfig()
        super().__init__(
            k8s_client_batch_api=CLUSTER.batch_api, k8s_client_core_api=CLUSTER.core_api, **kwargs
        )


@cache
def fake_kubeconfig() -> str:
    path = Path(tempfile.mkdtemp(prefix="fake-kube-")) / "config"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        "clusters: [{name: fake, cluster: {server: 'https://fake-cluster.invalid'}}]\n"
        "users: [{name: fake, user: {token: fake}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
    )
    return str(path)


COUNTS = ("active", "succeeded", "failed")  # of a Job's status, what health checks read
RECORDED_JOB = Path(__file__).parent.parent / "recorded" / "k8s_job_active.json"


class _Response:
    """What ``ApiClient.deserialize`` reads of an HTTP response: its body."""

    def __init__(self, data: str) -> None:
        self.data = data


@cache
def _recorded_job() -> tuple[str, Any]:
    from dagster_k8s.client import PatchedApiClient

    return RECORDED_JOB.read_text(), PatchedApiClient()


def _recorded_active_job(name: str, namespace: str) -> k8s.V1Job:
    """An active run worker Job as the API server sends it (recorded from the test cluster:
    K8sRunLauncher's Job, 7 KB of JSON), deserialized by dagster-k8s's API client as a real
    answer is: the client's work on the answer, without the HTTP and TLS around it."""
    body, client = _recorded_job()
    job = client.deserialize(_Response(body), "V1Job")
    job.metadata.name, job.metadata.namespace = name, namespace
    return job


@cache
def _job_json_parts() -> tuple[str, str, str, str]:
    """The recorded Job as compact JSON, split where its name, namespace and status go."""
    job = json.loads(RECORDED_JOB.read_text())
    job["metadata"]["name"], job["metadata"]["namespace"] = "@@NAME@@", "@@NAMESPACE@@"
    job["status"] = "@@STATUS@@"
    text = json.dumps(job, separators=(",", ":"))
    head, rest = text.split('"@@NAME@@"')
    middle, rest = rest.split('"@@NAMESPACE@@"')
    before_status, tail = rest.split('"@@STATUS@@"')
    return head, middle, before_status, tail


def _job_json(name: str, namespace: str, status: dict) -> str:
    head, middle, before_status, tail = _job_json_parts()
    values = (json.dumps(name), json.dumps(namespace), json.dumps(status))
    return f"{head}{values[0]}{middle}{values[1]}{before_status}{values[2]}{tail}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _selected(selector: str, key: str) -> str:
    """``value`` from a ``key=value`` selector."""
    found, _, value = selector.partition("=")
    assert found == key, f"unexpected selector {selector!r}"
    return value


def _job_status(state: JobState, start_time: datetime.datetime) -> k8s.V1JobStatus:
    if state == "active":
        return k8s.V1JobStatus(active=1, start_time=start_time)
    if state == "succeeded":
        return k8s.V1JobStatus(succeeded=1, start_time=start_time, completion_time=_now())
    failed = k8s.V1JobCondition(type="Failed", status="True", reason="BackoffLimitExceeded")
    return k8s.V1JobStatus(failed=1, start_time=start_time, conditions=[failed])


def _pod_status(state: JobState, spec: k8s.V1PodSpec) -> k8s.V1PodStatus:
    if state == "active":
        phase, container_state = (
            "Running",
            k8s.V1ContainerState(running=k8s.V1ContainerStateRunning(started_at=_now())),
        )
    else:
        exit_code, reason = (0, "Completed") if state == "succeeded" else (137, "OOMKilled")
        phase = "Succeeded" if state == "succeeded" else "Failed"
        container_state = k8s.V1ContainerState(
            terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code, reason=reason)
        )
    statuses = [
        k8s.V1ContainerStatus(
            name=c.name,
            image=c.image,
            image_id="",
            ready=state == "active",
            restart_count=0,
            state=container_state,
        )
        for c in spec.containers
    ]
    return k8s.V1PodStatus(phase=phase, container_statuses=statuses)
