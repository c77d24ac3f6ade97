"""Step workers that died, decided from plain facts: which failed steps crashed (the event
shapes are Dagster 1.13's, recorded from real runs of multiprocess and process_step_executor),
their causes, and whether the run is retried from failure, with what memory."""

import logging

import pytest
from dagster._core.errors import DagsterUserCodeUnreachableError

from dagster_run_monitor.config.parse import settings_from_config
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.crash_cause import CrashCause
from dagster_run_monitor.core.step_crashes import (
    CODE,
    CRASH,
    INTERRUPT,
    LOST_STEP,
    FailedRun,
    StepCrash,
    StepEnd,
    decide_failed_run,
    kind_of,
    message_cause,
    raised_step_config,
)
from dagster_run_monitor.daemon.step_retries import keep_trying

NOW = 1_800_000_000.0
# What Dagster writes (see test_step_retries_daemon for the real runs).
HEALTH = StepEnd(
    "train",
    False,
    "Step train failed health check: Step process 20778 for step train was killed by signal"
    " SIGKILL (cause: signal, SIGKILL).",
    worker={"pid": "20778", "start_ticks": "29459", "host": "vm"},
)
CHILD = StepEnd(
    "train",
    False,
    "dagster._core.executor.child_process_executor.ChildProcessCrashException",
    cls_name="ChildProcessCrashException",
    error_source="FRAMEWORK_ERROR",
    explanation="Multiprocess executor: child process for step train was terminated by signal 9"
    " (SIGKILL). This usually indicates that the process was killed by the operating system"
    " due to running out of memory.",
    worker={"pid": "19597"},
)
RAISED = StepEnd(
    "load",
    False,
    "dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while executing"
    ' op "load":',
    cls_name="DagsterExecutionStepExecutionError",
    error_source="USER_CODE_ERROR",
)
FAILURE = StepEnd(
    "load",
    False,
    "dagster._core.definitions.events.Failure: boom",
    cls_name="Failure",
    error_source="FRAMEWORK_ERROR",
    user_failure=True,
)
K8S_OOM = StepEnd(
    "train",
    False,
    "Step train failed health check: Discovered failed Kubernetes job dagster-step-3f2a for"
    " step train.",
    worker={"Kubernetes Job name": "dagster-step-3f2a"},
)
OOM = CrashCause(
    "oom_killed",
    "pod dagster-step-3f2a-x2v9q: container 'dagster' terminated: OOMKilled, exit code 137",
    137,
    {"limits": "2Gi", "requests": "1Gi"},
)


def settings(**block):
    return settings_from_config({"step_retries": {"enabled": True, "max_retries": 2}, **block})


def failed(*ends: StepEnd, causes=None, **fields) -> FailedRun:
    last = {}
    for end in ends:
        last[end.step_key] = not end.retried
    values = {
        "run_id": "r1",
        "job_name": "etl",
        "tags": {},
        "failed_at": NOW - 5,
        "failed_steps": tuple(k for k, f in last.items() if f),
        "ends": ends,
        "causes": causes or {},
        **fields,
    }
    return FailedRun(**values)


def test_crashes_are_told_from_code_failures_as_dagster_writes_them():
    assert kind_of(HEALTH) == kind_of(CHILD) == kind_of(K8S_OOM) == CRASH
    assert kind_of(RAISED) == kind_of(FAILURE) == CODE  # Failure is a FRAMEWORK_ERROR too
    interrupted = StepEnd(
        "a", False, "interrupted", "DagsterExecutionInterruptedError", "INTERRUPT"
    )
    assert kind_of(interrupted) == INTERRUPT


def test_causes_from_the_process_messages():
    assert message_cause(HEALTH) == CrashCause("signal", "SIGKILL", -9)
    assert message_cause(CHILD) == CrashCause("signal", "SIGKILL, process 19597", -9)
    exited = StepEnd(
        "a", False, "x", CHILD.cls_name, explanation="... unexpectedly exited with code 3."
    )
    assert message_cause(exited).kind == "exit_code" and message_cause(exited).exit_code == 3
    oom = StepEnd(
        "a",
        False,
        "Step a failed health check: Step process 9 for step a was killed by signal SIGKILL"
        " (cause: oom_killed, SIGKILL while the kernel's OOM killer acted (1 kill(s) in"
        " /proc/vmstat oom_kill)).",
    )
    assert message_cause(oom).kind == "oom_killed"
    assert message_cause(K8S_OOM) is None  # read from the pods
    lost = StepEnd("load", False, c.lost_step_end_message("load"), LOST_STEP)  # step_lost
    assert kind_of(lost) == CRASH and message_cause(lost).kind == "worker_lost"


