"""Why a worker died, from recorded API objects: pods of the one-node cluster and Docker
``State`` documents (``recorded/``, captured from scripts/k8s-cluster and scripts/docker-engine),
pods written after Kubernetes' documentation for what one node cannot produce (preemption,
eviction, a lost node), and process exit data. Then ``crash_policy`` and ``oom_memory``."""

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from kubernetes import client as k8s

from dagster_run_monitor.config.parse import settings_from_config
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.crash_cause import (
    CrashCause,
    docker_cause,
    k8s_cause,
    process_cause,
)
from dagster_run_monitor.core.memory import format_memory, parse_memory
from dagster_run_monitor.core.model import FailRun, Health, ResumeRun, RunFacts, action_alert
from dagster_run_monitor.core.policy import decide

RECORDED = Path(__file__).with_name("recorded")
NOW = 1_800_000_000.0


class _Response:
    def __init__(self, data: Any) -> None:
        self.data = json.dumps(data)


def recorded_pod(name: str) -> k8s.V1Pod:
    """A pod as the kubernetes client returns it, from ``kubectl get pod -o json``."""
    data = json.loads((RECORDED / f"k8s_pod_{name}.json").read_text())
    return k8s.ApiClient().deserialize(_Response(data), "V1Pod")


def recorded_state(name: str) -> dict:
    return json.loads((RECORDED / f"docker_state_{name}.json").read_text())


def pod(
    phase: str = "Failed",
    reason: str | None = None,
    message: str | None = None,
    disruption: str | None = None,
    terminated: tuple[str, int] | None = None,
) -> k8s.V1Pod:
    """A run worker pod as Kubernetes' documentation describes it for ``phase``, ``reason``
    and a ``DisruptionTarget`` condition (1.26+)."""
    conditions = []
    if disruption:
        conditions.append(
            k8s.V1PodCondition(
                type="DisruptionTarget", status="True", reason=disruption, message=message
            )
        )
    statuses = []
    if terminated:
        ended = k8s.V1ContainerStateTerminated(reason=terminated[0], exit_code=terminated[1])
        statuses.append(
            k8s.V1ContainerStatus(
                name="dagster",
                image="etl:1",
                image_id="",
                ready=False,
                restart_count=0,
                state=k8s.V1ContainerState(terminated=ended),
            )
        )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="dagster-run-r1-abcde"),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="dagster", image="etl:1")]),
        status=k8s.V1PodStatus(
            phase=phase,
            reason=reason,
            message=message if not disruption else None,
            conditions=conditions,
            container_statuses=statuses,
        ),
    )


# --- Kubernetes --------------------------------------------------------------------------------


def test_recorded_pods_of_the_one_node_cluster():
    oom = k8s_cause([recorded_pod("oom_killed")])
    assert (oom.kind, oom.exit_code, oom.memory) == (
        "oom_killed",
        137,
        {"limits": "64Mi", "requests": "64Mi"},
    )
    assert "container 'dagster' terminated: OOMKilled, exit code 137" in oom.detail
    killed = k8s_cause([recorded_pod("sigkill")])
    assert (killed.kind, killed.exit_code) == ("signal", 137)
    assert killed.detail.startswith("SIGKILL, pod ")
    assert str(k8s_cause([recorded_pod("exit_code_3")])).startswith("cause: exit_code, pod ")
    assert k8s_cause([recorded_pod("exit_code_3")]).exit_code == 3
    never_pulled = k8s_cause([recorded_pod("image_never_pull")])
    assert never_pulled.kind == "image_pull" and "ErrImageNeverPull" in never_pulled.detail
    config = k8s_cause([recorded_pod("config_error")])
    assert config.kind == "config_error" and "no-such-config-map" in config.detail
    assert k8s_cause([recorded_pod("deleting")]).kind == "deleted"


def test_a_job_without_pods_was_deleted():
    assert k8s_cause([]) == CrashCause("deleted", "no pod of the run worker's Job is left")


