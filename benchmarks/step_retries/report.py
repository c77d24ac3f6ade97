"""The markdown section the benchmark prints."""

import argparse
import cProfile
import pstats
import statistics
from collections import Counter
from pathlib import Path

from benchmarks.monitor_pass.measure import (
    MB,
)
from benchmarks.step_retries.passes import Pass
from benchmarks.step_retries.population import NAMED, SELECTORS
from dagster_run_monitor.daemon.step_retries import CLOCK_MARGIN_SECONDS


def top_entries(profile: cProfile.Profile, count: int) -> tuple[list[str], list[str]]:
    """The profile's top cumulative entries, and the named functions' cumulative times."""
    stats = pstats.Stats(profile)
    raw: dict = stats.stats  # type: ignore[attr-defined]
    rows = sorted(raw.items(), key=lambda item: item[1][3], reverse=True)
    rows = [row for row in rows if "/sqlalchemy/" not in row[0][0]]  # its execute chain
    top = []
    for (path, line, name), (_, calls, own, cumulative, _) in rows[:count]:
        where = "/".join(Path(path).parts[-2:]) if path != "~" else ""
        top.append(f"| {cumulative:.2f} | {own:.2f} | {calls} | `{where}:{line}({name})` |")
    named = []
    for part, function in NAMED:
        hits = [
            (calls, cumulative)
            for (path, _, name), (_, calls, _, cumulative, _) in raw.items()
            if name == function and part in path
        ]
        if hits:
            calls, cumulative = max(hits, key=lambda hit: hit[1])
            named.append(f"| `{function}` | {calls} | {cumulative:.2f} |")
    for (path, _, name), (_, _, _, _, callers) in raw.items():
        if name == "get_run_by_id" and path.endswith("instance/instance.py"):
            counts: Counter[str] = Counter()
            for where, (_, n, _, _) in callers.items():
                counts[where[2]] += n
            said = ", ".join(f"{caller} {n}" for caller, n in counts.most_common())
            named.append(f"| `get_run_by_id` callers: {said} | | |")
    return top, named


def mb(value: int) -> str:
    return f"{value / MB:.0f}"