def test_a_crashed_step_is_retried_from_failure_with_its_cause():
    verdict = decide_failed_run(failed(HEALTH, causes={0: message_cause(HEALTH)}), settings(), NOW)
    assert verdict.events == (("train", "Step 'train' worker died (cause: signal, SIGKILL)."),)
    retry = verdict.retry
    assert retry is not None and retry.run_config is None
    assert retry.tags == {
        c.RETRY_NUMBER_TAG: "1",
        c.REASON_TAG: c.REASON_STEP_CRASH,
        c.CRASH_CAUSE_TAG: "signal",
    }
    assert retry.message == "Retrying from failure, as step 'train' died (signal)."
    assert verdict.decision == "retry 1"


def test_without_step_retries_the_cause_is_still_written():
    verdict = decide_failed_run(failed(HEALTH), settings_from_config({}), NOW)
    assert verdict.retry is None and verdict.note is None
    assert verdict.events == (
        ("train", "Step 'train' worker died (cause: unknown, process 20778)."),
    )
    assert decide_failed_run(failed(RAISED), settings(), NOW).events == ()


def test_a_run_with_a_code_failure_too_is_not_retried():
    verdict = decide_failed_run(failed(HEALTH, RAISED), settings(), NOW)
    assert verdict.retry is None and verdict.level == logging.WARNING
    assert verdict.note == (
        "Not retrying for step crashes: step 'load' failed in its own code, and a retry would"
        " run it again."
    )
    assert decide_failed_run(failed(RAISED), settings(), NOW).retry is None


def test_a_crash_that_retried_within_the_run_and_then_failed_in_code_is_not_retried():
    retried = StepEnd(**{**HEALTH.__dict__, "retried": True})
    then = StepEnd(**{**RAISED.__dict__, "step_key": "train"})
    verdict = decide_failed_run(failed(retried, then), settings(), NOW)
    assert verdict.retry is None and verdict.note is None  # the code failed: not ours
    assert len(verdict.events) == 1  # the crash still gets its event


def test_crash_policy_fail_and_uncounted():
    rule_fail = {"crash_policy": [{"causes": ["signal"], "action": "fail"}]}
    verdict = decide_failed_run(
        failed(HEALTH, causes={0: message_cause(HEALTH)}), settings(**rule_fail), NOW
    )
    assert verdict.retry is None
    assert verdict.note == (
        "Not retrying: step 'train' died (signal) and crash_policy[1] (causes signal: fail)"
        " says fail."
    )
    uncounted = {"crash_policy": [{"causes": ["preempted"], "action": "resume_uncounted"}]}
    preempted = CrashCause("preempted", "pod x: DisruptionTarget PreemptionByScheduler")
    run = failed(K8S_OOM, causes={0: preempted}, retries=2, group_size=3)
    retry = decide_failed_run(run, settings(**uncounted), NOW).retry
    assert retry is not None and retry.uncounted
    assert (
        retry.tags[c.UNCOUNTED_STEP_RETRY_TAG] == "true" and retry.tags[c.RETRY_NUMBER_TAG] == "3"
    )
    assert "not counted against step_retries.max_retries" in retry.message


def test_the_budget_is_the_run_groups():
    verdict = decide_failed_run(failed(HEALTH, retries=2, group_size=3), settings(), NOW)
    assert verdict.retry is None
    assert verdict.note == (
        "Not retrying: a step died (unknown), but the run's group has used all 2 step retries"
        " (step_retries.max_retries)."
    )


def test_a_canceled_runs_interrupted_step_is_no_crash():
    interrupted = StepEnd(
        "a", False, "interrupted", "DagsterExecutionInterruptedError", "INTERRUPT"
    )
    stopped = StepEnd(**{**interrupted.__dict__, "canceling": True})
    assert decide_failed_run(failed(stopped), settings(), NOW).events == ()
    drained = decide_failed_run(failed(interrupted), settings(), NOW)  # a pod deleted: SIGTERM
    assert drained.retry is not None
    # A step Job that failed once its run was being canceled (max runtime): no crash either.
    ended = StepEnd(**{**HEALTH.__dict__, "canceling": True})
    assert decide_failed_run(failed(ended), settings(), NOW).events == ()