@pytest.mark.parametrize(
    "the_pod, cause",
    [
        (pod(disruption="PreemptionByScheduler", terminated=("Error", 143)), "preempted"),
        (pod(disruption="PreemptionByKubeScheduler"), "preempted"),
        (
            pod(
                reason="Terminated",
                message="Pod was terminated in response to imminent node shutdown.",
                disruption="TerminationByKubelet",
            ),
            "preempted",
        ),
        (
            pod(reason="NodeShutdown", message="Pod was rejected as the node is shutting down."),
            "preempted",
        ),
        (pod(disruption="DeletionByTaintManager"), "node_lost"),
        (pod(disruption="DeletionByPodGC"), "node_lost"),
        (pod(phase="Unknown"), "node_lost"),
        (
            pod(reason="NodeLost", message="Node worker-3 which was running pod is unresponsive"),
            "node_lost",
        ),
        (pod(reason="Evicted", message="The node was low on resource: memory."), "evicted"),
        (pod(disruption="EvictionByEvictionAPI"), "evicted"),
        (
            pod(
                disruption="TerminationByKubelet", message="The node had condition: [DiskPressure]."
            ),
            "evicted",
        ),
        (pod(terminated=("OOMKilled", 137)), "oom_killed"),
        (pod(terminated=("Error", 1)), "exit_code"),
        (pod(terminated=("Error", 143)), "signal"),
        (pod(phase="Succeeded", terminated=("Completed", 0)), "unknown"),
    ],
)
def test_pod_reasons_and_conditions(the_pod, cause):
    assert k8s_cause([the_pod]).kind == cause


def test_a_preempted_pod_says_so_in_the_message():
    preempted = pod(
        disruption="PreemptionByScheduler", message="Preempted by a higher priority pod"
    )
    assert str(k8s_cause([preempted])) == (
        "cause: preempted, pod dagster-run-r1-abcde: DisruptionTarget PreemptionByScheduler:"
        " Preempted by a higher priority pod"
    )


def test_the_newest_pod_that_shows_a_cause_wins():
    assert (
        k8s_cause([pod(terminated=("OOMKilled", 137)), pod(phase="Running")]).kind == "oom_killed"
    )
    assert k8s_cause([pod(terminated=("OOMKilled", 137)), pod(phase="Unknown")]).kind == "node_lost"


# --- Docker ------------------------------------------------------------------------------------


def test_recorded_docker_states():
    oom = docker_cause(recorded_state("oom_killed"))
    assert (oom.kind, oom.exit_code) == ("oom_killed", 137)
    assert str(oom) == "cause: oom_killed, container exited, OOMKilled, exit code 137"
    killed = docker_cause(recorded_state("sigkill"))
    assert str(killed) == "cause: signal, SIGKILL, container exited, exit code 137"
    assert str(docker_cause(recorded_state("exit_code_3"))) == (
        "cause: exit_code, container exited, exit code 3"
    )
    assert docker_cause(None).kind == "deleted"


# --- a local process ---------------------------------------------------------------------------


def test_process_exit_data():
    assert str(process_cause(-signal.SIGKILL)) == "cause: signal, SIGKILL"
    assert str(process_cause(-signal.SIGTERM, (4, 4))) == "cause: signal, SIGTERM"
    assert str(process_cause(3)) == "cause: exit_code, exit code 3"
    oom = process_cause(-signal.SIGKILL, (4, 5))
    assert oom.kind == "oom_killed" and "1 kill(s) in /proc/vmstat oom_kill" in oom.detail
    assert process_cause(-signal.SIGKILL, (5, 5)).kind == "signal"  # the counter did not move
    assert process_cause(None).kind == "unknown"


# --- crash_policy ------------------------------------------------------------------------------

POLICY = [
    {"causes": ["image_pull", "config_error"], "action": "fail"},
    {"causes": ["preempted", "node_lost"], "action": "resume_uncounted"},
    {"causes": ["exit_code"], "exit_codes": [3, 4], "action": "fail"},
]


