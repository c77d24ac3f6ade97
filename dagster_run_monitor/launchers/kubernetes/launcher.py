"""Dagster's ``K8sRunLauncher``, asked about thousands of runs a pass.

- Each of its calls (a health check, and our pod list) rebuilds the run's container context:
  merges and deep copies of the launcher's config and the run's, about 0.7 ms of CPU, which
  threads cannot share (the GIL): 7 s a pass at 10,000 runs. The context depends only on the
  launcher's config (fixed), the run's code origin (fixed for a run) and its Kubernetes config
  tags, so the daemon remembers it per run and those tags (not others: a resume's cause tag
  would rebuild every resumed run's, 3 ms each).
- Each health check reads its Job (``read_namespaced_job_status``): a request, and the whole
  Job in the answer (7 KB of JSON for dagster-k8s's Job), about 2 ms of CPU in the client
  (measured on the test cluster). The pass lists the run worker Jobs of the runs' namespaces
  instead, in pages, and its health checks answer from that list (``answers``); a Job not in
  it (created since, or gone) is read as before.
"""

import functools
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from dagster._core.launcher import RunLauncher
from dagster._core.storage.dagster_run import DagsterRun

from dagster_run_monitor.integration.internals import (
    k8s_client,
    k8s_context_tags,
    k8s_worker_job_name,
)
from dagster_run_monitor.storage import answers

REMEMBERED = 20_000  # runs whose context is kept (then all are forgotten, and rebuilt)
RUN_WORKER_SELECTOR = "app.kubernetes.io/component=run_worker"  # on dagster-k8s's run Jobs
LIST_PAGE = 500  # Jobs per list request (about 3.5 MB of JSON)
_MARK = "_run_monitor_prepared"
LOGGER = logging.getLogger(__name__)


def prepare(launcher: RunLauncher) -> None:
    """Make the launcher remember each run's container context (one per run: its latest
    tags'), and answer Job statuses from the pass's list where it has one; once."""
    if getattr(launcher, _MARK, False):
        return
    build: Callable[[DagsterRun], Any] = launcher.get_container_context_for_run  # type: ignore[attr-defined]
    contexts: dict[str, tuple[tuple, Any]] = {}  # run id -> (its config tags, its context)
    lock = threading.Lock()
    config_tags = k8s_context_tags()

    def get_container_context_for_run(run: DagsterRun) -> Any:
        tags = tuple(run.tags.get(key) for key in config_tags)
        with lock:
            remembered = contexts.get(run.run_id)
        if remembered is not None and remembered[0] == tags:
            return remembered[1]
        context = build(run)
        with lock:
            if len(contexts) >= REMEMBERED:
                contexts.clear()
            contexts[run.run_id] = (tags, context)
        return context

    client = k8s_client(launcher)
    read_job_status = client.get_job_status

    def get_job_status(job_name: str, namespace: str, **kwargs: Any) -> Any:
        known, status = answers.job_status(namespace, job_name)
        return status if known else read_job_status(job_name, namespace, **kwargs)

    launcher.get_container_context_for_run = get_container_context_for_run  # type: ignore[attr-defined]
    client.get_job_status = get_job_status
    setattr(launcher, _MARK, True)


def stop_worker(launcher: RunLauncher, run: DagsterRun) -> None:
    """Delete the run's current run worker Job (its pods with it) without canceling the run,
    as ``terminate`` would: the fence before a lost worker's run is resumed."""
    namespace = launcher.get_container_context_for_run(run).namespace  # type: ignore[attr-defined]
    name = k8s_worker_job_name(launcher, run)
    k8s_client(launcher).delete_job(job_name=name, namespace=namespace)


def job_statuses(launcher: RunLauncher, runs: Iterable[DagsterRun]) -> dict[tuple[str, str], Any]:
    """The status of every run worker Job in the namespaces of ``runs``, by (namespace, Job
    name), from one paged list per namespace; empty if a list fails (each health check then
    reads its Job)."""
    namespaces = {launcher.get_container_context_for_run(run).namespace for run in runs}  # type: ignore[attr-defined]
    batch = k8s_client(launcher).batch_api
    statuses: dict[tuple[str, str], Any] = {}
    try:
        for namespace in sorted(n for n in namespaces if n):
            for item in _listed_jobs(batch, namespace):
                name = item["metadata"]["name"]
                statuses[(namespace, name)] = _status(item.get("status") or {})
    except Exception as error:
        LOGGER.warning("Listing run worker Jobs failed; each health check reads its Job: %s", error)
        return {}
    return statuses


def _listed_jobs(batch: Any, namespace: str) -> Iterable[dict]:
    """The run worker Jobs of ``namespace``, a page at a time, as JSON (the client's models
    for whole Jobs would cost what the reads cost)."""
    token = None
    while True:
        page = {"limit": LIST_PAGE, "_continue": token} if token else {"limit": LIST_PAGE}
        response = batch.list_namespaced_job(
            namespace, label_selector=RUN_WORKER_SELECTOR, _preload_content=False, **page
        )
        body = json.loads(response.data)
        yield from body.get("items") or []
        token = (body.get("metadata") or {}).get("continue")
        if not token:
            return


def _status(status: dict) -> Any:
    """The ``V1JobStatus`` the launcher's health check reads (its active, succeeded and
    failed counts), all sharing one configuration, as dagster-k8s's client builds its models."""
    from kubernetes.client import V1JobStatus

    return V1JobStatus(
        active=status.get("active"),
        succeeded=status.get("succeeded"),
        failed=status.get("failed"),
        local_vars_configuration=_configuration(),
    )


@functools.cache
def _configuration() -> Any:
    from kubernetes.client import Configuration

    return Configuration()