@pytest.mark.parametrize(
    "reason",
    [c.REASON_MAX_RUNTIME, c.REASON_HUNG, c.REASON_STALLED, c.REASON_STEP_TIMEOUT],
)
def test_a_run_the_monitor_failed_for_a_limit_is_never_retried(reason):
    """Found by the soak on the cluster: a run failed for its max runtime had a step worker
    killed just before (its resumed run worker's), and the step retry ran it all again: the
    limit undone by a retry. The cause is still written; the verdict stands."""
    run = failed(HEALTH, causes={0: message_cause(HEALTH)}, tags={c.REASON_TAG: reason})
    verdict = decide_failed_run(run, settings(), NOW)
    assert verdict.retry is None
    assert verdict.events == (("train", "Step 'train' worker died (cause: signal, SIGKILL)."),)
    assert verdict.note == c.step_retry_after_limit_message(reason)


def test_the_retry_waits_for_its_backoff():
    block = {"resume_backoff": {"initial_seconds": 60}}
    verdict = decide_failed_run(failed(HEALTH), settings(**block), NOW)
    assert verdict.retry is None and verdict.wait_until == NOW - 5 + 60
    assert decide_failed_run(failed(HEALTH), settings(**block), NOW + 60).retry is not None


@pytest.mark.parametrize(
    "run_config, expected",
    [
        (
            {},
            {
                "execution": {
                    "config": {
                        "per_step_k8s_config": {
                            "train": {
                                "container_config": {
                                    "resources": {
                                        "limits": {"memory": "3Gi"},
                                        "requests": {"memory": "1536Mi"},
                                    }
                                }
                            }
                        }
                    }
                }
            },
        ),
        (
            {
                "ops": {"train": {"config": {"n": 1}}},
                "execution": {"config": {"job_namespace": "x"}},
            },
            {
                "ops": {"train": {"config": {"n": 1}}},
                "execution": {
                    "config": {
                        "job_namespace": "x",
                        "per_step_k8s_config": {
                            "train": {
                                "container_config": {
                                    "resources": {
                                        "limits": {"memory": "3Gi"},
                                        "requests": {"memory": "1536Mi"},
                                    }
                                }
                            }
                        },
                    }
                },
            },
        ),
    ],
)
def test_an_oom_killed_k8s_step_gets_more_memory_for_itself_only(run_config, expected):
    block = {"oom_memory": {"multiplier": 1.5, "max": "8Gi"}}
    verdict = decide_failed_run(
        failed(K8S_OOM, causes={0: OOM}, run_config=run_config), settings(**block), NOW
    )
    assert verdict.retry is not None and verdict.retry.run_config == expected
    assert verdict.retry.message == (
        "Retrying from failure with memory limit 3Gi for step 'train' (was 2Gi: 1.5 x the killed"
        " limit), as step 'train'"
        " died (oom_killed)."
    )
    assert run_config.get("execution", {}).get("config", {}).get("per_step_k8s_config") is None


def test_other_executors_memory_and_the_cap():
    oom = settings(oom_memory={"multiplier": 2, "max": "3Gi"}).oom_memory
    docker = StepCrash(
        StepEnd("a", False, "", worker={"Docker container id": "abc"}),
        CrashCause("oom_killed", "", 137, {"limits": "1Gi"}),
    )
    config, said = raised_step_config({}, [docker], oom)
    assert config == {"execution": {"config": {"container_kwargs": {"mem_limit": "2048m"}}}}
    assert (
        said == " with memory limit 2Gi for every step's container (was 1Gi: 2 x the killed limit)"
    )
    swapping = {"execution": {"config": {"container_kwargs": {"memswap_limit": "1536m"}}}}
    config, _ = raised_step_config(swapping, [docker], oom)
    assert config["execution"]["config"]["container_kwargs"] == {
        "mem_limit": "2048m",
        "memswap_limit": "2560m",  # the 512m of swap kept: Docker refuses less than mem_limit
    }
    at_cap = StepCrash(docker.end, CrashCause("oom_killed", "", 137, {"limits": "3Gi"}))
    assert raised_step_config({}, [at_cap], oom) == (
        None,
        " with the same memory for step 'a' (3Gi is at oom_memory.max 3Gi)",
    )
    ecs = StepCrash(
        StepEnd("a", False, "", worker={"Task ARN": "arn:aws:ecs:r:1:task/c/t"}),
        CrashCause(
            "oom_killed", "", 137, {"memory": "1024", "cpu": "256", "launch_type": "FARGATE"}
        ),
    )
    config, said = raised_step_config({}, [ecs], oom)
    # (Fargate: the CPU is written too, for every step's task must be a valid size)
    assert config == {"execution": {"config": {"memory": 2048, "cpu": 256}}}
    process = StepCrash(StepEnd("a", False, "", worker={"pid": "1"}), CrashCause("oom_killed"))
    config, said = raised_step_config(
        {"execution": {"config": {"multiprocess": {}}}}, [process], oom
    )
    assert config == {"execution": {"config": {"multiprocess": {"max_concurrent": 1}}}}
    assert said == " with max_concurrent 1 (the executor sets no memory per step)"


