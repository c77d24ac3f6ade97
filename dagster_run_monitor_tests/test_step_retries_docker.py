"""A step container killed by the kernel over its memory limit, end to end on the engine of
scripts/docker-engine: Dagster's ``DockerRunLauncher`` starts the run worker's container,
``docker_executor`` one container per step, the stock ``dagster-daemon run`` (with the job's
code location, to re-execute it) writes the cause and retries the run from failure with a
raised ``mem_limit``."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from docker.errors import NotFound

from dagster_run_monitor.core import constants as c
from dagster_run_monitor_tests import test_docker as docker_tests
from dagster_run_monitor_tests.support.home import (
    close_pools,
    load_instance,
    write_container_home,
)
from dagster_run_monitor_tests.support.runs import first_lines, messages
from dagster_run_monitor_tests.support.subprocesses import wait_until
from dagster_run_monitor_tests.support.workspace import (
    create_run,
    group,
    settled,
    workspace_daemon,
    write_workspace,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.postgres]

JOBS = Path(__file__).with_name("step_docker_jobs.py")
LOCATION = "docker_steps"
STEP = "outgrows_memory"
CONTAINER_ID = "Docker container id"  # docker_executor's STEP_WORKER_STARTING metadata
MIB = 2**20

docker_client = docker_tests.docker_client  # the engine, skipped (failed in CI) without it


def write_home(home: Path) -> Path:
    """DockerRunLauncher on the engine (its volumes, network and env reach the step containers
    through docker_executor), step retries on, OOM-killed steps retried with 4x the memory."""
    launcher = {
        "module": "dagster_docker",
        "class": "DockerRunLauncher",
        "config": {
            "image": docker_tests.IMAGE,
            "network": "host",  # never a bridge: no private-range addresses
            "env_vars": [
                f"DOCKER_HOST={os.environ['DOCKER_HOST']}",
                f"PATH={Path(sys.executable).parent}:/usr/bin:/bin",
                "HOME=/tmp",
            ],
            "container_kwargs": {"volumes": docker_tests.mounts(home)},
        },
    }
    settings = {
        "poll_interval_seconds": 1,
        "worker_unknown_grace_seconds": 3,
        "start_timeout_seconds": 120,
        "max_resume_run_attempts": 0,  # the run worker does not die: only a step's container
        "step_retries": {"enabled": True, "max_retries": 2},
        "oom_memory": {"multiplier": 4, "max": "2Gi"},
    }
    write_container_home(home, settings, launcher)
    write_workspace(home, JOBS, LOCATION)
    return home


@contextmanager
def docker_step_daemon(tmp_path: Path) -> Iterator[tuple[Path, DagsterInstance, object]]:
    """The home, its (wiped) instance, a workspace to create runs through, and the stock
    daemon running on the same workspace."""
    home = write_home(tmp_path / "home")
    instance = load_instance(home)
    instance.wipe()
    instance.wipe_daemon_heartbeats()
    try:
        with workspace_daemon(home, instance) as context:
            yield home, instance, context
    finally:
        close_pools(instance)
        instance.dispose()


def step_containers(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    """Step key -> the id of the container docker_executor started for it."""
    starting = instance.all_logs(run_id, of_type=DagsterEventType.STEP_WORKER_STARTING)
    return {
        e.step_key: str(e.dagster_event.event_specific_data.metadata[CONTAINER_ID].value)
        for e in starting
    }


def step_errors(instance: DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    """(step key, error message) of each STEP_FAILURE."""
    failures = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    return [(e.step_key, e.dagster_event.event_specific_data.error.message) for e in failures]


def started_steps(instance: DagsterInstance, run_id: str) -> list[str]:
    return [e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)]


def markers(home: Path, root: DagsterRun) -> list[str]:
    path = home / "markers" / root.run_id
    return path.read_text().splitlines() if path.exists() else []


def test_an_oom_killed_step_container_is_retried_with_a_raised_mem_limit_and_succeeds(
    tmp_path, docker_client, postgres_database
):
    run_config = {"execution": {"config": {"container_kwargs": {"mem_limit": "256m"}}}}
    containers: list[str] = []
    try:
        with docker_step_daemon(tmp_path) as (home, instance, context):
            root = create_run(
                instance, context, LOCATION, JOBS, "docker_outgrows_memory", run_config
            )
            instance.submit_run(root.run_id, context.create_request_context())
            failed, retry = wait_until(
                lambda: settled(instance, root, 2),
                timeout=300,
                what="the OOM-killed run's retry to end",
            )
            for run in (failed, retry):
                containers.extend(run_containers(docker_client, run.run_id))
                containers.extend(step_containers(instance, run.run_id).values())
            check_the_retry(home, instance, docker_client, root, failed, retry)
    finally:
        for container_id in containers:
            try:
                docker_client.containers.get(container_id).remove(force=True)
            except NotFound:
                pass


def check_the_retry(home, instance, client, root, failed, retry) -> None:
    """What a user checks: the failed run's events and tags, its one retry with more memory,
    and what the engine gave each step container."""
    failed_log, retry_log = messages(instance, failed.run_id), messages(instance, retry.run_id)
    assert failed.status == S.FAILURE, failed_log[-5:]
    assert retry.status == S.SUCCESS, retry_log[-5:]
    assert group(instance, root) == [failed, retry]  # exactly one retry

    # What docker_executor itself says of the dead step container (the STEP_FAILURE's error).
    assert step_errors(instance, failed.run_id) == [
        (STEP, f"Step {STEP} failed health check: Container status is exited. Return code is 137.")
    ], failed_log

    # The cause, from the engine's State of the step's container.
    died = first_lines([m for m in failed_log if "worker died" in m])  # (a stack may follow)
    assert died == [
        f"Step '{STEP}' worker died (cause: oom_killed, container exited, OOMKilled, exit"
        " code 137)."
    ], died
    retrying = [m for m in failed_log if m.startswith("Retrying from failure")]
    assert retrying == [
        "Retrying from failure with memory limit 1Gi for every step's container (was"
        f" 256Mi: 4 x the killed limit), as step '{STEP}' died (oom_killed)."
    ], retrying
    assert failed.tags[c.STEP_RETRY_TAG] == "retry 1"
    assert failed.tags[c.AUTO_RETRY_RUN_ID_TAG] == retry.run_id

    assert retry.tags[c.REASON_TAG] == c.REASON_STEP_CRASH
    assert retry.tags[c.CRASH_CAUSE_TAG] == "oom_killed"
    assert retry.tags[c.RETRY_NUMBER_TAG] == "1"
    assert retry.parent_run_id == failed.run_id
    assert retry.run_config["execution"]["config"]["container_kwargs"] == {"mem_limit": "1024m"}

    # The finished step did not run again; the retry's attempt allocated as much and fit.
    assert started_steps(instance, failed.run_id) == ["first", STEP]
    assert started_steps(instance, retry.run_id) == [STEP]
    assert markers(home, root) == ["first", f"{STEP} attempt 2"]

    # What the engine applied to the step containers.
    killed = client.containers.get(step_containers(instance, failed.run_id)[STEP]).attrs
    assert killed["State"]["OOMKilled"] is True
    assert killed["HostConfig"]["Memory"] == 256 * MIB
    fitted = client.containers.get(step_containers(instance, retry.run_id)[STEP]).attrs
    assert fitted["State"]["ExitCode"] == 0 and not fitted["State"]["OOMKilled"]
    assert fitted["HostConfig"]["Memory"] == 1024 * MIB


def run_containers(client, run_id: str) -> list[str]:
    """The run worker's containers (DockerRunLauncher labels them with the run)."""
    found = client.containers.list(all=True, filters={"label": f"dagster/run_id={run_id}"})
    return [container.id for container in found]
