"""Step workers of ``ecs_executor`` (dagster-aws) that died, with Dagster's real
``EcsRunLauncher``, whose ECS client is faked at the client boundary (botocore's Stubber):
the events are the executor's own (STEP_WORKER_STARTING with the step task's "Task ARN", then
the STEP_FAILURE its health check writes, with the text of ``EcsStepHandler.check_step_health``
itself), the causes come from recorded step-task documents described once per cluster, and
the retry from failure gets the memory and CPU Fargate accepts, in the executor's config."""

import json
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from botocore.stub import Stubber
from botocore.validate import validate_parameters
from dagster import job, op, validate_run_config
from dagster._core.definitions.metadata import MetadataValue
from dagster._core.events import DagsterEventType, EngineEventData
from dagster._core.execution.plan.objects import StepFailureData
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._core.test_utils import create_run_for_test
from dagster._utils.error import SerializableErrorInfo

from dagster_run_monitor.config.parse import settings_from_config
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.step_crashes import decide_failed_run
from dagster_run_monitor.daemon.failed_runs import failed_run_facts
from dagster_run_monitor_tests.support.aws import CLUSTER, ECS_LAUNCHER, aws_env  # noqa: F401
from dagster_run_monitor_tests.support.runs import report
from dagster_run_monitor_tests.support.step_events import step_event

pytest.importorskip("dagster_aws.ecs")
from dagster_aws.ecs import ecs_executor  # noqa: E402
from dagster_aws.ecs.executor import EcsStepHandler  # noqa: E402

RECORDED = Path(__file__).with_name("recorded")
RUN_CONFIG = {"execution": {"config": {"cpu": 1024, "memory": 2048}}}


@op
def load() -> None:
    pass


@op
def train() -> None:
    pass


@job(executor_def=ecs_executor)
def ecs_step_job() -> None:
    load()
    train()


def document(name: str, arn: str | None = None) -> dict:
    """A recorded step task's ``describe_tasks`` document (``arn``: as that task)."""
    task = json.loads((RECORDED / f"{name}.json").read_text())
    if arn is not None:
        task = {**task, "taskArn": arn, "containers": [{**task["containers"][0], "taskArn": arn}]}
    return task


def described(*tasks: dict) -> dict:
    return {"tasks": list(tasks), "failures": []}


@pytest.mark.parametrize("name", ["ecs_step_task_oom_killed", "ecs_step_task_spot"])
def test_the_recorded_step_tasks_are_describe_tasks_output(name):
    """As botocore models DescribeTasks' output (Stubber checks each answer the same way)."""
    client = boto3.client("ecs")
    shape = client.meta.service_model.operation_model("DescribeTasks").output_shape
    validate_parameters(described(document(name)), shape)


def health_check_failure(step_key: str, task: dict) -> str:
    """The STEP_FAILURE message ecs_executor writes for a step whose task stopped: the
    unhealthy reason of the real ``EcsStepHandler.check_step_health`` (its describe_tasks on
    a client of its own, in the run worker's cluster), in the step-delegating executor's
    words."""
    handler = object.__new__(EcsStepHandler)  # __init__ reads the ECS task metadata endpoint
    handler.ecs = boto3.client("ecs")
    handler._cluster_arn = CLUSTER
    handler._launched_tasks = {f"{step_key}-0": task["taskArn"]}
    args = SimpleNamespace(step_keys_to_execute=[step_key], known_state=None)
    with Stubber(handler.ecs) as stub:
        stub.add_response(
            "describe_tasks", described(task), {"tasks": [task["taskArn"]], "cluster": CLUSTER}
        )
        result = handler.check_step_health(SimpleNamespace(execute_step_args=args))
        stub.assert_no_pending_responses()
    assert not result.is_healthy
    return f"Step {step_key} failed health check: {result.unhealthy_reason}"