def report(
    args: argparse.Namespace,
    setup_seconds: float,
    retry: list[Pass],
    after: Pass,
    steady_on: list[Pass],
    steady_off: list[Pass],
    profiled: list[Pass],
    profile: cProfile.Profile | None,
    problems: list[str],
    wall_minutes: float,
) -> str:
    n = args.runs
    total = sum(p.wall for p in retry)
    sql = sum(p.sql for p in retry)
    storages: Counter[str] = Counter()
    api: Counter[str] = Counter()
    for p in retry:
        storages.update(p.by_storage)
        api.update(p.api)
    peak = max(p.peak for p in retry)
    before = retry[0].rss_before
    storage_text = ", ".join(f"{k} {v}" for k, v in sorted(storages.items()))
    api_text = ", ".join(f"{k} {v}" for k, v in sorted(api.items())) or "none"
    selector = max(SELECTORS, default=(0, 0))
    lines = [
        "# Step retries: N runs whose step pod was OOM-killed, one daemon pass",
        "",
        f"Command: `.venv/bin/python -m benchmarks.step_retries --runs {n}"
        f" --storage {args.storage}` (wall time {wall_minutes:.1f} min)",
        "",
        "Launcher: Dagster's K8sRunLauncher, only its Kubernetes API objects faked"
        f" (API call latency {args.latency * 1000:.0f} ms); a code location loaded through a"
        " workspace (a gRPC code server, as under `dagster-daemon run -w`): `train_job`,"
        " `k8s_job_executor`, `extract -> train`; run coordinator: Dagster's default"
        " (QueuedRunCoordinator: a retry is submitted to the queue); step_retries"
        " {enabled: true, max_retries: 3}, oom_memory {multiplier: 1.5, max: 8Gi}.",
        "",
        "### The pass that creates the retries (all N failed since the last pass)",
        "",
        "| storage | N | passes | wall s | per retry ms | retries created | SQL statements"
        " | DB connections | K8s API calls | list_namespaced_pod | RSS before MB"
        " | peak RSS (VmHWM) MB | RSS growth MB | errors |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|",
        f"| {args.storage} | {n:,} | {len(retry)} | {total:.2f} | {total / n * 1000:.1f}"
        f" | {sum(p.acted for p in retry)} | {sql} ({storage_text})"
        f" | {sum(p.connections for p in retry)} | {api_text}"
        f" | {api.get('list_namespaced_pod', 0)} | {mb(before)} | {mb(peak)}"
        f" | {mb(peak - before)} | {sum(len(p.errors) for p in retry)} |",
        "",
        "### Steady passes (no new failures): with step retries vs without",
        "",
        "| daemon | passes | median s | SQL per pass | K8s API calls per pass | runs acted on |",
        "|---|---:|---:|---|---|---:|",
    ]
    for name, passes in (("step retries on", steady_on), ("step retries off", steady_off)):
        sqls = sorted({p.sql for p in passes})
        apis = sorted({sum(p.api.values()) for p in passes})
        lines.append(
            f"| {name} | {len(passes)} | {statistics.median(p.wall for p in passes):.3f}"
            f" | {'-'.join(map(str, sqls))} | {'-'.join(map(str, apis))}"
            f" | {sum(p.acted for p in passes)} |"
        )
    same = {p.sql for p in steady_on} == {p.sql for p in steady_off}
    lines += [
        "",
        f"Steady SQL equal with and without step retries: {'yes' if same else 'NO'}.",
        "",
    ]
    if profile is not None and profiled:
        k = args.profile_runs
        top, named = top_entries(profile, args.top)
        wall = sum(p.wall for p in profiled)
        lines += [
            f"### Where the time goes (cProfile over a pass retrying {k:,} more runs:"
            f" {wall:.2f} s under the profiler, {wall / k * 1000:.1f} ms per retry)",
            "",
            "| cumulative s | own s | calls | function |",
            "|---:|---:|---:|---|",
            *top,
            "",
            "| named | calls | cumulative s |",
            "|---|---:|---:|",
            *named,
            "",
        ]
    statements: Counter[str] = Counter()
    for p in retry:
        statements.update(p.statements)
    lines += [
        f"### The retry pass's most frequent statements (of {sql}; per retry = count / {n:,})",
        "",
        "| count | per retry | statement (first 100 characters) |",
        "|---:|---:|---|",
        *(
            f"| {count} | {count / n:.1f} | `{text}` |"
            for text, count in statements.most_common(args.top)
        ),
        "",
        "### Every pass",
        "",
    ]
    for p in [*retry, after, *steady_on, *steady_off, *profiled]:
        lines.append(f"- {args.storage} N={n:,} {p.line()}")
    lines.append(f"- {args.storage} N={n:,}: data set-up {setup_seconds:.0f}s")
    lines += [
        "",
        "### How to read this",
        "",
        "- Set-up (not timed in the pass): one pass of a fresh daemon first (it starts the"
        " step-retry clock), then N runs created through Dagster's API with their remote"
        " origin, each with the events of a run whose `train` step pod was OOM-killed"
        " (STEP_WORKER_STARTING with the step Job's name, STEP_START, STEP_FAILURE 'failed"
        " health check', RUN_FAILURE through report_dagster_event), and one pod per step Job"
        " in the fake (container `dagster` OOMKilled, exit 137, limits 2Gi, requests 1Gi).",
        "- The retry pass: `RunMonitorDaemon.monitor_runs` (a full pass), repeated until every"
        " failed run is tagged `run_monitor/step_retry`. Its SQL counts every statement of the"
        " pass (SqlCounter), including Dagster's inside create_reexecuted_run and submit_run.",
        f"- The step-cause read listed pods once per namespace with a set-based selector: its"
        f" largest was {selector[0]:,} run ids, {selector[1]:,} characters in the request's"
        " query string.",
        "- Peak RSS: VmHWM of the benchmark process (the daemon), reset to the current RSS"
        " before each pass (clear_refs); the code server's process is not counted.",
        "- Steady passes: after the retry pass and one pass that reads the new (QUEUED) retries,"
        f" a pause past the step-retry clock's margin ({CLOCK_MARGIN_SECONDS:.0f} s); then the"
        " same daemon, and a second daemon on the same database with step_retries off (warmed"
        " by one pass first).",
        "- Verified after: one retry per failed run (dagster/parent_run_id), each failed run"
        " tagged `retry 1` and naming its retry, each retry's `per_step_k8s_config.train`"
        " limits 3Gi, requests 1536Mi. "
        + ("All checks passed." if not problems else "PROBLEMS: " + "; ".join(problems)),
    ]
    return "\n".join(lines)
