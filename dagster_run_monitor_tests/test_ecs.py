"""Amazon ECS with Dagster's real ``EcsRunLauncher`` (dagster-aws), its boto3 ECS and CloudWatch
Logs clients faked at the client boundary (botocore's Stubber: an unexpected call fails the
test, and nothing leaves the machine): why the task died, from recorded task documents, and
health checks at one ``describe_tasks`` per 100 tasks."""

import json
from pathlib import Path

import pytest
from botocore.stub import Stubber
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._core.test_utils import create_run_for_test

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.crash_cause import ecs_cause
from dagster_run_monitor_tests.support.runs import messages, monitor_pass, status_of

pytest.importorskip("dagster_aws.ecs")
from dagster_aws.ecs.utils import is_transient_task_stopped_reason  # noqa: E402

RECORDED = Path(__file__).with_name("recorded")
ECS_LAUNCHER = {
    "module": "dagster_aws.ecs",
    "class": "EcsRunLauncher",
    "config": {"use_current_ecs_task_config": False},
}
CLUSTER = "arn:aws:ecs:us-east-1:123456789012:cluster/dagster"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    """A region and dummy credentials for boto3's clients; no call ever reaches AWS."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def task_arn(i: int) -> str:
    return f"arn:aws:ecs:us-east-1:123456789012:task/dagster/{i:032x}"


def task(arn: str, status: str = "RUNNING", **fields) -> dict:
    return {
        "taskArn": arn,
        "clusterArn": CLUSTER,
        "lastStatus": status,
        "containers": [{"name": "run", "lastStatus": status}],
        **fields,
    }


def ecs_runs(instance, count: int) -> list:
    """STARTED runs, each with the task EcsRunLauncher would have tagged it with."""
    return [
        create_run_for_test(
            instance,
            job_name="monitored_job",
            status=S.STARTED,
            tags={"ecs/task_arn": task_arn(i), "ecs/cluster": CLUSTER},
        )
        for i in range(count)
    ]


def test_a_pass_over_1000_runs_describes_their_tasks_100_a_call(make_instance, workspace_context):
    launcher = ECS_LAUNCHER
    with make_instance(launcher=launcher, run_monitoring={}) as instance:
        runs = ecs_runs(instance, 1000)
        arns = sorted(task_arn(i) for i in range(1000))
        stubber = Stubber(instance.run_launcher.ecs)
        for start in range(0, 1000, 100):
            batch = arns[start : start + 100]
            response = {"tasks": [task(arn) for arn in batch], "failures": []}
            stubber.add_response("describe_tasks", response, {"tasks": batch, "cluster": CLUSTER})
        with stubber, workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx) == []  # an 11th call would fail a health check
            stubber.assert_no_pending_responses()
        assert {status_of(instance, r.run_id) for r in runs} == {S.STARTED}


def test_an_oom_killed_task_fails_its_run_with_the_cause_and_the_logs(
    make_instance, workspace_context
):
    config = {"max_resume_run_attempts": 0}
    with make_instance(launcher=ECS_LAUNCHER, run_monitoring=config) as instance:
        (run,) = ecs_runs(instance, 1)
        document = json.loads((RECORDED / "ecs_task_oom_killed.json").read_text())
        document = {**document, "taskArn": task_arn(0), "clusterArn": CLUSTER}
        ecs = Stubber(instance.run_launcher.ecs)
        ecs.add_response(
            "describe_tasks",
            {"tasks": [document], "failures": []},
            {"tasks": [task_arn(0)], "cluster": CLUSTER},
        )
        definition = {
            "taskDefinitionArn": document["taskDefinitionArn"],
            "containerDefinitions": [
                {
                    "name": "run",
                    "logConfiguration": {
                        "logDriver": "awslogs",
                        "options": {"awslogs-group": "dagster", "awslogs-stream-prefix": "ecs"},
                    },
                }
            ],
        }
        ecs.add_response(
            "describe_task_definition",
            {"taskDefinition": definition},
            {"taskDefinition": document["taskDefinitionArn"]},
        )
        logs = Stubber(instance.run_launcher.logs)
        logs.add_response(
            "get_log_events",
            {"events": [{"message": "MemoryError in step load"}]},
            {
                "logGroupName": "dagster",
                "logStreamName": f"ecs/run/{task_arn(0).rsplit('/', 1)[-1]}",
                "limit": 10,
            },
        )
        with ecs, logs, workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx) == []
            ecs.assert_no_pending_responses()
        assert status_of(instance, run.run_id) == S.FAILURE
        failure = [m for m in messages(instance, run.run_id) if "Detected run worker" in m][-1]
        assert "(cause: oom_killed" in failure
        assert "OutOfMemoryError: Container killed due to memory usage" in failure
        assert "MemoryError in step load" in failure  # the launcher's log read, failed runs only
        assert instance.get_run_by_id(run.run_id).tags[c.CRASH_CAUSE_TAG] == "oom_killed"


@pytest.mark.parametrize(
    "name, kind",
    [
        ("ecs_task_oom_killed", "oom_killed"),
        ("ecs_task_oom_killed_ec2", "oom_killed"),
        ("ecs_task_spot_interruption", "preempted"),
        ("ecs_task_termination_notice", "preempted"),
        ("ecs_task_image_pull", "image_pull"),
        ("ecs_task_config_error", "config_error"),
        ("ecs_task_log_config_error", "config_error"),
        ("ecs_task_user_stopped", "deleted"),
        ("ecs_task_service_scheduler", "deleted"),
        ("ecs_task_host_terminated", "node_lost"),
        ("ecs_task_exit_code_3", "exit_code"),
        ("ecs_task_sigterm", "signal"),
        ("ecs_task_sigkill_no_oom", "signal"),
    ],
)
def test_each_cause_from_its_task_document(name, kind):
    document = json.loads((RECORDED / f"{name}.json").read_text())
    assert ecs_cause(document, "run").kind == kind


def test_a_transient_pull_failure_and_a_forgotten_task():
    document = json.loads((RECORDED / "ecs_task_image_pull_transient.json").read_text())
    assert is_transient_task_stopped_reason(document["stoppedReason"])  # dagster-aws's reading
    assert ecs_cause(document, "run", transient=True).kind == "unknown"
    assert ecs_cause(None, "run").kind == "deleted"