def settings(**config: Any):
    base = {"enabled": True, "max_resume_run_attempts": 2, "crash_policy": POLICY}
    return settings_from_config({**base, **config}, can_check_health=True, can_resume=True)


def crashed(cause: CrashCause | None, status: S = S.STARTED, **fields: Any) -> RunFacts:
    return RunFacts(
        run_id="r1",
        job_name="etl",
        status=status,
        created_at=NOW - 100,
        updated_at=NOW - 50,
        started_at=NOW - 50,
        launched_at=NOW - 60,
        health=Health("FAILED", "K8s job failed", cause=cause),
        unhealthy_since=NOW - 120,
        **fields,
    )


def test_first_matching_entry_wins_and_no_match_resumes():
    config = settings()
    assert config.crash_rule(CrashCause("image_pull")).index == 1
    assert config.crash_rule(CrashCause("node_lost")).action == "resume_uncounted"
    assert config.crash_rule(CrashCause("exit_code", exit_code=3)).index == 3
    assert config.crash_rule(CrashCause("exit_code", exit_code=1)) is None
    assert config.crash_rule(CrashCause("oom_killed", exit_code=137)) is None


def test_fail_entry_fails_at_once_naming_the_entry_and_cause():
    (action,) = decide(crashed(CrashCause("exit_code", "exit code 3", 3)), settings(), NOW)
    assert isinstance(action, FailRun) and action.cause == "exit_code"
    assert action.message == (
        "Detected run worker status FAILED: 'K8s job failed' (cause: exit_code, exit code 3)."
        " Marking run r1 as failed without resuming it, as crash_policy[3] (causes exit_code;"
        " exit codes 3, 4: fail) says."
    )
    alert = action_alert("r1", "etl", action)
    assert alert is not None and alert.event == "failed" and alert.cause == "exit_code"


def test_a_starting_run_whose_image_cannot_be_pulled_fails_even_with_resume_on_start_failure():
    run = crashed(CrashCause("image_pull", "ErrImageNeverPull"), S.STARTING)
    (action,) = decide(run, settings(resume_on_start_failure=True), NOW)
    assert isinstance(action, FailRun) and action.reason == c.REASON_START_FAILED
    assert action.message.endswith(
        "as failed, as crash_policy[1] (causes config_error, image_pull: fail) says."
    )
    unlisted = crashed(CrashCause("signal", "SIGKILL", -9), S.STARTING)
    (resume,) = decide(unlisted, settings(resume_on_start_failure=True), NOW)
    assert isinstance(resume, ResumeRun)


def test_uncounted_resumes_leave_the_attempts_and_stop_at_their_own_bound():
    preempted = CrashCause("preempted", "pod x: DisruptionTarget PreemptionByScheduler")
    (first,) = decide(crashed(preempted, resume_attempts=2), settings(), NOW)
    assert isinstance(first, ResumeRun) and first.attempt == 3  # Dagster's attempt number
    assert first.tags == {c.CRASH_CAUSE_TAG: "preempted", c.UNCOUNTED_RESUMES_TAG: "3"}
    assert first.message.endswith(", not counted against max_resume_run_attempts (preempted).")
    # two uncounted (2, 3) and one counted of three resumes: one counted attempt is left
    tags = {c.UNCOUNTED_RESUMES_TAG: "2,3"}
    exit_1 = CrashCause("exit_code", "exit code 1", 1)
    (counted,) = decide(crashed(exit_1, resume_attempts=3, tags=tags), settings(), NOW)
    assert isinstance(counted, ResumeRun) and counted.attempt == 4
    assert c.UNCOUNTED_RESUMES_TAG not in counted.tags
    # an attempt number written before a resume that never happened does not count
    stale = {c.UNCOUNTED_RESUMES_TAG: "2,3,4"}
    (again,) = decide(crashed(preempted, resume_attempts=3, tags=stale), settings(), NOW)
    assert again.tags[c.UNCOUNTED_RESUMES_TAG] == "2,3,4" and again.attempt == 4
    # the bound used up, preemptions count like any crash; then the run fails
    bounded = settings(max_uncounted_resumes=1)
    (next_one,) = decide(
        crashed(preempted, resume_attempts=1, tags={c.UNCOUNTED_RESUMES_TAG: "1"}), bounded, NOW
    )
    assert isinstance(next_one, ResumeRun) and c.UNCOUNTED_RESUMES_TAG not in next_one.tags
    used = {c.UNCOUNTED_RESUMES_TAG: "1"}
    (failed,) = decide(crashed(preempted, resume_attempts=3, tags=used), bounded, NOW)
    assert isinstance(failed, FailRun) and "maximum attempts to resume the run: 2" in failed.message


