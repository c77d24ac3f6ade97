"""What a failure message says about the worker: the launcher's own debug info, or, for
launchers that give none (Dagster's DockerRunLauncher), the container's state and log tail."""

from dagster._core.launcher import RunLauncher
from dagster._core.storage.dagster_run import DagsterRun

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.integration.internals import docker_container


def worker_debug_info(launcher: RunLauncher, run: DagsterRun, container_logs: bool) -> str | None:
    if container_logs:
        info = launcher.get_run_worker_debug_info(run)
    else:
        info = launcher.get_run_worker_debug_info(run, include_container_logs=False)
    if info or not container_logs:
        return info
    if type(launcher).__module__.startswith("dagster_docker"):
        return _docker_container_info(launcher, run)
    return None


def _docker_container_info(launcher: RunLauncher, run: DagsterRun) -> str | None:
    container = docker_container(launcher, run)
    if container is None:
        return None
    state = container.attrs.get("State", {})
    logs = container.logs(tail=c.LOG_TAIL_LINES).decode(errors="replace").rstrip()
    return (
        f"Container {container.short_id}: status {container.status}, exit code"
        f" {state.get('ExitCode')}.\nLast lines of its output:\n{logs}"
    )
