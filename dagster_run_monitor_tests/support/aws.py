"""Dagster's real EcsRunLauncher with nothing leaving the machine: its configuration, and a
fixture that points every AWS endpoint at a closed loopback port (botocore's Stubber answers
what a test stubs; any other call fails at once)."""

import pytest

ECS_LAUNCHER = {
    "module": "dagster_aws.ecs",
    "class": "EcsRunLauncher",
    "config": {"use_current_ecs_task_config": False, "secrets_tag": None},
}
CLUSTER = "arn:aws:ecs:us-east-1:123456789012:cluster/dagster"  # the run worker's


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    """A region, dummy credentials, and every AWS endpoint on a closed loopback port: a call
    the test did not stub fails at once, and nothing leaves the machine."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
