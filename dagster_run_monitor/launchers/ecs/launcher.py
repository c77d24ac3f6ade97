"""Dagster's ``EcsRunLauncher``, asked about thousands of runs a pass.

Each health check reads the run again (``_get_run_tags``: a query) and describes its one task
(``describe_tasks``: an API call, though the API takes 100 tasks a call), and builds the run's
container context (the code location's processed as config: about 0.35 ms). The pass describes
the tasks of all its runs, 100 a call per cluster, and its health checks answer from those
documents and from the runs it read (``answers``); a task not among them (launched since) is
described as before. Container contexts are remembered per run and tags while the run is in a
pass. The same document tells why a stopped task's worker died
(``core.crash_cause.ecs_cause``), with no call more.
"""

import logging
import sys
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from dagster._core.launcher import RunLauncher
from dagster._core.storage.dagster_run import DagsterRun

from dagster_run_monitor.core.crash_cause import CrashCause, ecs_cause
from dagster_run_monitor.storage import answers

TASK_ARN_TAG = "ecs/task_arn"  # written by EcsRunLauncher on every launch and resume
CLUSTER_TAG = "ecs/cluster"
CPU_TAG, MEMORY_TAG = "ecs/cpu", "ecs/memory"  # the task's size, where the run sets it
DESCRIBE_BATCH = 100  # tasks per describe_tasks call (the API's maximum)
_MARK = "_run_monitor_prepared"
_CONTEXTS = "_run_monitor_contexts"  # run id -> (its tags, its container context)
LOGGER = logging.getLogger(__name__)


def is_ecs_launcher(launcher: RunLauncher) -> bool:
    module = sys.modules.get("dagster_aws.ecs")  # never imported here: an optional extra
    return module is not None and isinstance(launcher, module.EcsRunLauncher)


def prepare(launcher: Any) -> None:
    """Make the launcher's task descriptions and run reads answer from the pass where it has
    them; once."""
    if getattr(launcher, _MARK, False):
        return
    client = launcher.ecs
    describe = client.describe_tasks
    read_run_tags = launcher._get_run_tags

    def describe_tasks(*, tasks: list[str], cluster: str | None = None, **kwargs: Any) -> Any:
        if len(tasks) == 1 and cluster and not kwargs:
            known, task = answers.ecs_task(cluster, tasks[0])
            if known:
                return {"tasks": [task] if task is not None else [], "failures": []}
        return describe(tasks=tasks, **({"cluster": cluster} if cluster else {}), **kwargs)

    def get_run_tags(run_id: str) -> Any:
        run = answers.run_of(run_id)
        if run is None:
            return read_run_tags(run_id)
        tags = run.tags
        fields = (TASK_ARN_TAG, CLUSTER_TAG, CPU_TAG, MEMORY_TAG)
        return _tags_type()(*(tags.get(key) for key in fields))

    client.describe_tasks = describe_tasks
    launcher._get_run_tags = get_run_tags
    _remember_container_contexts()
    setattr(launcher, _CONTEXTS, {})
    setattr(launcher, _MARK, True)


def _remember_container_contexts() -> None:
    """``EcsContainerContext.create_for_run`` answers a prepared launcher from its remembered
    contexts (the same run with the same tags); once per process."""
    from dagster_aws.ecs.container_context import EcsContainerContext

    create = EcsContainerContext.create_for_run
    if getattr(create, _MARK, False):
        return

    def create_for_run(dagster_run: DagsterRun, run_launcher: Any) -> Any:
        contexts = getattr(run_launcher, _CONTEXTS, None)
        if contexts is None:
            return create(dagster_run, run_launcher)
        tags = tuple(sorted(dagster_run.tags.items()))
        known = contexts.get(dagster_run.run_id)
        if known is not None and known[0] == tags:
            return known[1]
        context = create(dagster_run, run_launcher)
        contexts[dagster_run.run_id] = (tags, context)
        return context

    setattr(create_for_run, _MARK, True)
    EcsContainerContext.create_for_run = staticmethod(create_for_run)  # type: ignore[method-assign]


def forget_contexts(launcher: Any, run_ids: Iterable[str]) -> None:
    """Keep the remembered container contexts of ``run_ids`` (the pass's runs) only."""
    contexts: dict[str, Any] = getattr(launcher, _CONTEXTS, {})
    for run_id in contexts.copy().keys() - set(run_ids):  # a late check may still add one
        contexts.pop(run_id, None)


def _tags_type() -> Any:
    from dagster_aws.ecs.launcher import Tags

    return Tags


def task_documents(launcher: Any, runs: Iterable[DagsterRun]) -> dict[tuple[str, str], Any]:
    """Every run's task document by (cluster, task ARN), 100 tasks a call per cluster (None:
    ECS does not know it); empty if a call fails (each health check then describes its task)."""
    by_cluster: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        arn, cluster = run.tags.get(TASK_ARN_TAG), run.tags.get(CLUSTER_TAG)
        if arn and cluster:
            by_cluster[cluster].add(arn)
    documents: dict[tuple[str, str], Any] = {}
    try:
        for cluster, arns in sorted(by_cluster.items()):
            ordered = sorted(arns)
            for start in range(0, len(ordered), DESCRIBE_BATCH):
                batch = ordered[start : start + DESCRIBE_BATCH]
                found = launcher.ecs.describe_tasks(tasks=batch, cluster=cluster)
                documents.update({(cluster, arn): None for arn in batch})
                for task in found.get("tasks") or []:
                    documents[(cluster, task["taskArn"])] = task
    except Exception as error:
        LOGGER.warning(
            "Describing ECS tasks failed; each health check describes its task: %s", error
        )
        return {}
    return documents


def crash_cause(launcher: Any, run: DagsterRun, transient: bool) -> CrashCause:
    """Why the run's task stopped, from its document (the pass's, or described now)."""
    arn, cluster = run.tags.get(TASK_ARN_TAG), run.tags.get(CLUSTER_TAG)
    if not (arn and cluster):
        return CrashCause("unknown", "the run has no ECS task")
    from dagster_aws.ecs.utils import is_transient_task_stopped_reason

    tasks = launcher.ecs.describe_tasks(tasks=[arn], cluster=cluster).get("tasks") or []
    task = tasks[0] if tasks else None
    if task is not None and is_transient_task_stopped_reason(task.get("stoppedReason") or ""):
        transient = True  # dagster-aws retries such a start; the cause is not the image's
    return ecs_cause(task, launcher.container_name, transient)
