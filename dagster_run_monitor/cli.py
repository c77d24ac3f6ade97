"""``dagster-run-monitor``: what the monitor sees and would do, from the same decision core."""

import datetime
from collections import Counter

import click
from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._time import get_current_timestamp

from dagster_run_monitor.config.parse import read_settings
from dagster_run_monitor.core.constants import STEP_RETRY_TAG
from dagster_run_monitor.core.crashes import counted_resumes, policy_entry
from dagster_run_monitor.core.durations import parse_duration
from dagster_run_monitor.core.learned import history as learned_history
from dagster_run_monitor.core.learned import percentile
from dagster_run_monitor.core.limit_table import LIMITS, MAX_RUNTIME, clock_start
from dagster_run_monitor.core.limits import Limit, resolve_limits, with_history
from dagster_run_monitor.core.memory import memory_of
from dagster_run_monitor.core.memory_sizing import Advice, advice, where_to_set
from dagster_run_monitor.core.memory_use import live_memory, worker_label
from dagster_run_monitor.core.model import RunFacts
from dagster_run_monitor.core.policy import decide, limits_of
from dagster_run_monitor.core.report import render
from dagster_run_monitor.core.settings import MonitorSettings
from dagster_run_monitor.core.step_crashes import decide_failed_run, retry_wait_message
from dagster_run_monitor.daemon.failed_runs import failed_run_facts
from dagster_run_monitor.daemon.heartbeats import where_workers_were
from dagster_run_monitor.daemon.history import JobRecord, job_records
from dagster_run_monitor.daemon.observe import observe
from dagster_run_monitor.daemon.pause import current_pause, pause, unpause
from dagster_run_monitor.daemon.report import recovery_report


@click.group()
def main() -> None:
    """Inspect the run monitor of the instance in $DAGSTER_HOME."""


@main.command()
def status() -> None:
    """In-progress runs, the limits that apply to each (and where from), and time left."""
    instance = DagsterInstance.get()
    settings = read_settings(instance)
    now = get_current_timestamp()
    paused = current_pause(instance, now)
    if paused is not None:
        click.echo(f"The monitor is {paused.describe(now)}: it observes and acts on nothing.")
    facts = observe(instance, settings, now, {})
    if not facts:
        click.echo("No runs in progress.")
    for run in facts:
        click.echo(describe(run, settings, now))


@main.command("pause")
@click.option("--for", "duration", required=True, help="How long: 30m, 2h, 90s, PT1H.")
@click.option("--reason", default="", help="Why, for the others (shown by status).")
def pause_command(duration: str, reason: str) -> None:
    """Every daemon of the instance observes and acts on nothing for DURATION (it ends by
    itself; unpause ends it sooner)."""
    try:
        paused = pause(DagsterInstance.get(), duration, reason)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--for") from error
    click.echo(f"The monitor is {paused.describe(get_current_timestamp())}.")


@main.command("unpause")
def unpause_command() -> None:
    """End the pause now: the next pass judges every run afresh."""
    ended = unpause(DagsterInstance.get())
    click.echo("Pause ended." if ended is not None else "The monitor was not paused.")


@main.command()
@click.option("--since", "since", default="7d", show_default=True, help="How far back: 7d, 24h.")
@click.option("--format", "form", type=click.Choice(["text", "markdown", "json"]), default="text")
def report(since: str, form: str) -> None:
    """Did resuming help? Per reason and cause: runs acted on, the recovery rate, time from
    a crash to the new worker, how long ended runs were stuck, the jobs that crashed most."""
    try:
        seconds = parse_duration(since)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--since") from error
    click.echo(render(recovery_report(DagsterInstance.get(), seconds), form), nl=False)


