"""Daemon passes, measured (time, statements, API calls, memory), and the checks of their
result."""

import contextlib
import cProfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dagster import DagsterInstance
from dagster._core.storage.dagster_run import RunsFilter
from dagster._utils.error import SerializableErrorInfo

from benchmarks.monitor_pass.measure import (
    MB,
    SqlCounter,
    cpu_seconds,
    peak_rss_bytes,
    release_memory,
    rss_bytes,
    say,
)
from benchmarks.step_retries.population import API_CALLS, current
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon


@dataclass
class Pass:
    label: str
    wall: float = 0.0
    sql: int = 0
    by_storage: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    api: dict[str, int] = field(default_factory=dict)
    rss_before: int = 0
    peak: int = 0
    cpu_own: float = 0.0
    cpu_pg: float | None = None
    errors: list[str] = field(default_factory=list)
    acted: int = 0
    statements: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        api = sum(self.api.values())
        pg = f"{self.cpu_pg:.1f}" if self.cpu_pg is not None else "-"
        first = f", first error: {self.errors[0][:160]!r}" if self.errors else ""
        return (
            f"{self.label}: {self.wall:.3f}s, SQL {self.sql} {dict(self.by_storage)},"
            f" {self.connections} new connections, API calls {api} {dict(self.api)},"
            f" runs acted on {self.acted}, CPU s daemon {self.cpu_own:.1f} / PostgreSQL {pg},"
            f" RSS {self.rss_before / MB:.0f} -> peak {self.peak / MB:.0f} MB,"
            f" errors {len(self.errors)}{first}"
        )


def reset_peak_rss() -> None:
    """VmHWM back to the current RSS (Linux: ``5`` into clear_refs), so the pass's peak is its
    own and not the set-up's."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def one_pass(
    label: str,
    daemon: RunMonitorDaemon,
    context: Any,
    counter: SqlCounter,
    profile: cProfile.Profile | None = None,
) -> Pass:
    release_memory()
    reset_peak_rss()
    result = Pass(label, rss_before=rss_bytes())
    api_before = Counter(API_CALLS)
    own, pg = cpu_seconds()
    began = time.perf_counter()
    with counter.counting():
        if profile is not None:
            profile.enable()
        try:
            for item in daemon.monitor_runs(context):
                if isinstance(item, SerializableErrorInfo):
                    result.errors.append(item.message.strip())
                else:
                    result.acted += 1
        finally:
            if profile is not None:
                profile.disable()
        result.wall = time.perf_counter() - began
        result.sql = counter.total
        result.by_storage = dict(counter.by_storage)
        result.connections = counter.connections
        result.statements = Counter(counter.statements)
    own_after, pg_after = cpu_seconds()
    result.cpu_own = own_after - own
    result.cpu_pg = pg_after - pg if pg is not None and pg_after is not None else None
    result.api = dict(Counter(API_CALLS) - api_before)
    result.peak = peak_rss_bytes()
    say(result.line())
    return result


def retried(instance: DagsterInstance, run_ids: list[str]) -> int:
    return sum(1 for r in current(instance, run_ids).values() if c.STEP_RETRY_TAG in r.tags)


def retry_passes(
    label: str,
    daemon: RunMonitorDaemon,
    context: Any,
    counter: SqlCounter,
    run_ids: list[str],
    profile: cProfile.Profile | None = None,
    most: int = 5,
) -> list[Pass]:
    """Full passes until every run in ``run_ids`` is decided (at most ``most``)."""
    passes = []
    for i in range(most):
        passes.append(one_pass(f"{label} pass {i + 1}", daemon, context, counter, profile))
        if retried(daemon_instance(context), run_ids) == len(run_ids):
            break
    return passes


def daemon_instance(context: Any) -> DagsterInstance:
    return context.instance


def verify(instance: DagsterInstance, run_ids: list[str]) -> list[str]:
    """One retry per failed run, tagged, with 3Gi for ``train``; the problems found."""
    problems: list[str] = []
    failed = current(instance, run_ids)
    tags = Counter(r.tags.get(c.STEP_RETRY_TAG) for r in failed.values())
    if tags != Counter({"retry 1": len(run_ids)}):
        problems.append(f"failed runs' {c.STEP_RETRY_TAG} tags: {dict(tags)}")
    retries = [
        r
        for r in instance.get_runs(RunsFilter(tags={c.REASON_TAG: c.REASON_STEP_CRASH}))
        if r.tags.get(c.PARENT_RUN_TAG) in failed
    ]
    parents = Counter(r.tags.get(c.PARENT_RUN_TAG) for r in retries)
    if len(parents) != len(run_ids) or any(n != 1 for n in parents.values()):
        doubled = sum(1 for n in parents.values() if n > 1)
        problems.append(f"{len(retries)} retries of {len(parents)} runs ({doubled} doubled)")
    named = {r.tags.get(c.AUTO_RETRY_RUN_ID_TAG) for r in failed.values()}
    if {r.run_id for r in retries} != named:
        problems.append("the failed runs' dagster/auto_retry_run_id tags miss their retries")
    memory: Counter[tuple[Any, Any]] = Counter()
    for r in retries:
        config = r.run_config.get("execution", {}).get("config", {})
        train = config.get("per_step_k8s_config", {}).get("train", {})
        resources = train.get("container_config", {}).get("resources", {})
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        memory[(limits.get("memory"), requests.get("memory"))] += 1
    if set(memory) != {("3Gi", "1536Mi")}:
        problems.append(f"retries' train memory (limits, requests): {dict(memory)}")
    statuses = Counter(r.status.value for r in retries)
    say(f"verified {len(run_ids)}: retries {dict(statuses)}, train memory {dict(memory)}")
    return problems