def test_the_recovery_report_counts_step_retries_as_new_workers():
    from dagster_run_monitor.core.report import ActedRun, build_report

    runs = [
        ActedRun("a", "etl", "SUCCESS", c.REASON_STEP_CRASH, "oom_killed"),
        ActedRun("b", "etl", "FAILURE", c.REASON_STEP_CRASH, "oom_killed"),
        ActedRun("c", "ml", "RUNNING", c.REASON_STEP_CRASH, "preempted"),
        ActedRun("d", "ml", "FAILURE", c.REASON_STEP_LOST, "worker_lost"),
    ]
    report = build_report(runs, 0.0, 1.0, 1)
    crash = report.by_reason[c.REASON_STEP_CRASH]
    assert (crash["runs"], crash["resumed"], crash["recovered"]) == (3, 3, 1)
    assert crash["recovery_rate"] == 0.5  # of the two that finished
    assert crash["ended"] == 0  # a retry that failed was not ended by the monitor
    assert report.by_reason[c.REASON_STEP_LOST]["ended"] == 1
    assert dict(report.crashed_jobs) == {"etl": 2, "ml": 2}


@pytest.mark.parametrize(
    "block, named",
    [
        ({"enabled": "yes"}, "run_monitoring.step_retries.enabled: expected true or false"),
        ({"max_retries": -1}, "run_monitoring.step_retries.max_retries: expected a whole number"),
        ({"max_retries": 1.5}, "run_monitoring.step_retries.max_retries: expected a whole number"),
        ({"retries": 3}, "run_monitoring.step_retries: unknown key(s) retries"),
        ([1], "run_monitoring.step_retries: expected a mapping of enabled, max_retries"),
    ],
)
def test_bad_step_retries_values_are_named_at_start_up(block, named):
    from dagster._core.errors import DagsterInvalidConfigError

    with pytest.raises(DagsterInvalidConfigError) as raised:
        settings_from_config({"step_retries": block})
    assert named in str(raised.value.errors[0].message)


def test_while_no_run_fails_step_retries_cost_no_statement(
    make_instance, workspace_context, monkeypatch
):
    """A daemon's steady pass issues the same statements as one that does not look for failed
    runs at all: the statement that reads the runs in progress also finds the runs that failed
    since."""
    import sqlalchemy
    from dagster._core.storage.dagster_run import DagsterRunStatus as S
    from sqlalchemy.engine import Engine

    from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
    from dagster_run_monitor.daemon.step_retries import StepRetries
    from dagster_run_monitor_tests.support.runs import make_run, monitor_pass

    def steady_pass_statements() -> int:
        block = {"step_retries": {"enabled": True}, "poll_interval_seconds": 1}
        with make_instance(run_monitoring=block) as instance, workspace_context(instance) as ctx:
            for _ in range(3):
                make_run(instance, S.STARTED, created=NOW - 60)
            daemon = RunMonitorDaemon.from_instance(instance)
            assert monitor_pass(instance, ctx, NOW, daemon) == []  # the first pass reads bodies
            statements: list[str] = []
            sqlalchemy.event.listen(Engine, "before_cursor_execute", _recorder(statements))
            try:
                assert monitor_pass(instance, ctx, NOW + 120, daemon) == []
            finally:
                sqlalchemy.event.remove(Engine, "before_cursor_execute", _recorder(statements))
            return len(statements)

    looking = steady_pass_statements()
    monkeypatch.setattr(StepRetries, "since", lambda self, now: None)  # no failed runs read
    assert looking == steady_pass_statements()


_RECORDERS: dict[int, object] = {}


def _recorder(into: list[str]):
    """One listener per list (sqlalchemy removes a listener by identity)."""

    def record(conn, cursor, statement, *args):
        into.append(statement)

    return _RECORDERS.setdefault(id(into), record)