def ecs_step_died(instance, run: DagsterRun, step_key: str, task: dict) -> None:
    """What ecs_executor writes for a step whose task stopped: the worker starting in its
    task (``launch_step``), then the failure its health check found."""
    starting = step_event(
        run,
        step_key,
        DagsterEventType.STEP_WORKER_STARTING,
        EngineEventData(
            metadata={"Task ARN": MetadataValue.text(task["taskArn"])},
            marker_start="step_process_start",
        ),
        f'Executing step "{step_key}" in ECS task.',
    )
    instance.report_dagster_event(starting, run_id=run.run_id)
    error = SerializableErrorInfo(health_check_failure(step_key, task), [], None)
    failure = step_event(
        run,
        step_key,
        DagsterEventType.STEP_FAILURE,
        StepFailureData(error=error, user_failure_data=None),
        f'Execution of step "{step_key}" failed.',
    )
    instance.report_dagster_event(failure, run_id=run.run_id)


def failed_ecs_run(instance, steps: dict[str, dict]) -> DagsterRun:
    """A run of ``ecs_step_job`` in the run worker's task, whose ``steps`` (step key: its
    task's document) died, then failed."""
    run = create_run_for_test(
        instance,
        job_name=ecs_step_job.name,
        run_config=RUN_CONFIG,
        tags={"ecs/task_arn": f"{CLUSTER.replace('cluster', 'task')}/{'0' * 32}"},
    )
    instance.add_run_tags(run.run_id, {"ecs/cluster": CLUSTER})  # as EcsRunLauncher does
    report(instance, run, DagsterEventType.PIPELINE_STARTING)
    report(instance, run, DagsterEventType.RUN_START)
    for step_key, task in steps.items():
        ecs_step_died(instance, run, step_key, task)
    report(instance, run, DagsterEventType.RUN_FAILURE)
    run = instance.get_run_by_id(run.run_id)
    assert run.status == S.FAILURE
    return run


def describe_calls(client) -> list[dict]:
    """The params of each describe_tasks call ``client`` makes from now on."""
    calls: list[dict] = []
    client.meta.events.register(
        "provide-client-params.ecs.DescribeTasks", lambda params, **_: calls.append(params)
    )
    return calls


@pytest.mark.parametrize(
    "multiplier, memory, cpu",
    [
        (5, 10240, 2048),  # past what 1024 CPU units admit on Fargate (8192 MiB): 2048 units
        (1.5, 3072, 1024),  # 1024 units admit 3072 MiB: the killed task's CPU, kept
    ],
)
def test_step_tasks_that_died_are_described_once_and_retried_with_fargate_sizes(
    make_instance, multiplier, memory, cpu
):
    oom = document("ecs_step_task_oom_killed")
    spot = document("ecs_step_task_spot")
    with make_instance(launcher=ECS_LAUNCHER, run_monitoring={}) as instance:
        run = failed_ecs_run(instance, {"load": oom, "train": spot})
        calls = describe_calls(instance.run_launcher.ecs)
        stubber = Stubber(instance.run_launcher.ecs)
        arns = [oom["taskArn"], spot["taskArn"]]
        # Both tasks are in cluster "dagster", named in their ARNs: one call for both.
        stubber.add_response(
            "describe_tasks", described(oom, spot), {"cluster": "dagster", "tasks": arns}
        )
        with stubber:
            (facts,) = failed_run_facts(instance, [run])
            stubber.assert_no_pending_responses()
        assert calls == [{"cluster": "dagster", "tasks": arns}]

    assert facts.failed_steps == ("load", "train")
    assert [end.worker["Task ARN"] for end in facts.ends] == arns
    load_cause, train_cause = facts.causes[0], facts.causes[1]
    assert load_cause.kind == "oom_killed" and load_cause.exit_code == 137
    assert load_cause.memory == {"memory": "2048", "cpu": "1024", "launch_type": "FARGATE"}
    assert "OutOfMemoryError: Container killed due to memory usage" in load_cause.detail
    assert train_cause.kind == "preempted" and "SpotInterruption" in train_cause.detail

    settings = settings_from_config(
        {
            "step_retries": {"enabled": True, "max_retries": 2},
            "oom_memory": {"multiplier": multiplier, "max": "16Gi"},
        }
    )
    verdict = decide_failed_run(facts, settings, facts.failed_at + 3600)
    (load_died, train_died) = verdict.events
    assert load_died[0] == "load" and load_died[1].startswith(
        "Step 'load' worker died (cause: oom_killed, task 5f2c8e1a9d3b4c7e8a6f0b2d4e1c3a5b"
    )
    assert train_died[0] == "train" and train_died[1].startswith(
        "Step 'train' worker died (cause: preempted, task a7d4e2b9c1f34e8d9b0a6c5e3f2d1b4a"
    )
    retry = verdict.retry
    assert retry is not None and retry.tags[c.CRASH_CAUSE_TAG] == "oom_killed"
    assert retry.run_config == {"execution": {"config": {"cpu": cpu, "memory": memory}}}
    assert f"memory {memory} MiB for every step's task (was 2048 MiB)" in retry.message
    # The executor's config schema takes them (IntSource: ints), and its step handler sends
    # them to run_task as the strings ECS wants.
    assert validate_run_config(ecs_step_job, retry.run_config)
    handler = object.__new__(EcsStepHandler)
    handler._task_overrides, handler._ephemeral_storage = {}, None
    handler._cpu, handler._memory = str(cpu), str(memory)  # as its __init__ converts them
    assert handler._get_task_overrides({}) == {"cpu": str(cpu), "memory": str(memory)}


