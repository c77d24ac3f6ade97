"""The soak's report: runs, faults by kind, outcomes, time from fault to the monitor's first
action, the invariants' findings, the daemons' memory; markdown for benchmarks/RESULTS.md."""

from collections import Counter
from typing import Any

from benchmarks.soak.faults import IMMEDIATE
from benchmarks.soak.history import History, Run
from benchmarks.soak.invariants import CHECKS, TERMINAL, Finding, resumes

ACTIONS = ("Retrying from failure", "Resuming run", "Marking run", "Run hung", "Exceeded")


def first_action(history: History, run_ids: set[str], after: float) -> float | None:
    """When a daemon first acted on one of ``run_ids`` after ``after``."""
    times = [
        e.time
        for run_id in run_ids
        for e in history.runs[run_id].events
        if e.time >= after
        and e.pid is None  # the daemon's (a worker's events have its pid)
        and (e.type in TERMINAL or any(a in e.message for a in ACTIONS))
    ]
    return min(times) if times else None


def step_started(runs: list[Run], step: str | None) -> float | None:
    """When a planned fault took effect: its step's first start (an OOM kill or a hang)."""
    starts = [e.time for r in runs for e in r.events if e.type == "STEP_START" and e.step == step]
    return min(starts) if starts else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(history: History, findings: list[Finding], settings: dict[str, Any]) -> dict:
    faults = Counter(f.kind for f in history.faults)
    recovery: dict[str, list[float]] = {}
    outcomes: dict[str, Counter] = {}
    for fault in history.faults:
        if not fault.run_id or fault.run_id not in history.runs:
            continue
        run = history.runs[fault.run_id]
        group = history.groups[run.root]
        outcomes.setdefault(fault.kind, Counter())[group[-1].status] += 1
        struck = fault.time if fault.kind in IMMEDIATE else step_started(group, fault.step)
        acted = first_action(history, {r.run_id for r in group}, struck or fault.time)
        if acted is not None and struck is not None and fault.kind != "skew":
            recovery.setdefault(fault.kind, []).append(acted - struck)
    failed = [f for f in findings if not f.reported]
    rss: dict[str, list[int]] = {}
    for sample in history.memory:
        if sample["rss"]:
            rss.setdefault(f"{sample['daemon']} (pid {sample['pid']})", []).append(sample["rss"])
    return {
        "settings": settings,
        "minutes": round((history.ended - history.started) / 60, 1),
        "runs": len(history.runs),
        "groups": len(history.groups),
        "statuses": dict(Counter(r.status for r in history.runs.values())),
        "resumes": sum(len(resumes(r)) for r in history.runs.values()),
        "retries": sum(len(g) - 1 for g in history.groups.values()),
        "faults": dict(faults),
        "fault_kinds": len(faults),
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
        "recovery": {
            k: {"n": len(v), "p50": percentile(v, 0.5), "p95": percentile(v, 0.95)}
            for k, v in sorted(recovery.items())
        },
        "findings": {
            check.__name__: sum(f.invariant == _NAMES[check.__name__] for f in failed)
            for check in CHECKS
        },
        "reported": [f.__dict__ for f in findings if f.reported],
        "failed": [f.__dict__ for f in failed],
        "daemon_rss_mb": {k: [round(v[0] / 2**20), round(v[-1] / 2**20)] for k, v in rss.items()},
    }


_NAMES = {
    "every_run_ends": "ends",
    "no_false_verdict": "no false verdict",
    "exactly_once": "exactly once",
    "nothing_done_twice": "nothing done twice",
    "fencing": "fencing",
    "nothing_lost": "nothing lost",
    "daemons_healthy": "daemons",
}


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"### Soak: `--launcher {s['launcher']} --minutes {s['minutes']} --seed {s['seed']}`",
        "",
        f"- {result['minutes']} min in all (with the drain), {result['runs']} runs in "
        f"{result['groups']} run groups: "
        + ", ".join(f"{n} {k}" for k, n in sorted(result["statuses"].items()))
        + f"; {result['resumes']} resumes, {result['retries']} step retries.",
        f"- {sum(result['faults'].values())} faults of {result['fault_kinds']} kinds: "
        + ", ".join(f"{k} {n}" for k, n in sorted(result["faults"].items()))
        + ".",
    ]
    cpu = s.get("cpu")
    if cpu:
        share = 100 * cpu["busy"] / cpu["available"]
        lines.append(
            f"- The machine's CPU while runs were submitted: {cpu['busy']:.0f} of "
            f"{cpu['available']:.0f} core-seconds busy ({share:.0f}%); by kind of process"
            " (core-seconds, processes started): "
            + ", ".join(
                f"{kind} {v['core_seconds']:.0f} ({v['processes']})"
                for kind, v in cpu.get("by_kind", {}).items()
            )
            + "."
        )
    lines += [
        "",
        "| fault | runs it hit, by how their group ended | fault to the monitor's first action"
        " (n, p50, p95) |",
        "| --- | --- | --- |",
    ]
    for kind in sorted(result["faults"]):
        ends = result["outcomes"].get(kind, {})
        rec = result["recovery"].get(kind)
        lines.append(
            f"| {kind} | {', '.join(f'{n} {k}' for k, n in sorted(ends.items())) or '-'} | "
            + (f"{rec['n']}, {rec['p50']:.1f} s, {rec['p95']:.1f} s" if rec else "-")
            + " |"
        )
    lines += ["", "| invariant | broken |", "| --- | --- |"]
    lines += [f"| {_NAMES[k]} | {n} |" for k, n in result["findings"].items()]
    lines.append("")
    lines.append(
        f"- Reported (allowed): {len(result['reported'])} "
        + "; ".join(f"{f['run_id'][:8]} {f['detail']}" for f in result["reported"][:5])
    )
    lines.append(
        "- Daemons' RSS (MB, first and last sample): "
        + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in result["daemon_rss_mb"].items())
    )
    for finding in result["failed"][:30]:
        lines.append(f"- BROKEN {finding['invariant']}: {finding['run_id']} {finding['detail']}")
    return "\n".join(lines) + "\n"
