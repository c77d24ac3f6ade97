"""Amazon ECS with Dagster's real ``EcsRunLauncher`` (dagster-aws), its boto3 ECS and CloudWatch
Logs clients faked at the client boundary (botocore's Stubber: an unexpected call fails the
test, and nothing leaves the machine): why the task died, from recorded task documents, and
health checks at one ``describe_tasks`` per 100 tasks."""

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber
from dagster import Definitions, job, op
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._core.test_utils import create_run_for_test

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.crash_cause import ecs_cause
from dagster_run_monitor_tests.support.aws import CLUSTER, ECS_LAUNCHER, aws_env  # noqa: F401
from dagster_run_monitor_tests.support.runs import (
    make_run,
    messages,
    monitor_pass,
    pool_connections,
    status_of,
    tags_of,
)

pytest.importorskip("dagster_aws.ecs")
from dagster_aws.ecs import EcsRunLauncher  # noqa: E402
from dagster_aws.ecs.container_context import EcsContainerContext  # noqa: E402
from dagster_aws.ecs.utils import is_transient_task_stopped_reason  # noqa: E402

# dagster-aws 0.29.25 gave EcsRunLauncher resume_run; the dagster112 tox env has 0.28.
CAN_RESUME = "resume_run" in vars(EcsRunLauncher)

RECORDED = Path(__file__).with_name("recorded")


@op
def work() -> None:
    pass


@job
def ecs_job() -> None:
    work()


defs = Definitions(jobs=[ecs_job])
_ORIGIN = ReconstructableRepository.for_file(__file__, "defs").get_reconstructable_job("ecs_job")
ORIGIN = _ORIGIN.get_python_origin()
ORIGIN = ORIGIN._replace(  # the image EcsRunLauncher registers a task definition with
    repository_origin=ORIGIN.repository_origin._replace(container_image="127.0.0.1:9/run:1")
)


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


def ecs_runs(instance, count: int, code_origin: Any = None) -> list:
    """STARTED runs, each with the task EcsRunLauncher would have tagged it with."""
    pool_connections(instance)
    return [
        create_run_for_test(
            instance,
            job_name="monitored_job",
            status=S.STARTED,
            tags={"ecs/task_arn": task_arn(i), "ecs/cluster": CLUSTER},
            job_code_origin=code_origin,
        )
        for i in range(count)
    ]


def test_a_pass_over_1000_runs_describes_their_tasks_100_a_call(
    make_instance, workspace_context, monkeypatch
):
    """Two passes: 10 describe_tasks calls each; each run's container context (its code
    location's, processed as config) built once, and again only when its tags change."""
    built = []
    create = EcsContainerContext.create_from_config
    monkeypatch.setattr(
        EcsContainerContext, "create_from_config", lambda config: built.append(1) or create(config)
    )
    context = {"ecs": {"env_vars": ["STAGE=prod"], "run_resources": {"memory": "2048"}}}
    origin = ORIGIN._replace(
        repository_origin=ORIGIN.repository_origin._replace(container_context=context)
    )
    with make_instance(launcher=ECS_LAUNCHER, run_monitoring={}) as instance:
        runs = ecs_runs(instance, 1000, origin)
        arns = sorted(task_arn(i) for i in range(1000))
        stubber = Stubber(instance.run_launcher.ecs)
        for _ in range(2):
            for start in range(0, 1000, 100):
                batch = arns[start : start + 100]
                response = {"tasks": [task(arn) for arn in batch], "failures": []}
                stubber.add_response(
                    "describe_tasks", response, {"tasks": batch, "cluster": CLUSTER}
                )
        with stubber, workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx) == []  # an 11th call would fail a health check
            assert len(built) == 1000
            instance.add_run_tags(runs[0].run_id, {"team": "data"})
            assert monitor_pass(instance, ctx) == []
            stubber.assert_no_pending_responses()
        assert len(built) == 1001
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