@main.command()
@click.argument("run_id")
def explain(run_id: str) -> None:
    """The decision the next pass would take for RUN_ID, and why."""
    instance = DagsterInstance.get()
    settings = read_settings(instance)
    now = get_current_timestamp()
    facts = observe(instance, settings, now, {})
    run = next((f for f in facts if f.run_id == run_id), None)
    if run is None:
        found = instance.get_run_by_id(run_id)
        if found is not None and found.status == DagsterRunStatus.FAILURE:
            click.echo(explain_failed(instance, found, settings, now))
            return
        state = found.status.value if found else "not found"
        raise click.ClickException(f"Run {run_id} is not monitored ({state}).")
    click.echo(describe(run, settings, now))
    if run.workers:  # what its workers are doing now, from their last beats
        click.echo(where_workers_were(instance, {run_id: run.workers}, now).get(run_id, ""))
        for line in live_memory(run.workers):
            click.echo(f"Memory of the {line}")
    actions = decide(run, settings, now)
    if settings.dry_run:
        click.echo("dry_run is on: the daemon logs these actions and changes nothing.")
    if not actions:
        click.echo("Next pass: nothing to do.")
    for action in actions:
        click.echo(f"Next pass: {type(action).__name__}: {getattr(action, 'message', '')}")


def explain_failed(
    instance: DagsterInstance, run: DagsterRun, settings: MonitorSettings, now: float
) -> str:
    """A failed run: its step workers that died, their causes, and the step retry decided
    (or that the next pass would decide)."""
    lines = [f"{run.run_id}  {run.job_name}  FAILURE"]
    facts = failed_run_facts(instance, [run])
    if not facts:
        lines.append("  no step worker died: a failure of its code (step retries do not apply)")
        return "\n".join(lines)
    fact = facts[0]
    for crash in fact.crashes():
        lines.append(f"  step {crash.end.step_key}: worker died ({crash.cause})")
    budget = settings.step_retries.max_retries if settings.step_retries.enabled else 0
    lines.append(f"  step retries: {fact.retries} of {budget} used in its run group")
    decided = run.tags.get(STEP_RETRY_TAG)
    if decided:
        lines.append(f"  decided: {decided}")
        return "\n".join(lines)
    verdict = decide_failed_run(fact, settings, now)
    if verdict.retry is not None:
        lines.append(f"Next pass: {verdict.retry.message}")
    elif verdict.wait_until is not None:
        lines.append(f"Next pass: nothing yet, {retry_wait_message(verdict.wait_until, now)}")
    else:
        lines.append(f"Next pass: no retry. {verdict.note or ''}".rstrip())
    return "\n".join(lines)


def describe(run: RunFacts, settings: MonitorSettings, now: float) -> str:
    limits = limits_of(run, settings)
    lines = [f"{run.run_id}  {run.job_name}  {run.status.value}"]
    if run.health is not None:
        lines.append(f"  worker: {run.health}")
        if not run.health.healthy:
            lines.append(f"  crash policy: {policy_entry(run, settings)}")
            counted = counted_resumes(run)
            uncounted = run.resume_attempts - counted
            budget = f"  resumes: {counted} of {settings.resume_attempts} used"
            if settings.uncounted_resumes:
                budget += f", {uncounted} of {settings.uncounted_resumes} uncounted"
            lines.append(budget)
    for sight in run.workers:
        beat = sight.beat
        steps = f", in {', '.join(beat.steps)}" if beat.steps else ""
        lines.append(f"  {beat.name}: host {beat.host}, pid {beat.pid}, beat {beat.seq}{steps}")
    for kind in LIMITS:  # the limits a rule may set, and the one of the run's status
        limit = limits[kind.key]
        if not limit.seconds or not (kind.by_rule or kind.status == run.status):
            continue
        start = clock_start(kind, run)
        left = f", {limit.seconds - (now - start):.0f}s left" if start is not None else ""
        lines.append(f"  {kind.key}: {limit.seconds:g}s {origin(limit)}{left}")
    if limits.slower_than is not None:
        learned = limits.slower_than
        lines.append(f"  slower than usual after: {learned.seconds:.0f}s ({learned.short()})")
    for step in sorted(limits.steps):
        limit = limits.step(step, run.step_limits.get(step))
        lines.append(f"  step {step} max runtime: {limit.seconds:g}s {origin(limit)}")
    for bad in limits.bad_tags:
        lines.append(f"  ignored tag {bad.tag}={bad.value!r} (not a duration)")
    created = datetime.datetime.fromtimestamp(run.created_at, datetime.timezone.utc)
    lines.append(f"  created {created.isoformat(timespec='seconds')}")
    return "\n".join(lines)


