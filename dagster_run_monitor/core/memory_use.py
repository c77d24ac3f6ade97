"""Workers' memory as the monitor shows it: the warning before a worker reaches its limit, and
what a run carries when it ends (the tag ``run_monitor/peak_memory``, the per-worker JSON tag
``run_monitor/memory``, one event). Pure: the watchers read the figures (``worker``), the
daemon writes what this decides."""

import json
from collections.abc import Iterable, Mapping

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.alert_settings import WARNING
from dagster_run_monitor.core.heartbeats import RUN_WORKER, STEP_WORKER_PREFIX, Peak, Sight
from dagster_run_monitor.core.memory import MIB, mebibytes_up
from dagster_run_monitor.core.model import Alert, Notice, RunFacts

GIB = 2**30
WARN_LIMIT = "memory.warn_fraction"  # the warning's alert limit


def mebibytes(size: int) -> str:
    """A Kubernetes quantity in Mi, rounded up: ``312Mi``."""
    return f"{mebibytes_up(size) // MIB}Mi"


def quantity(size: int) -> str:
    """``180Mi`` below a GiB, else ``3.1Gi`` (tenths)."""
    return mebibytes(size) if size < GIB else f"{round(size / GIB, 1):g}Gi"


def spoken(size: int) -> str:
    """``512 MiB`` below a GiB, else ``1.84 GiB`` (three figures)."""
    return f"{size / MIB:.0f} MiB" if size < GIB else f"{size / GIB:.3g} GiB"


def worker_label(worker: str) -> str:
    """``run worker`` or ``step 'train'``."""
    if worker.startswith(STEP_WORKER_PREFIX):
        return f"step '{worker[len(STEP_WORKER_PREFIX) :]}'"
    return "run worker" if worker == RUN_WORKER else worker


def run_peaks(found: Iterable[Peak]) -> dict[str, Peak]:
    """Each worker's highest peak (a resumed or retried worker has several), with the limit it
    had then; an OOM kill seen on any of them."""
    peaks: dict[str, Peak] = {}
    for peak in found:
        old = peaks.get(peak.worker)
        if old is None or peak.peak > old.peak:
            oom = peak.oom or (old is not None and old.oom)
            peaks[peak.worker] = Peak(peak.worker, peak.peak, peak.limit, oom)
        elif peak.oom and not old.oom:
            peaks[peak.worker] = Peak(old.worker, old.peak, old.limit, True)
    return peaks


def _ordered(peaks: Mapping[str, Peak]) -> list[Peak]:
    return sorted(peaks.values(), key=lambda p: (p.worker != RUN_WORKER, p.worker))


def peak_tags(peaks: Mapping[str, Peak]) -> dict[str, str]:
    """``run_monitor/peak_memory`` (the highest, ``312Mi``) and ``run_monitor/memory``
    (``{"run": [peak, limit], "step:train": [...]}`` in bytes, what history reads; a third
    element ``true`` for a worker whose watcher saw its cgroup count an OOM kill as it ended)."""
    if not peaks:
        return {}
    workers = {p.worker: [p.peak, p.limit, *([True] if p.oom else [])] for p in _ordered(peaks)}
    return {
        c.PEAK_MEMORY_TAG: mebibytes(max(p.peak for p in peaks.values())),
        c.MEMORY_TAG: json.dumps(workers, separators=(",", ":")),
    }


def peak_message(peaks: Mapping[str, Peak]) -> str:
    """``Memory: run worker 180Mi; step 'train' 3.1Gi of 4Gi (78%); step 'load' 200Mi (no
    limit).``"""
    parts = []
    for peak in _ordered(peaks):
        if peak.limit:
            share = f" of {quantity(peak.limit)} ({peak.peak / peak.limit:.0%})"
        else:
            share = " (no limit)"
        parts.append(f"{worker_label(peak.worker)} {quantity(peak.peak)}{share}")
    return f"Memory: {'; '.join(parts)}."


def near_limit(sight: Sight, fraction: float) -> bool:
    """The worker uses at least ``fraction`` of its limit (never, with no limit or 0)."""
    memory = sight.beat.memory
    used = memory.fraction if memory is not None else None
    return bool(fraction) and used is not None and used >= fraction


def memory_warnings(run: RunFacts, fraction: float) -> list[Notice]:
    """One warning (and alert) per worker of the run that passed ``warn_fraction`` of its
    limit: ``Step 'train' is using 1.84 GiB of its 2 GiB memory limit (92%).``"""
    notices = []
    for sight in run.workers:
        memory, worker = sight.beat.memory, sight.beat.worker
        tag = f"{c.MEMORY_WARNED_TAG_PREFIX}{worker}"
        if memory is None or not memory.limit or not near_limit(sight, fraction) or tag in run.tags:
            continue
        who = "The run worker" if worker == RUN_WORKER else _capitalized(worker_label(worker))
        message = (
            f"{who} is using {spoken(memory.used)} of its {spoken(memory.limit)} memory limit"
            f" ({memory.used / memory.limit:.0%})."
        )
        alert = Alert(
            run.run_id,
            run.job_name,
            WARNING,
            message,
            WARN_LIMIT,
            fraction=memory.used / memory.limit,
        )
        notices.append(Notice(message, tag, f"{memory.used / memory.limit:.0%}", alert=alert))
    return notices


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def workers_near_limit(runs: Iterable[RunFacts], fraction: float) -> dict[str, int]:
    """How many run and step workers are past ``warn_fraction`` of their limit now."""
    counts = {"run": 0, "step": 0}
    for run in runs:
        for sight in run.workers:
            if near_limit(sight, fraction):
                counts["run" if sight.beat.worker == RUN_WORKER else "step"] += 1
    return counts


def live_memory(sights: Iterable[Sight]) -> list[str]:
    """For ``explain``: each worker's memory now, ``step 'train': 1.2Gi of 2Gi (60%), peak
    1.5Gi``."""
    lines = []
    for sight in sights:
        memory = sight.beat.memory
        if memory is None:
            continue
        limit = memory.limit
        share = f" of {quantity(limit)} ({memory.used / limit:.0%})" if limit else " (no limit)"
        lines.append(
            f"{worker_label(sight.beat.worker)}: {quantity(memory.used)}{share},"
            f" peak {quantity(memory.peak)}"
        )
    return lines
