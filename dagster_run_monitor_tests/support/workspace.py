"""Runs created the way the UI and the run queue create them: from a code location of a
workspace (so they have a remote origin, and the daemon can re-execute them); the daemon on
that workspace; the run groups their retries make."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterInstance
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus, RunsFilter

from dagster_run_monitor.core.constants import RETRY_NUMBER_TAG, ROOT_RUN_TAG, STEP_RETRY_TAG


def write_workspace(home: Path, jobs_file: str | Path, location: str) -> Path:
    """``home/workspace.yaml`` loading ``jobs_file``'s ``defs`` as code location ``location``."""
    source = {"python_file": {"relative_path": str(jobs_file), "location_name": location}}
    path = home / "workspace.yaml"
    path.write_text(yaml.safe_dump({"load_from": [source]}))
    return path


def create_run(
    instance: DagsterInstance,
    context: Any,
    location: str,
    jobs_file: str | Path,
    job_name: str,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> DagsterRun:
    """A NOT_STARTED run of ``job_name`` with its remote origin in ``location`` (``context``: a
    workspace process context that loads it); submit or launch it next."""
    workspace = context.create_request_context()
    remote_job = (
        workspace.get_code_location(location)
        .get_repository("__repository__")
        .get_full_job(job_name)
    )
    recon = ReconstructableRepository.for_file(str(jobs_file), "defs")
    return instance.create_run_for_job(
        job_def=recon.get_reconstructable_job(job_name).get_definition(),
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        run_config=dict(run_config or {}),
        tags=dict(tags or {}),
    )


@contextmanager
def workspace_daemon(home: Path, instance: DagsterInstance) -> Iterator[Any]:
    """A workspace process context on ``home/workspace.yaml`` (to create runs through) while
    the stock ``dagster-daemon run -w`` runs on the same workspace (it re-executes runs)."""
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    from dagster_run_monitor_tests.support.subprocesses import BIN, running

    workspace = str(home / "workspace.yaml")
    target = WorkspaceFileTarget(paths=[workspace])
    with create_test_daemon_workspace_context(target, instance) as context:
        with running([str(BIN / "dagster-daemon"), "run", "-w", workspace], home, "daemon.log"):
            yield context


def group(instance: DagsterInstance, root: DagsterRun) -> list[DagsterRun]:
    """The root run and every run created from it, by retry number."""
    found = instance.get_runs(RunsFilter(tags={ROOT_RUN_TAG: root.run_id}))
    return [
        instance.get_run_by_id(root.run_id),
        *sorted(found, key=lambda r: int(r.tags.get(RETRY_NUMBER_TAG, 0))),
    ]


def settled(instance: DagsterInstance, root: DagsterRun, runs: int) -> list[DagsterRun] | None:
    """The group once it has ``runs`` runs and the last one finished and, if it failed, was
    decided by the monitor's step retries (``run_monitor/step_retry``)."""
    found = group(instance, root)
    last = found[-1]
    if len(found) != runs or not last.is_finished:
        return None
    if last.status == DagsterRunStatus.FAILURE and STEP_RETRY_TAG not in last.tags:
        return None
    return found
