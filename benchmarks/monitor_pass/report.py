"""The Markdown report."""

import argparse
import shlex
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence

import dagster

from benchmarks.monitor_pass.constants import REPO_ROOT
from benchmarks.monitor_pass.measure import MB
from benchmarks.monitor_pass.scenarios import Row, builtin_reps_for


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def span(values: Sequence[int]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def code_version() -> str:
    """The commit of this clone, and whether the monitor's code differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "dagster_run_monitor"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown commit"
    return f"commit {head or 'unknown'}" + (" + uncommitted changes" if dirty else "")


def docker_description(rows: list[Row], args: argparse.Namespace) -> str:
    def sizes(real: bool) -> str:
        found = sorted({r.n for r in rows if (r.n <= args.docker_real_max_n) == real})
        return ", ".join(f"{n:,}" for n in found)

    real, fake = sizes(True), sizes(False)
    parts = []
    if real:
        parts.append(
            f"at N = {real} on the local Docker engine: one real container per STARTED/STARTING"
            " run (sleep infinity, host network), and real containers for resumed runs (API"
            " calls take what the engine takes)"
        )
    if fake:
        parts.append(
            f"at N = {fake} (> --docker-real-max-n {args.docker_real_max_n:,}) only its docker"
            f" client objects faked, each API call {args.latency * 1000:g} ms"
        )
    return "Dagster's DockerRunLauncher, unchanged: " + "; ".join(parts)


def report(rows: list[Row], args: argparse.Namespace, wall: float, version: str) -> str:
    out = []
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    out.append("## Monitoring pass: dagster-run-monitor vs Dagster's built-in run monitoring")
    out.append("")
    out.append(f"Command: `{command}` (wall time {wall / 60:.1f} min)")
    out.append("")
    launcher = {
        "harness": "the test launcher (benchmarks/launcher.py; its health check is one 'API call'"
        " and issues no SQL)",
        "k8s": "Dagster's K8sRunLauncher, only its Kubernetes API objects faked",
        "ecs": "Dagster's EcsRunLauncher (dagster-aws), only its boto3 ECS and Logs clients faked",
        "docker": docker_description(rows, args),
    }[args.launcher]
    out.append(
        f"Launcher: {launcher}."
        + ("" if args.launcher == "docker" else f" API call latency {args.latency * 1000:g} ms;")
        + f" {args.events_per_run}"
        " events per STARTED/CANCELING run; mix 5% QUEUED, 10% STARTING, 80% STARTED,"
        " 5% CANCELING; our health_check_threads "
        + ", ".join(sorted({str(r.health_check_threads) for r in rows}))
        + (" (set by --health-check-threads)" if args.health_check_threads else " (default)")
        + f"; dagster {dagster.__version__}; dagster-run-monitor at {version} (at the start)."
        + (
            f" EXPERIMENT: both monitors' Postgres storages use a pool of {args.pool_size}"
            " connections (--pool-size)."
            if args.pool_size
            else " Postgres storages: the built-in monitor's as Dagster configures them for the"
            " daemon (a new connection per query, NullPool); ours pooled by our daemon"
            " (storage_pool_size, default 8)."
        )
    )
    out.append("")
    out.append("### Steady state (every worker healthy, nothing to do; repeatable, alternating)")
    out.append("")
    out.append(
        "| storage | N | ours median s | built-in median s | built-in / ours |"
        " SQL per pass ours / built-in | DB connections ours / built-in |"
        " health checks (API calls) ours / built-in | RSS growth in pass MB ours / built-in |"
        " reps ours / built-in |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ours = [p for p in row.steady if p.kind == "ours"]
        builtin = [p for p in row.steady if p.kind == "builtin"]
        o, b = median([p.seconds for p in ours]), median([p.seconds for p in builtin])
        ratio = f"{b / o:.1f}x" if builtin and ours else "-"
        b_text = f"{b:.2f}" if builtin else "-"
        out.append(
            f"| {row.storage} | {row.n:,} | {o:.2f} | {b_text} | {ratio} |"
            f" {span([p.sql for p in ours])} / {span([p.sql for p in builtin])} |"
            f" {span([p.connections for p in ours])} / {span([p.connections for p in builtin])} |"
            f" {span([p.health_checks for p in ours])} ({span([p.api_calls for p in ours])}) /"
            f" {span([p.health_checks for p in builtin])}"
            f" ({span([p.api_calls for p in builtin])}) |"
            f" {max(p.growth_mb for p in ours):.0f} / "
            + (f"{max(p.growth_mb for p in builtin):.0f}" if builtin else "-")
            + f" | {len(ours)} / {len(builtin)} |"
        )
    crash_rows = [r for r in rows if r.crash]
    if crash_rows:
        out.append("")
        out.append(
            "### Crash storm (K workers of STARTED runs crash at once; one pass; a fresh set of"
            " K runs marked crashed before each repetition)"
        )
        out.append("")
        out.append(
            "| storage | N | K crashed | ours median s | resumed by ours | SQL (connections) ours |"
            " built-in median s | resumed by built-in | SQL (connections) built-in |"
            " reps ours / built-in |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in crash_rows:
            ours = [p for p in row.crash if p.kind == "ours"]
            builtin = [p for p in row.crash if p.kind == "builtin"]
            out.append(
                f"| {row.storage} | {row.n:,} | {row.crashed:,} |"
                f" {median([p.seconds for p in ours]):.2f} |"
                f" {span([p.resumed for p in ours])} | {span([p.sql for p in ours])}"
                f" ({span([p.connections for p in ours])}) |"
                + (
                    f" {median([p.seconds for p in builtin]):.2f} |"
                    f" {span([p.resumed for p in builtin])} | {span([p.sql for p in builtin])}"
                    f" ({span([p.connections for p in builtin])}) |"
                    if builtin
                    else " - | - | - |"
                )
                + f" {len(ours)} / {len(builtin)} |"
            )
    child_rows = [r for r in rows if r.child]
    if child_rows:
        out.append("")
        out.append(
            "### A fresh daemon process: start-up + one (cold) steady pass;"
            " peak RSS = VmHWM of the process"
        )
        out.append("")
        out.append(
            "| storage | N | ours: RSS before pass MB | ours: peak RSS MB | ours: first pass s /"
            " SQL | built-in: RSS before pass MB | built-in: peak RSS MB | built-in: first pass"
            " s / SQL |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in child_rows:
            cells = []
            for kind in ("ours", "builtin"):
                c = row.child.get(kind)
                if not c:
                    cells += ["-", "-", "-"]
                elif "error" in c:
                    cells += ["error", str(c["error"]), "-"]
                else:
                    cells += [
                        f"{c['rss_ready_mb']:.0f}",
                        f"{c['peak_rss_mb']:.0f}",
                        f"{c['first_pass_s']:.2f} / {c['first_pass_sql']}",
                    ]
            out.append(f"| {row.storage} | {row.n:,} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("### Every pass")
    out.append("")
    for row in rows:
        for p in row.steady + row.crash:
            extra = f", resumed {p.resumed}" if p.resumed is not None else ""
            threads: Counter[str] = Counter()
            for name, count in p.sql_threads.items():
                if name != "MainThread":
                    threads[name.rstrip("0123456789").rstrip("_") + "_*"] += count
            threads = dict(threads)
            out.append(
                f"- {row.storage} N={row.n:,} {p.scenario} {p.kind}: {p.seconds:.3f}s,"
                f" SQL {p.sql} {p.sql_by_storage}, {p.connections} new connections"
                + (f" (from other threads: {threads})" if threads else "")
                + f", health checks {p.health_checks}, API calls {p.api_calls}"
                + (f" {p.api_by_call}" if p.api_by_call else "")
                + f", CPU s daemon {p.cpu:.1f}"
                + ("" if p.server_cpu is None else f" / PostgreSQL {p.server_cpu:.1f}")
                + f", RSS {p.rss_start / MB:.0f}"
                f" -> peak {p.rss_peak / MB:.0f} MB, errors {len(p.errors)}{extra}"
                + (f", SIDE EFFECTS {p.side_effects}" if p.side_effects else "")
            )
            for e in p.errors[:3]:
                out.append(f"    - error: {e[:300]}")
            if args.show_statements:
                for statement, count in sorted(p.statements.items(), key=lambda x: -x[1]):
                    out.append(f"    - {count} x `{statement}`")
        out.append(
            f"- {row.storage} N={row.n:,}: data set-up and verification {row.setup_seconds:.0f}s"
        )
    out.append("")
    out.append("### How to read this")
    out.append("")
    large = ", ".join(
        f"N={r.n:,}" for r in rows if builtin_reps_for(r.n, args) != args.builtin_reps
    )
    notes = [
        "Times are wall-clock seconds of one pass, medians over the repetitions; ours and the"
        " built-in alternate on the same data (the order flips every repetition).",
        f"The built-in pass runs {args.builtin_reps} time(s) per N"
        + (
            f", but only {args.builtin_reps_large} time(s) at {large} (N >= {args.large_n:,}):"
            " its health checks run one after another, so a pass takes about"
            " (STARTED runs) x latency by design"
            if large
            else ""
        )
        + ".",
        "Steady state is the recurring cost (one pass per poll_interval_seconds): no worker is"
        " unhealthy and no limit is reached, so neither monitor acts and the data stays the"
        " same for every repetition (checked: run statuses, update times and, on Postgres, the"
        " event log's size and last id are unchanged after each pass; a change is flagged as"
        " SIDE EFFECTS). The limits are start/cancel timeout 3600 s and max runtime 86400 s so"
        " that no run crosses one during the benchmark; what a check costs does not depend on"
        " the limit's value. Action cost is measured in the crash storm, for both monitors.",
        "Both monitors see the same runs but not the same set: ours also reads QUEUED runs and"
        " health-checks STARTING runs (the built-in does neither), see 'health checks'.",
        "SQL per pass: statements sent to the database during the pass (SQLAlchemy"
        " before_cursor_execute on every Engine), including Dagster's own schema reflection"
        " queries inside get_run_records. The harness's health check issues none;"
        " K8sRunLauncher's counts the run's resumes (to name its Job) on every call: one query"
        " per run in the built-in's pass, none in ours (answered from the pass's batched"
        " count). API calls: the launcher's remote calls (K8s: Job status reads, pod lists for"
        " STARTING and crashed runs, Job creation).",
        "RSS growth in pass: peak RSS of the benchmark process during the pass (sampled every"
        " 5 ms from /proc/self/statm) minus RSS at its start, after gc.collect() and"
        " malloc_trim(0); it is what the pass allocates beyond what earlier passes left in the"
        " heap, not the daemon's total. The daemon's total is the fresh-process table:"
        " the peak RSS (VmHWM) of a new Python process that loads the instance and runs one pass.",
        "Data: one run per job is made through Dagster's API (helpers.make_run: create_run_for_job,"
        " then report_dagster_event / report_run_canceling), the rest are copies of it written in"
        " bulk with Dagster's own row builders (run rows from _get_run_insertion_values with the"
        " final status and start_time; status events from _event_to_row) and the filler events"
        " (engine, step and user-log events) by COPY; the set-up checks statuses, start times,"
        " run stats and event counts against the API before any pass.",
    ]
    if args.launcher == "docker":
        notes.append(
            "Docker API calls: DockerRunLauncher builds a new docker client for every health"
            " check, terminate and resume (docker.client.from_env; docker-py's default"
            " version='auto' asks the engine GET /version), then GET /containers/{id}/json;"
            " a resume adds POST /containers/create, GET /containers/{id}/json (docker-py"
            " reads the new container back) and POST /containers/{id}/start. Per crashed run"
            " ours also checks the worker once more under its claim and reads the container"
            " for its cause: two more clients, four more calls than the built-in. Real engine:"
            " every HTTP request counted; faked: the same requests, each --latency."
        )
    if args.launcher == "ecs":
        notes.append(
            "ECS API calls: EcsRunLauncher's health check reads the run (_get_run_tags: a query)"
            " and describes its one task (describe_tasks); for a stopped task with a failed"
            " container it reads the task definition and, where it has a log configuration,"
            " the log (none here), describing the task once more. A resume: describe and"
            " register the task definition, run_task. Ours describes the pass's tasks 100 a"
            " call per cluster and answers the health checks' reads from those and from the"
            " runs it read; the re-check of a crashed run under its claim reads afresh."
        )
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"
