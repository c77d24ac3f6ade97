"""Dagster's ``K8sRunLauncher``, asked about thousands of runs a pass.

Each of its calls (a health check, and our pod list) rebuilds the run's container context:
merges and deep copies of the launcher's config and the run's, about 0.7 ms of CPU, which
threads cannot share (the GIL): 7 s a pass at 10,000 runs. The context depends only on the
launcher's config (fixed), the run's code origin (fixed for a run) and its tags, so the
daemon remembers it per run and tags.
"""

import threading
from collections.abc import Callable
from typing import Any

from dagster._core.launcher import RunLauncher
from dagster._core.storage.dagster_run import DagsterRun

REMEMBERED = 20_000  # runs whose context is kept (then all are forgotten, and rebuilt)
_MARK = "_run_monitor_remembers_contexts"


def remember_container_contexts(launcher: RunLauncher) -> None:
    """Make the launcher's ``get_container_context_for_run`` remember its answer for each run
    (one per run: its latest tags'), once."""
    if getattr(launcher, _MARK, False):
        return
    build: Callable[[DagsterRun], Any] = launcher.get_container_context_for_run  # type: ignore[attr-defined]
    contexts: dict[str, tuple[tuple, Any]] = {}  # run id -> (its tags, its context)
    lock = threading.Lock()

    def get_container_context_for_run(run: DagsterRun) -> Any:
        tags = tuple(sorted(run.tags.items()))
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

    launcher.get_container_context_for_run = get_container_context_for_run  # type: ignore[attr-defined]
    setattr(launcher, _MARK, True)