class FakeEcs:
    """The launcher's ECS and CloudWatch Logs clients, stubbed: each call the test expects is
    answered in order, any other call fails; ``run_task`` requests are kept."""

    def __init__(self, launcher: Any):
        self.ecs, self.logs = Stubber(launcher.ecs), Stubber(launcher.logs)
        self.run_tasks: list[dict] = []
        launcher.ecs.meta.events.register(
            "provide-client-params.ecs.RunTask", lambda params, **_: self.run_tasks.append(params)
        )

    def __enter__(self) -> "FakeEcs":
        self.ecs.__enter__(), self.logs.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.ecs.__exit__(*exc), self.logs.__exit__(*exc)

    def stopped(self, name: str, arn: str, rechecked: bool = False) -> None:
        """The task ``arn`` as the recorded document ``name``: described by the pass (its
        health check answers from that, and the launcher's log read of a failed worker reads
        the task definition, whose container has no log configuration here); ``rechecked``:
        before a resume, the check again under the claim, read afresh (the launcher describes
        the task twice then: for the check and for its log read)."""
        document = json.loads((RECORDED / f"{name}.json").read_text())
        document = {**document, "taskArn": arn, "clusterArn": CLUSTER}
        described = ({"tasks": [document], "failures": []}, {"tasks": [arn], "cluster": CLUSTER})
        definition = (
            {"taskDefinition": {"containerDefinitions": [{"name": "run"}]}},
            {"taskDefinition": document["taskDefinitionArn"]},
        )
        calls = [described, definition] + ([described, described, definition] if rechecked else [])
        for response, params in calls:
            operation = "describe_tasks" if "tasks" in params else "describe_task_definition"
            self.ecs.add_response(operation, response, params)

    def relaunch(self, new_arn: str) -> None:
        """A resume: the task definition looked up (none yet), registered, the task run."""
        self.ecs.add_client_error(
            "describe_task_definition", "ClientException", "Unable to describe task definition."
        )
        self.ecs.add_response(
            "register_task_definition",
            {
                "taskDefinition": {
                    "taskDefinitionArn": "arn:aws:ecs:us-east-1:1:task-definition/r:1"
                }
            },
        )
        self.ecs.add_response(
            "run_task", {"tasks": [{"taskArn": new_arn, "clusterArn": CLUSTER}], "failures": []}
        )

    def done(self) -> None:
        self.ecs.assert_no_pending_responses()
        self.logs.assert_no_pending_responses()


def started_ecs_run(instance, tags: dict[str, str] | None = None) -> DagsterRun:
    """A STARTED run of a job with a code origin (what resume_run relaunches) in task 0."""
    task_tags = {"ecs/task_arn": task_arn(0), "ecs/cluster": CLUSTER, **(tags or {})}
    return make_run(instance, S.STARTED, tags=task_tags, job_def=ecs_job, code_origin=ORIGIN)


def resumes(instance, run: DagsterRun) -> int:
    return messages(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE)


@pytest.mark.skipif(not CAN_RESUME, reason="dagster-aws < 0.29.25: no resume_run")
def test_an_oom_killed_fargate_task_is_resumed_with_more_memory_and_the_cpu_it_needs(
    make_instance, workspace_context
):
    """2048 MiB x 2.5 = 5120 MiB, which 1024 CPU units (the task's) do not admit on Fargate
    past 8192 MiB but do here; x 5 = 10240 MiB needs 2048 units."""
    config = {"max_resume_run_attempts": 1, "oom_memory": {"multiplier": 5, "max": "16Gi"}}
    with make_instance(launcher=ECS_LAUNCHER, run_monitoring=config) as instance:
        run = started_ecs_run(instance)
        with FakeEcs(instance.run_launcher) as fake, workspace_context(instance) as ctx:
            fake.stopped("ecs_task_oom_killed", task_arn(0), rechecked=True)
            fake.relaunch(task_arn(1))
            assert monitor_pass(instance, ctx) == []
            fake.done()
        assert resumes(instance, run) == 1
        tags = tags_of(instance, run.run_id)
        assert tags["ecs/memory"] == "10240" and tags["ecs/cpu"] == "2048"
        assert tags["ecs/task_arn"] == task_arn(1)  # the launcher's tag: the new task
        assert tags[c.CRASH_CAUSE_TAG] == "oom_killed"
        (request,) = fake.run_tasks
        overrides = request["overrides"]
        assert overrides["memory"] == "10240" and overrides["cpu"] == "2048"
        assert overrides["containerOverrides"][0]["memory"] == 10240
        assert (
            "Resuming with memory 10240 MiB (was 2048 MiB) and CPU 2048 units (was 1024:"
            " Fargate's smallest size for it) after the worker was OOM-killed: 5 x the killed"
            " limit."
        ) in messages(instance, run.run_id)


