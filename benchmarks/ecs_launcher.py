"""The benchmark's ``ecs`` launcher: Dagster's ``EcsRunLauncher`` (dagster-aws) with its boto3
ECS and CloudWatch Logs clients replaced by fakes that take ``latency_seconds`` a call (a module
of its own: dagster-aws is imported only where it is used).

The fake ECS knows every task as RUNNING except those the crash storm stopped (each then reads
as the recorded document of a container that exited with code 137); ``run_task`` starts a new
RUNNING task. Nothing leaves the machine: the real clients are built against a closed loopback
endpoint and never called."""

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from benchmarks.launcher import DEFAULT_LATENCY_SECONDS, CountedHealthChecks, latency_field

CLUSTER = "arn:aws:ecs:us-east-1:123456789012:cluster/bench"
RECORDED = Path(__file__).parents[1] / "dagster_run_monitor_tests" / "recorded"
IMAGE = "127.0.0.1:9/etl:1"  # never pulled: no task runs
STOPPED_DOCUMENT = "ecs_task_sigkill_no_oom.json"  # exit code 137, no OOM reason
for _name, _value in {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "benchmark",
    "AWS_SECRET_ACCESS_KEY": "benchmark",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(_name, _value)

from dagster_aws.ecs import EcsRunLauncher  # noqa: E402


class FakeEcs:
    """The calls EcsRunLauncher makes to ECS and CloudWatch Logs, each taking ``latency``."""

    def __init__(self) -> None:
        self.latency = DEFAULT_LATENCY_SECONDS
        self.stopped: set[str] = set()
        self.calls = 0
        self.definitions: dict[str, dict] = {}  # by family
        self._lock = threading.Lock()
        self._document = json.loads((RECORDED / STOPPED_DOCUMENT).read_text())

    def _call(self) -> None:
        with self._lock:
            self.calls += 1
        if self.latency:
            time.sleep(self.latency)

    def describe_tasks(self, *, tasks: list[str], cluster: str | None = None, **_: Any) -> dict:
        self._call()
        return {"tasks": [self._task(arn, cluster or CLUSTER) for arn in tasks], "failures": []}

    def _task(self, arn: str, cluster: str) -> dict:
        if arn in self.stopped:
            return {**self._document, "taskArn": arn, "clusterArn": cluster}
        container = {"name": "run", "lastStatus": "RUNNING"}
        task = {"taskArn": arn, "clusterArn": cluster, "lastStatus": "RUNNING"}
        return {**task, "containers": [container]}

    def describe_task_definition(self, *, taskDefinition: str, **_: Any) -> dict:  # noqa: N803
        """A family registered here; any other ARN (a stopped task's) with a container without
        log configuration (no log read); an unknown family: ECS's error."""
        self._call()
        if taskDefinition in self.definitions:
            return {"taskDefinition": self.definitions[taskDefinition]}
        if not taskDefinition.startswith("arn:"):
            error = {"Error": {"Code": "ClientException", "Message": "Unable to describe."}}
            raise ClientError(error, "DescribeTaskDefinition")
        return {"taskDefinition": {"containerDefinitions": [{"name": "run"}]}}

    def register_task_definition(self, **definition: Any) -> dict:
        self._call()
        arn = f"arn:aws:ecs:us-east-1:123456789012:task-definition/{definition['family']}:1"
        with self._lock:
            self.definitions[definition["family"]] = {**definition, "taskDefinitionArn": arn}
        return {"taskDefinition": self.definitions[definition["family"]]}

    def run_task(self, **_: Any) -> dict:
        self._call()
        arn = new_task_arn()
        return {"tasks": [{"taskArn": arn, "clusterArn": CLUSTER}], "failures": []}

    def stop_task(self, **_: Any) -> dict:
        self._call()
        return {}

    def get_log_events(self, **_: Any) -> dict:
        self._call()
        return {"events": []}


ECS = FakeEcs()


def new_task_arn() -> str:
    return f"arn:aws:ecs:us-east-1:123456789012:task/bench/{uuid.uuid4().hex}"


class LatencyEcsRunLauncher(CountedHealthChecks, EcsRunLauncher):
    """Dagster's ``EcsRunLauncher``, its ECS and Logs clients the fake ``ECS``; counts its
    health checks; ``api_calls``: the fake's calls."""

    def __init__(self, latency_seconds: float = DEFAULT_LATENCY_SECONDS, **kwargs: Any):
        super().__init__(**kwargs)
        ECS.latency = latency_seconds
        self.ecs = self.logs = ECS  # type: ignore[assignment]

    @classmethod
    def config_type(cls):
        return {**EcsRunLauncher.config_type(), "latency_seconds": latency_field()}

    def get_image_for_run(self, context: Any) -> str | None:
        """The benchmark's runs have no image in their code origin (EcsRunLauncher's API for
        choosing one)."""
        return IMAGE

    @property
    def api_calls(self) -> int:
        return ECS.calls


def worker_tags() -> dict[str, str]:
    """The tags EcsRunLauncher writes on a run when it starts its task."""
    return {"ecs/task_arn": new_task_arn(), "ecs/cluster": CLUSTER}