def test_invalid_entries_fail_naming_the_entry():
    cases = {
        "crash_policy[1].action": [{"causes": ["oom_killed"], "action": "retry"}],
        "crash_policy[2].causes": [
            {"causes": ["oom_killed"], "action": "fail"},
            {"causes": ["oom"], "action": "fail"},
        ],
        "crash_policy[1].exit_codes": [{"exit_codes": ["3"], "action": "fail"}],
        "crash_policy[1]": [{"cause": ["oom_killed"], "action": "fail"}],
        "crash_policy": 1,  # found by test_fuzz: a TypeError before
    }
    for key, policy in cases.items():
        with pytest.raises(DagsterInvalidConfigError, match=re.escape(f"run_monitoring.{key}")):
            settings(crash_policy=policy)


# --- oom_memory --------------------------------------------------------------------------------


def test_memory_quantities():
    assert parse_memory("400Mi") == 400 * 2**20
    assert parse_memory("2Gi") == 2 * 2**30
    assert parse_memory("1.5G") == 1_500_000_000
    assert parse_memory("1e9") == 1_000_000_000
    assert format_memory(3 * 2**30) == "3Gi"
    assert format_memory(600 * 2**20) == "600Mi"
    assert format_memory(1_500_000_000) == "1431Mi"  # rounded up to whole Mi
    with pytest.raises(ValueError):
        parse_memory("lots")


def test_an_oom_killed_worker_is_resumed_with_more_memory_up_to_the_cap():
    config = settings(oom_memory={"multiplier": 1.5, "max": "4Gi"})
    oom = CrashCause("oom_killed", "OOMKilled", 137, {"limits": "2Gi", "requests": "1Gi"})
    user = {"dagster-k8s/config": json.dumps({"pod_spec_config": {"host_network": True}})}
    (resume,) = decide(crashed(oom, tags=user), config, NOW)
    assert resume.note == (
        "Resuming with memory limit 3Gi (was 2Gi) after the worker was OOMKilled: 1.5 x the"
        " killed limit."
    )
    assert json.loads(resume.tags["dagster-k8s/config"]) == {
        "pod_spec_config": {"host_network": True},
        "container_config": {
            "resources": {"limits": {"memory": "3Gi"}, "requests": {"memory": "1536Mi"}}
        },
    }
    near = CrashCause("oom_killed", "OOMKilled", 137, {"limits": "3Gi"})
    (capped,) = decide(crashed(near), config, NOW)
    assert json.loads(capped.tags["dagster-k8s/config"])["container_config"] == {
        "resources": {"limits": {"memory": "4Gi"}}
    }
    at_cap = CrashCause("oom_killed", "OOMKilled", 137, {"limits": "4Gi"})
    (unchanged,) = decide(crashed(at_cap), config, NOW)
    assert "dagster-k8s/config" not in unchanged.tags
    assert unchanged.note == (
        "The worker was OOMKilled with memory limit 4Gi, at the cap of oom_memory.max (4Gi):"
        " resuming with the same memory."
    )
    no_limit = CrashCause("oom_killed", "OOMKilled", 137)  # Docker, a process: nothing to raise
    (plain,) = decide(crashed(no_limit), config, NOW)
    assert plain.note is None and "dagster-k8s/config" not in plain.tags


