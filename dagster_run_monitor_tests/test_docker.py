"""Docker for real: DockerRunLauncher and docker_executor on the engine of
scripts/docker-engine, Postgres storage, our daemon running as `dagster-daemon run`."""

import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.core import constants as c
from dagster_run_monitor_tests.support.home import load_instance, write_container_home
from dagster_run_monitor_tests.support.runs import first_lines
from dagster_run_monitor_tests.support.subprocesses import REPO_ROOT, daemon, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.postgres]

IMAGE = "dagster-run-monitor-worker:bookworm"
SOCKET = "/tmp/dagster-run-monitor-docker/docker.sock"
JOBS_FILE = str(Path(__file__).with_name("docker_jobs.py"))
# A registry on loopback that refuses connections: the pull fails at once, no traffic leaves.
MISSING_IMAGE = "127.0.0.1:9/dagster-run-monitor-missing:none"
CONTAINER_TAG = "docker/container_id"  # dagster_docker's DOCKER_CONTAINER_ID_TAG


@pytest.fixture(scope="module")
def docker_client():
    """The engine of scripts/docker-engine; the tests fail in CI and skip elsewhere without it."""
    os.environ.setdefault("DOCKER_HOST", f"unix://{SOCKET}")
    import docker

    try:
        client = docker.from_env()
        client.ping()
        client.images.get(IMAGE)
    except Exception as exc:
        reason = f"no Docker engine with image {IMAGE} ({exc}); run scripts/docker-engine start"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    yield client
    client.close()


def mounts(home: Path) -> dict:
    """Python, the virtualenv, the code and DAGSTER_HOME, at the same paths as on the host."""
    read_only = {str(REPO_ROOT), sys.base_prefix, sys.prefix}
    volumes = {path: {"bind": path, "mode": "ro"} for path in read_only}
    volumes[str(home)] = {"bind": str(home), "mode": "rw"}
    socket = os.environ["DOCKER_HOST"].removeprefix("unix://")
    volumes[socket] = {"bind": socket, "mode": "rw"}  # docker_executor starts step containers
    return volumes


@pytest.fixture
def docker_home(tmp_path, docker_client, postgres_database):
    def factory(container_kwargs=None, **run_monitoring):
        home = tmp_path / "home"
        launcher = {
            "module": "dagster_docker",
            "class": "DockerRunLauncher",
            "config": {
                "image": IMAGE,
                "network": "host",  # never a bridge: no private-range addresses
                "env_vars": [
                    f"DOCKER_HOST={os.environ['DOCKER_HOST']}",
                    f"PATH={Path(sys.executable).parent}:/usr/bin:/bin",
                    "HOME=/tmp",
                ],
                "container_kwargs": {"volumes": mounts(home), **(container_kwargs or {})},
            },
        }
        settings = {
            "poll_interval_seconds": 1,
            "worker_unknown_grace_seconds": 3,
            "start_timeout_seconds": 120,
            **run_monitoring,
        }
        home = write_container_home(home, settings, launcher)
        instance = load_instance(home)
        instance.wipe()
        return home, instance

    return factory


def launch(instance, job_name: str, entry_point=None, image=None, **kwargs) -> DagsterRun:
    recon = ReconstructableRepository.for_file(JOBS_FILE, "defs").get_reconstructable_job(job_name)
    origin = recon.get_python_origin()
    if entry_point or image:
        repository = origin.repository_origin._replace(
            entry_point=entry_point or origin.repository_origin.entry_point,
            container_image=image,
        )
        origin = origin._replace(repository_origin=repository)
    run = instance.create_run_for_job(
        job_def=recon.get_definition(), job_code_origin=origin, **kwargs
    )
    try:
        instance.launch_run(run.run_id, workspace=None)  # type: ignore[arg-type]
    except Exception:
        pass  # a launch that raises fails the run; the test checks what the user sees
    return instance.get_run_by_id(run.run_id)


def status(instance, run_id) -> S:
    return instance.get_run_by_id(run_id).status


def log(instance, run_id) -> list[str]:
    return [e.message for e in instance.all_logs(run_id)]


def run_containers(client, run_id, running_only=False):
    return client.containers.list(
        all=not running_only, filters={"label": f"dagster/run_id={run_id}"}
    )


