"""Runs created the way the UI and the run queue create them: from a code location of a
workspace (so they have a remote origin, and the daemon can re-execute them)."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterInstance
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.storage.dagster_run import DagsterRun


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
