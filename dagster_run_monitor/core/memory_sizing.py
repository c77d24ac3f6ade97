"""Memory as a job really used it: the peaks its last successful runs carry
(``run_monitor/memory``), their p95 per worker (what sizes a worker's next attempt after an
OOM kill, ``core.memory``), and right-sizing advice per job and op. Pure."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dagster_run_monitor.core.heartbeats import RUN_WORKER, STEP_WORKER_PREFIX, Peak
from dagster_run_monitor.core.learned import Sample, percentile
from dagster_run_monitor.core.memory import HEADROOM, format_memory, mebibytes_up

SIZING_PERCENTILE = 95.0  # of the peaks, for the next attempt after an OOM kill
ADVICE_PERCENTILE = 90.0  # VPA's recommender: target = p90 of peaks + 15%, at least 250 MiB
ADVICE_FLOOR = 256 * 2**20


def tagged_peaks(value: str | None) -> dict[str, Peak]:
    """The peaks of a run's ``run_monitor/memory`` tag (none: absent or damaged)."""
    try:
        found = json.loads(value or "{}")
        return {
            worker: Peak(
                worker, int(seen[0]), int(seen[1]) if seen[1] else None, seen[2:] == [True]
            )
            for worker, seen in found.items()
        }
    except (ValueError, TypeError, AttributeError):
        return {}


def peaks_by_worker(memory_tags: Sequence[str | None]) -> dict[str, list[Peak]]:
    """Each worker's peaks over runs (their ``run_monitor/memory`` tags, newest first)."""
    found: dict[str, list[Peak]] = {}
    for value in memory_tags:
        for worker, peak in tagged_peaks(value).items():
            found.setdefault(worker, []).append(peak)
    return found


def usual_peaks(memory_tags: Sequence[str | None], min_runs: int) -> dict[str, Sample]:
    """Per worker (``run``, ``step:<key>``), the p95 of its peaks, where it has ``min_runs``."""
    return {
        worker: Sample(percentile([p.peak for p in peaks], SIZING_PERCENTILE), len(peaks))
        for worker, peaks in peaks_by_worker(memory_tags).items()
        if len(peaks) >= min_runs
    }


@dataclass(frozen=True)
class Advice:
    """What ``history`` recommends for one job's run worker or one op's step worker."""

    worker: str
    runs: int  # peaks counted
    p50: int
    p95: int
    limit: int | None  # the latest limit its workers had (None: none)
    recommended: int  # p90 + 15%, at least 256Mi
    at_risk: bool  # p95 above warn_fraction of the limit
    over_provisioned: bool  # the limit above twice the recommendation

    def as_dict(self) -> dict:
        return {
            "worker": self.worker,
            "runs": self.runs,
            "p50_peak": format_memory(mebibytes_up(self.p50)),
            "p95_peak": format_memory(mebibytes_up(self.p95)),
            "limit": format_memory(self.limit) if self.limit else None,
            "recommended": format_memory(self.recommended),
            "at_risk": self.at_risk,
            "over_provisioned": self.over_provisioned,
        }


def advice(memory_tags: Sequence[str | None], warn_fraction: float) -> list[Advice]:
    """Per worker of a job, over its counted runs (newest first): the p50 and p95 peaks, the
    latest limit, and the Vertical Pod Autoscaler's recommendation (p90 peak + 15%, at least
    256Mi), flagged ``at_risk`` and ``over_provisioned``."""
    found = []
    for worker, peaks in sorted(peaks_by_worker(memory_tags).items(), key=_run_first):
        sizes = [p.peak for p in peaks]
        p95 = percentile(sizes, 95.0)
        recommended = max(
            ADVICE_FLOOR, mebibytes_up(percentile(sizes, ADVICE_PERCENTILE) * HEADROOM)
        )
        limit = peaks[0].limit
        found.append(
            Advice(
                worker,
                len(sizes),
                percentile(sizes, 50.0),
                p95,
                limit,
                recommended,
                bool(limit and warn_fraction and p95 > warn_fraction * limit),
                bool(limit and limit > 2 * recommended),
            )
        )
    return found


def _run_first(item: tuple[str, list[Peak]]) -> tuple[bool, str]:
    return item[0] != RUN_WORKER, item[0]


def where_to_set(worker: str, tags: Mapping[str, str] | None = None) -> str:
    """Where a job's run worker's or an op's memory is set: the tag (or executor config) to
    change."""
    if worker == RUN_WORKER:
        return "the run's dagster-k8s/config tag (Kubernetes) or ecs/memory tag (ECS)"
    op = worker[len(STEP_WORKER_PREFIX) :].rsplit(".", 1)[-1].split("[", 1)[0]
    return (
        f"op '{op}': its dagster-k8s/config op tag or the executor's per_step_k8s_config"
        " (k8s_job_executor), its ecs/memory op tag (ecs_executor)"
    )