def test_an_old_format_task_arn_is_described_in_the_run_workers_cluster(make_instance):
    """An ARN of the old format (``task/ID``) names no cluster: ecs_executor ran the step
    task in the run worker's (its health check describes it there), the run's ecs/cluster."""
    arn = "arn:aws:ecs:us-east-1:123456789012:task/5f2c8e1a9d3b4c7e8a6f0b2d4e1c3a5b"
    oom = document("ecs_step_task_oom_killed", arn)
    with make_instance(launcher=ECS_LAUNCHER, run_monitoring={}) as instance:
        run = failed_ecs_run(instance, {"load": oom})
        calls = describe_calls(instance.run_launcher.ecs)
        stubber = Stubber(instance.run_launcher.ecs)
        stubber.add_response("describe_tasks", described(oom), {"cluster": CLUSTER, "tasks": [arn]})
        with stubber:
            (facts,) = failed_run_facts(instance, [run])
            stubber.assert_no_pending_responses()
    assert calls == [{"cluster": CLUSTER, "tasks": [arn]}]
    assert facts.causes[0].kind == "oom_killed"


@pytest.mark.parametrize("step_retries", [True, False])
def test_a_failure_left_to_step_retries_is_tagged_before_dagsters_daemon_can_read_it(
    storage, monkeypatch, step_retries
):
    """Dagster's run-retry daemon reads a failure as soon as it is stored and, finding no
    ``dagster/will_retry`` tag yet, decides by itself: the tag ``false`` of a failure left to
    step retries is written before the failure is stored (seen in CI on PostgreSQL, where the
    daemon read it first and tagged ``true``)."""
    from dagster._core.instance import DagsterInstance
    from dagster._core.storage.tags import WILL_RETRY_TAG
    from dagster._core.test_utils import instance_for_test

    from dagster_run_monitor.config.dagster_yaml import instance_config
    from dagster_run_monitor_tests.support.home import SCRIPTED_LAUNCHER, close_pools
    from dagster_run_monitor_tests.support.postgres import pg_url

    seen_when_stored: list[str | None] = []
    handle = DagsterInstance.handle_new_event

    def storing(self, event, **kwargs):
        dagster_event = event.get_dagster_event() if event.is_dagster_event else None
        if dagster_event is not None and dagster_event.is_run_failure:
            seen_when_stored.append(self.get_run_by_id(event.run_id).tags.get(WILL_RETRY_TAG))
        return handle(self, event, **kwargs)

    monkeypatch.setattr(DagsterInstance, "handle_new_event", storing)
    overrides = instance_config(
        {"step_retries": {"enabled": step_retries}},
        SCRIPTED_LAUNCHER,
        pg_url() if storage == "postgres" else None,
        run_retries={"enabled": True, "max_retries": 2},
    )
    with instance_for_test(overrides=overrides) as instance:
        if storage == "postgres":
            instance.wipe()
        try:
            run = failed_ecs_run(instance, {"train": document("ecs_step_task_oom_killed")})
            # (the reason STEP_FAILURE and retry_on_asset_or_op_failure true: Dagster retries)
            expected = "false" if step_retries else "true"
            assert seen_when_stored == (["false"] if step_retries else [None])
            assert run.tags[WILL_RETRY_TAG] == expected
        finally:
            close_pools(instance)