def test_killed_run_worker_container_is_resumed_and_finished_steps_do_not_run_again(
    docker_home, docker_client
):
    home, instance = docker_home(max_resume_run_attempts=2)
    with daemon(home):
        run = launch(instance, "docker_steps")
        wait_until(
            lambda: any(
                e.step_key == "transform"
                for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_SUCCESS)
            ),
            180,
            "two steps to finish",
        )
        first = instance.get_run_by_id(run.run_id).tags[CONTAINER_TAG]
        docker_client.containers.get(first).kill()
        wait_until(lambda: instance.get_run_by_id(run.run_id).is_finished, 240, "the run to finish")
    assert status(instance, run.run_id) == S.SUCCESS
    starts = Counter(
        e.step_key for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START)
    )
    assert starts == {"extract": 1, "transform": 1, "load": 1, "report": 1}
    assert log(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1
    # The engine's verdict acted (the container's exit), once; the worker's heartbeats, from
    # inside the container, gave where it was and did not act a second time.
    detected = next(m for m in log(instance, run.run_id) if m.startswith("Detected"))
    assert "(cause: signal" in detected and "The run worker (host" in detected
    assert instance.get_run_by_id(run.run_id).tags[c.CRASH_CAUSE_TAG] == "signal"
    assert instance.get_run_by_id(run.run_id).tags[CONTAINER_TAG] != first
    wait_until(  # a worker's container exits a moment after its run ended (its heartbeat stops)
        lambda: run_containers(docker_client, run.run_id, running_only=True) == [],
        30,
        "the run's containers to exit",
    )


def test_a_container_that_keeps_dying_is_resumed_max_times_then_failed(docker_home):
    home, instance = docker_home(max_resume_run_attempts=2)
    with daemon(home):
        run = launch(instance, "docker_dies")
        wait_until(lambda: status(instance, run.run_id) == S.FAILURE, 240, "FAILURE")
    messages = log(instance, run.run_id)
    assert messages.count(c.RESUME_RUN_LOG_MESSAGE) == 2
    failure = messages[-1]
    assert "surpassed the configured maximum attempts to resume the run: 2" in failure
    assert '"ExitCode": 3' in failure and "exit code 3" in failure
    assert "(cause: exit_code, container exited, exit code 3)" in failure
    assert instance.get_run_by_id(run.run_id).tags[c.CRASH_CAUSE_TAG] == "exit_code"
    assert "run worker about to exit with code 3" in failure  # the container's log tail


def test_a_container_over_its_mem_limit_is_oom_killed_and_resumed(docker_home):
    """mem_limit in the launcher's container_kwargs: the kernel kills the worker at 400 MiB.
    Docker runs keep their memory on a resume (the container's settings come from the
    launcher and the code location, not from the run), so the step allocates only once."""
    limit = {"mem_limit": "400m", "memswap_limit": "400m"}
    home, instance = docker_home(container_kwargs=limit, max_resume_run_attempts=1)
    run_config = {"ops": {"allocate_once": {"config": {"marker": str(home / "allocated")}}}}
    with daemon(home):
        run = launch(instance, "docker_oom", run_config=run_config)
        wait_until(lambda: instance.get_run_by_id(run.run_id).is_finished, 240, "the run to end")
    messages = log(instance, run.run_id)
    assert status(instance, run.run_id) == S.SUCCESS, messages[-5:]
    assert messages.count(c.RESUME_RUN_LOG_MESSAGE) == 1
    resumed = next(m for m in messages if m.startswith("Detected run worker status"))
    assert "(cause: oom_killed, container exited, OOMKilled, exit code 137)" in resumed
    assert instance.get_run_by_id(run.run_id).tags[c.CRASH_CAUSE_TAG] == "oom_killed"


def test_a_missing_image_fails_the_run_and_leaves_no_container(docker_home, docker_client):
    home, instance = docker_home()
    with daemon(home):
        run = launch(instance, "docker_sleeps", image=MISSING_IMAGE)
        wait_until(lambda: status(instance, run.run_id) == S.FAILURE, 120, "FAILURE")
    assert run_containers(docker_client, run.run_id) == []


def test_a_container_that_never_starts_the_run_fails_before_the_start_timeout(
    docker_home, docker_client
):
    home, instance = docker_home()
    broken = ["python", "-c", "print('worker cannot start: broken image'); raise SystemExit(3)"]
    with daemon(home):
        run = launch(instance, "docker_sleeps", entry_point=broken)
        wait_until(lambda: status(instance, run.run_id) == S.FAILURE, 90, "FAILURE")
    tags = instance.get_run_by_id(run.run_id).tags
    assert tags[c.REASON_TAG] == c.REASON_START_FAILED
    failure = log(instance, run.run_id)[-1]
    assert "worker cannot start: broken image" in failure and "exit code 3" in failure
    assert run_containers(docker_client, run.run_id, running_only=True) == []


def test_max_runtime_stops_the_container(docker_home, docker_client):
    home, instance = docker_home()
    with daemon(home):
        run = launch(instance, "docker_sleeps", tags={c.MAX_RUNTIME_TAG: "5"})
        wait_until(lambda: status(instance, run.run_id) == S.FAILURE, 120, "FAILURE")
    assert "Exceeded maximum runtime of 5 seconds." in first_lines(log(instance, run.run_id))
    assert run_containers(docker_client, run.run_id, running_only=True) == []
    (container,) = run_containers(docker_client, run.run_id)
    assert container.status == "exited"


def test_the_daemon_asks_the_engine_its_version_once_not_per_health_check(
    docker_home, docker_client, workspace_context, monkeypatch
):
    """DockerRunLauncher builds a docker client (and docker-py asks the engine's API version,
    GET /version) for every health check; the daemon's launcher keeps one client. Three
    running workers, two passes: one version request, six container reads, nothing else."""
    from docker.api.client import APIClient

    from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
    from dagster_run_monitor_tests.support.runs import monitor_pass

    _, instance = docker_home()
    runs = [launch(instance, "docker_sleeps") for _ in range(3)]
    requests: list[str] = []
    send = APIClient.send

    def counted(self, request, **kwargs):
        requests.append(f"{request.method} {request.path_url.split('?')[0].rsplit('/', 1)[-1]}")
        return send(self, request, **kwargs)

    try:
        launcher = instance.run_launcher
        monkeypatch.setattr(APIClient, "send", counted)
        launcher.check_run_worker_health(instance.get_run_by_id(runs[0].run_id))
        assert requests == ["GET version", "GET json"]  # Dagster's launcher alone
        requests.clear()
        daemon = RunMonitorDaemon.from_instance(instance)
        with workspace_context(instance) as ctx:
            for _ in range(2):
                assert monitor_pass(instance, ctx, now=time.time(), daemon=daemon) == []
        assert Counter(requests) == {"GET version": 1, "GET json": 6}
        for run in runs:
            assert status(instance, run.run_id) in (S.STARTING, S.STARTED)
    finally:
        for run in runs:
            for container in run_containers(docker_client, run.run_id):
                container.remove(force=True)