def origin(limit: Limit) -> str:
    """Where a limit comes from, with the learned part: ``(learned: 3 x p95 of 30 runs of job
    etl = 600 s; configured 86400 s)``, or ``from rule 1 (learned 1800 s is larger)``."""
    learned = limit.learned
    if limit.configured is not None and learned is not None:
        configured = f"{limit.configured.seconds:g} s" if limit.configured.seconds else "none"
        return f"(learned: {learned.short()}; configured {configured})"
    if learned is not None:
        why = "the tag wins" if limit.from_tag else "is larger"
        return f"from {limit.source} (learned {learned.seconds:.0f} s: {learned.short()}; {why})"
    return f"from {limit.source}"


@main.command()
@click.argument("job", required=False)
def history(job: str | None) -> None:
    """Per job (or JOB only): its counted successful runs, the limits learned from them now,
    its workers' memory (peaks, limit, a recommendation), and the memory its OOM-killed runs
    later succeeded with."""
    instance = DagsterInstance.get()
    settings = read_settings(instance)
    config = settings.learned
    records = job_records(instance, config.runs, job)
    if not records:
        raise click.ClickException(f"No successful runs{f' of job {job}' if job else ''}.")
    for record in records:
        click.echo(job_history(record, settings))
        for found in advice(record.memory, settings.memory.warn_fraction):
            click.echo(memory_advice(found))
        memories = Counter(memory_of(tags) or ("", "") for tags in record.oom_recovered)
        for (memory, tag), count in sorted(memories.items()):
            click.echo(
                f"  OOM-killed, then succeeded with memory {memory} ({count} run(s)): set this"
                f" memory for good (the job's {tag} tag) rather than raise it after each kill"
                if tag
                else f"  OOM-killed, then succeeded ({count} run(s)); no memory set in its tags"
            )


def memory_advice(found: Advice) -> str:
    """``history``'s lines on one worker's memory: its peaks, limit, the recommendation."""
    shown = found.as_dict()
    limit = f"limit {shown['limit']}" if found.limit else "no limit"
    line = (
        f"  memory of the {worker_label(found.worker)}: p50 {shown['p50_peak']}, p95"
        f" {shown['p95_peak']} over {found.runs} run(s); {limit}; recommended"
        f" {shown['recommended']} (p90 peak + 15%, at least 256Mi)"
    )
    flags = [
        *(["at risk: p95 above memory.warn_fraction of the limit"] if found.at_risk else []),
        *(
            ["over-provisioned: limit above 2x the recommendation"]
            if found.over_provisioned
            else []
        ),
    ]
    if flags:
        line += f"; {'; '.join(flags)}: set it in {where_to_set(found.worker)}"
    return line


def job_history(record: JobRecord, settings: MonitorSettings) -> str:
    """One job's block of ``history``."""
    config, (job, label), steps = settings.learned, record.key, record.steps
    seconds = record.durations
    where = f" ({label})" if label else ""
    lines = [f"job {job}{where}: {len(seconds)} successful run(s) counted"]
    if seconds:
        lines[0] += (
            f", p50 {percentile(seconds, 50):.0f} s, p{config.percentile:g}"
            f" {percentile(seconds, config.percentile):.0f} s, max {max(seconds):.0f} s"
        )
    location = label.rpartition("@")[2] if label else None
    limits = resolve_limits(job, location, {}, settings)
    limits = with_history(limits, learned_history(job, seconds, steps, config), config)
    if len(seconds) < config.min_runs:
        lines.append(f"  nothing learned: fewer than min_runs ({config.min_runs}) runs")
    limit = limits[MAX_RUNTIME.key]
    if limit.learned is not None:
        lines.append(f"  max runtime: {limit.seconds:g} s {origin(limit)}")
    if limits.slower_than is not None:
        learned = limits.slower_than
        lines.append(f"  slower than usual after: {learned.seconds:.0f} s ({learned.short()})")
    for step, learned in sorted(limits.steps.items()):
        lines.append(f"  step {step} max runtime: {learned.seconds:.0f} s ({learned.short()})")
    if not limits.factors.runs and not limits.factors.max_step_runtime_factor:
        lines.append("  no learned limit is on for this job (learned_limits factors are 0)")
    return "\n".join(lines)
