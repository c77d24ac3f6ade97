"""``dagster-run-monitor``: what the monitor sees and would do, from the same decision core."""

import datetime

import click
from dagster import DagsterInstance
from dagster._time import get_current_timestamp

from dagster_run_monitor.config.parse import read_settings
from dagster_run_monitor.core.crashes import counted_resumes, policy_entry
from dagster_run_monitor.core.limit_table import LIMITS, clock_start
from dagster_run_monitor.core.model import RunFacts
from dagster_run_monitor.core.policy import decide, limits_of
from dagster_run_monitor.core.settings import MonitorSettings
from dagster_run_monitor.daemon.heartbeats import where_workers_were
from dagster_run_monitor.daemon.observe import observe


@click.group()
def main() -> None:
    """Inspect the run monitor of the instance in $DAGSTER_HOME."""


@main.command()
def status() -> None:
    """In-progress runs, the limits that apply to each (and where from), and time left."""
    instance = DagsterInstance.get()
    settings = read_settings(instance)
    now = get_current_timestamp()
    facts = observe(instance, settings, now, {})
    if not facts:
        click.echo("No runs in progress.")
    for run in facts:
        click.echo(describe(run, settings, now))


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
        state = found.status.value if found else "not found"
        raise click.ClickException(f"Run {run_id} is not monitored ({state}).")
    click.echo(describe(run, settings, now))
    if run.workers:  # what its workers are doing now, from their last beats
        click.echo(where_workers_were(instance, {run_id: run.workers}, now).get(run_id, ""))
    actions = decide(run, settings, now)
    if settings.dry_run:
        click.echo("dry_run is on: the daemon logs these actions and changes nothing.")
    if not actions:
        click.echo("Next pass: nothing to do.")
    for action in actions:
        click.echo(f"Next pass: {type(action).__name__}: {getattr(action, 'message', '')}")


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
        lines.append(f"  {kind.key}: {limit.seconds:g}s from {limit.source}{left}")
    for bad in limits.bad_tags:
        lines.append(f"  ignored tag {bad.tag}={bad.value!r} (not a duration)")
    created = datetime.datetime.fromtimestamp(run.created_at, datetime.timezone.utc)
    lines.append(f"  created {created.isoformat(timespec='seconds')}")
    return "\n".join(lines)