def _step_pod(name: str, created: float, phase: str, terminated: tuple[str, int] | None = None):
    import datetime

    from kubernetes import client as k8s

    statuses = []
    if terminated:
        ended = k8s.V1ContainerStateTerminated(reason=terminated[0], exit_code=terminated[1])
        state = k8s.V1ContainerState(terminated=ended)
        statuses.append(
            k8s.V1ContainerStatus(
                name="dagster",
                image="etl:1",
                image_id="",
                ready=False,
                restart_count=0,
                state=state,
            )
        )
    when = datetime.datetime.fromtimestamp(created, datetime.timezone.utc)
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, creation_timestamp=when),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="dagster", image="etl:1")]),
        status=k8s.V1PodStatus(phase=phase, container_statuses=statuses),
    )


def test_a_step_attempts_cause_is_read_from_its_own_pods_not_their_replacement():
    """Kubernetes 1.20's Job controller replaces a deleted pod (even with backoff_limit 0): the
    pod made after the attempt started is not the one that died."""
    from dagster_run_monitor.core.crash_cause import k8s_step_cause

    own = _step_pod("dagster-step-3f2a-x2v9q", NOW - 60, "Failed", ("OOMKilled", 137))
    replacement = _step_pod("dagster-step-3f2a-k8h2d", NOW - 5, "Running")
    assert k8s_step_cause([own, replacement], NOW - 50).kind == "oom_killed"
    assert k8s_step_cause([replacement], NOW - 50) == CrashCause(
        "deleted", "the step's pod is gone (replaced by pod dagster-step-3f2a-k8h2d)"
    )
    assert k8s_step_cause([], NOW - 50).kind == "deleted"
    still = _step_pod("dagster-step-3f2a-x2v9q", NOW - 60, "Running")
    assert k8s_step_cause([still], NOW - 50).kind == "running"
    # Deleted as the step started: its replacement was made in the same (whole) second.
    same_second = _step_pod("dagster-step-3f2a-k8h2d", NOW - 50, "Running")
    assert k8s_step_cause([same_second], NOW - 49.6).kind == "deleted"


def test_a_step_that_never_ended_is_retried_unless_its_worker_still_runs():
    """A step-delegating step that started and never ended in a failed run (a resumed run
    worker could not relaunch it, say): a crash with its platform's cause; while its worker
    still runs, a retry would run it twice: no retry, and a note."""
    from dagster_run_monitor.core.step_crashes import UNFINISHED

    job = {"Kubernetes Job name": "dagster-step-3f2a"}
    unfinished = StepEnd("train", False, c.unfinished_step_message("train"), UNFINISHED, worker=job)
    exited = CrashCause("exit_code", "pod p: container 'dagster' terminated: Error, exit code 3", 3)
    retry = decide_failed_run(failed(unfinished, causes={0: exited}), settings(), NOW).retry
    assert retry is not None and retry.cause == "exit_code"
    running = CrashCause("running", "pod dagster-step-3f2a-x2v9q")
    verdict = decide_failed_run(failed(unfinished, causes={0: running}), settings(), NOW)
    assert verdict.retry is None and verdict.events == ()
    assert verdict.note == (
        "Not retrying: step 'train' never ended and its worker still runs (pod"
        " dagster-step-3f2a-x2v9q); a retry would run it a second time."
    )


def test_step_retries_are_counted_in_the_actions_metric():
    from dagster_run_monitor.metrics import Metrics

    metrics = Metrics()
    metrics.retried({"oom_killed": 2, "preempted": 1})
    labels = {"action": "retry", "reason": c.REASON_STEP_CRASH}
    value = metrics.registry.get_sample_value
    assert value("dagster_run_monitor_actions_total", {**labels, "cause": "oom_killed"}) == 2
    assert value("dagster_run_monitor_actions_total", {**labels, "cause": "preempted"}) == 1


def test_a_retry_is_tried_again_while_its_code_location_cannot_be_reached():
    """A code server down (a lost host, a deploy: found by the soak) is waited for, every pass
    for ten minutes; any other error gives up after three passes."""
    down = DagsterUserCodeUnreachableError("Could not reach user code server")
    assert keep_trying(down, tries=50, first_failed_at=0.0, now=599.0)
    assert not keep_trying(down, tries=51, first_failed_at=0.0, now=600.0)
    bug = ValueError("a bad run config")
    assert keep_trying(bug, tries=2, first_failed_at=0.0, now=1.0)
    assert not keep_trying(bug, tries=3, first_failed_at=0.0, now=1.0)