def ecs_oom(memory: int, cpu: int, launch_type: str = "FARGATE") -> CrashCause:
    size = {"memory": str(memory), "cpu": str(cpu), "launch_type": launch_type}
    return CrashCause("oom_killed", "OutOfMemoryError", 137, size)


@pytest.mark.parametrize(
    "memory, cpu, multiplier, cap, tags",
    [
        # 2048 x 1.5 = 3072: 1024 units admit it
        (2048, 1024, 1.5, "16Gi", {"ecs/memory": "3072"}),
        # 2048 x 5 = 10240: past 1024 units' 8192, the smallest size is 2048 units
        (2048, 1024, 5, "16Gi", {"ecs/memory": "10240", "ecs/cpu": "2048"}),
        # 512 x 1.5 = 768: 256 units admit 1024 next
        (512, 256, 1.5, "16Gi", {"ecs/memory": "1024"}),
        # 30720 x 1.5 = 46080: 8192 units, in steps of 4096 MiB
        (30720, 4096, 1.5, "60Gi", {"ecs/memory": "49152", "ecs/cpu": "8192"}),
        # x 1.5 = 9216 is past the 9000 MiB cap: the most under it, 8192
        (6144, 1024, 1.5, "9000Mi", {"ecs/memory": "8192"}),
    ],
)
def test_an_oom_killed_fargate_task_gets_the_smallest_valid_size(
    memory, cpu, multiplier, cap, tags
):
    config = settings(oom_memory={"multiplier": multiplier, "max": cap})
    (resume,) = decide(crashed(ecs_oom(memory, cpu)), config, NOW)
    assert {k: v for k, v in resume.tags.items() if k.startswith("ecs/")} == tags


def test_an_oom_killed_ecs_task_on_ec2_and_at_the_cap():
    config = settings(oom_memory={"multiplier": 1.5, "max": "4Gi"})
    (ec2,) = decide(crashed(ecs_oom(1000, 512, "EC2")), config, NOW)
    assert ec2.tags["ecs/memory"] == "1500" and "ecs/cpu" not in ec2.tags  # EC2: any memory
    assert (
        ec2.note == "Resuming with memory 1500 MiB (was 1000 MiB) after the worker was OOM-killed:"
        " 1.5 x the killed limit."
    )
    (at_cap,) = decide(crashed(ecs_oom(4096, 2048)), config, NOW)
    assert "ecs/memory" not in at_cap.tags
    assert at_cap.note == (
        "The worker was OOM-killed with memory 4096 MiB, at the cap of oom_memory.max (4Gi) (no"
        " larger Fargate size within it): resuming with the same memory."
    )
    # 16384 units admit no less than 32768 MiB: nothing above 3072 fits a 4Gi cap from there
    (no_size,) = decide(crashed(ecs_oom(3072, 16384)), config, NOW)
    assert "ecs/memory" not in no_size.tags and "no larger Fargate size" in no_size.note


def test_at_the_cap_crash_policy_decides():
    config = settings(
        oom_memory={"max": "4Gi"}, crash_policy=[{"causes": ["oom_killed"], "action": "fail"}]
    )
    oom = CrashCause("oom_killed", "OOMKilled", 137, {"limits": "4Gi"})
    (action,) = decide(crashed(oom), config, NOW)
    assert isinstance(action, FailRun)


def test_invalid_oom_memory_fails_naming_the_key():
    with pytest.raises(DagsterInvalidConfigError, match=r"run_monitoring\.oom_memory\.max"):
        settings(oom_memory={"max": "lots"})
    with pytest.raises(DagsterInvalidConfigError, match=r"run_monitoring\.oom_memory\.multiplier"):
        settings(oom_memory={"multiplier": 1})