@pytest.mark.skipif(not CAN_RESUME, reason="dagster-aws < 0.29.25: no resume_run")
def test_a_spot_interruption_is_resumed_without_using_an_attempt(make_instance, workspace_context):
    config = {
        "max_resume_run_attempts": 1,
        "crash_policy": [{"causes": ["preempted"], "action": "resume_uncounted"}],
    }
    with make_instance(launcher=ECS_LAUNCHER, run_monitoring=config) as instance:
        run = started_ecs_run(instance)
        with FakeEcs(instance.run_launcher) as fake, workspace_context(instance) as ctx:
            fake.stopped("ecs_task_spot_interruption", task_arn(0), rechecked=True)
            fake.relaunch(task_arn(1))
            assert monitor_pass(instance, ctx) == []
            fake.done()
        tags = tags_of(instance, run.run_id)
        assert resumes(instance, run) == 1 and tags[c.UNCOUNTED_RESUMES_TAG] == "1"
        assert tags[c.CRASH_CAUSE_TAG] == "preempted"
        assert tags["ecs/task_arn"] == task_arn(1) and status_of(instance, run.run_id) == S.STARTED


def test_an_image_that_cannot_be_pulled_fails_the_run_under_crash_policy_fail(
    make_instance, workspace_context
):
    config = {
        "max_resume_run_attempts": 3 if CAN_RESUME else 0,  # Dagster refuses more without it
        "crash_policy": [{"causes": ["image_pull"], "action": "fail"}],
    }
    with make_instance(launcher=ECS_LAUNCHER, run_monitoring=config) as instance:
        run = started_ecs_run(instance)
        with FakeEcs(instance.run_launcher) as fake, workspace_context(instance) as ctx:
            fake.stopped("ecs_task_image_pull", task_arn(0))
            assert monitor_pass(instance, ctx) == []  # a run_task call would fail here
            fake.done()
        assert status_of(instance, run.run_id) == S.FAILURE and resumes(instance, run) == 0
        assert tags_of(instance, run.run_id)[c.CRASH_CAUSE_TAG] == "image_pull"
        failure = [m for m in messages(instance, run.run_id) if "Detected run worker" in m][-1]
        assert "(cause: image_pull" in failure and "CannotPullContainerError" in failure


@pytest.mark.skipif(
    CAN_RESUME, reason="dagster-aws >= 0.29.25 resumes (the dagster112 env has 0.28)"
)
def test_before_dagster_aws_0_29_25_an_oom_kill_fails_the_run_with_its_cause(
    make_instance, workspace_context
):
    """Dagster refuses max_resume_run_attempts above 0 for a launcher that cannot resume; a
    policy that says resume falls back to failing the run."""
    config = {
        "max_resume_run_attempts": 0,
        "oom_memory": {"multiplier": 2},
        "crash_policy": [{"causes": ["oom_killed"], "action": "resume_uncounted"}],
    }
    with make_instance(launcher=ECS_LAUNCHER, run_monitoring=config) as instance:
        run = started_ecs_run(instance)
        with FakeEcs(instance.run_launcher) as fake, workspace_context(instance) as ctx:
            fake.stopped("ecs_task_oom_killed", task_arn(0))
            assert monitor_pass(instance, ctx) == []
            fake.done()
        assert status_of(instance, run.run_id) == S.FAILURE and resumes(instance, run) == 0
        assert tags_of(instance, run.run_id)[c.CRASH_CAUSE_TAG] == "oom_killed"
        failure = [m for m in messages(instance, run.run_id) if "Detected run worker" in m][-1]
        assert "(cause: oom_killed" in failure
