"""The benchmark's ``k8s`` launcher: Dagster's ``K8sRunLauncher`` with its Kubernetes API faked
(a module of its own: the Kubernetes client is imported only where it is used)."""

from dagster import DagsterInstance, RunsFilter
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.storage.tags import DOCKER_IMAGE_TAG
from dagster_k8s import K8sRunLauncher

from benchmarks.launcher import DEFAULT_LATENCY_SECONDS, CountedHealthChecks, latency_field
from dagster_run_monitor_tests.support.fake_k8s import CLUSTER, FakeClusterK8sRunLauncher


class LatencyK8sRunLauncher(CountedHealthChecks, FakeClusterK8sRunLauncher):
    """Dagster's ``K8sRunLauncher``, only its Kubernetes API objects faked
    (``dagster_run_monitor_tests.support.fake_k8s``): each API call takes ``latency_seconds``,
    and a Job the fake has no record of reads as active (a healthy worker), so N workers need
    no objects; the crash storm records failed Jobs. Counts its health checks."""

    def __init__(self, latency_seconds: float = DEFAULT_LATENCY_SECONDS, **kwargs):
        CLUSTER.latency_seconds = latency_seconds
        CLUSTER.default_job_state = "active"
        CLUSTER.light = True
        super().__init__(**kwargs)

    @classmethod
    def config_type(cls):
        return {**K8sRunLauncher.config_type(), "latency_seconds": latency_field()}

    @property
    def api_calls(self) -> int:
        return CLUSTER.call_count


def worker_tags() -> dict[str, str]:
    """The tag K8sRunLauncher writes on a run when it launches its worker."""
    from benchmarks.monitor_pass.storage import K8S_IMAGE

    return {DOCKER_IMAGE_TAG: K8S_IMAGE}


def register_workers(instance: DagsterInstance) -> None:
    """The fake API lists a Job for every STARTED or STARTING run (a worker that runs), as a
    cluster would; reads of Jobs it has no record of answer active anyway."""
    from dagster_k8s.job import get_job_name_from_run_id

    from benchmarks.monitor_pass.storage import K8S_NAMESPACE

    statuses = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING]
    records = instance.get_run_records(RunsFilter(statuses=statuses))
    CLUSTER.listed_defaults.update(
        {get_job_name_from_run_id(r.dagster_run.run_id): K8S_NAMESPACE for r in records}
    )
