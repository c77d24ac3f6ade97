"""Observe: read in-progress runs and what each policy needs to know about them."""

from collections.abc import Mapping, Sequence

from dagster import DagsterInstance
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from dagster_run_monitor.core.constants import MAX_STEP_RUNTIME_TAG
from dagster_run_monitor.core.crashes import unhealthy_clock, with_heartbeats
from dagster_run_monitor.core.heartbeats import RUN_WORKER, quiet_since, seen_until
from dagster_run_monitor.core.limit_table import HANG_TIMEOUT, STALL_TIMEOUT
from dagster_run_monitor.core.limits import location_of, run_limits, with_history
from dagster_run_monitor.core.model import (
    HEALTH_CHECKED,
    MONITORED_STATUSES,
    SUSPENDED,
    Health,
    RunFacts,
)
from dagster_run_monitor.core.settings import MonitorSettings
from dagster_run_monitor.daemon.health import HealthChecks
from dagster_run_monitor.daemon.heartbeats import HeartbeatSight
from dagster_run_monitor.daemon.history import JobHistories
from dagster_run_monitor.daemon.lost_steps import lost_step_workers, steps_gone
from dagster_run_monitor.launchers.ecs import launcher as ecs_launcher
from dagster_run_monitor.launchers.ecs.launcher import is_ecs_launcher
from dagster_run_monitor.launchers.kubernetes import launcher as k8s_launcher
from dagster_run_monitor.launchers.kubernetes.pods import is_k8s_launcher
from dagster_run_monitor.storage.answers import PassAnswers
from dagster_run_monitor.storage.eventlog import (
    count_resume_attempts,
    latest_event_times,
    resume_history,
    running_steps,
)
from dagster_run_monitor.storage.runs import RunReader, read_all


def observe(
    instance: DagsterInstance,
    settings: MonitorSettings,
    now: float,
    unhealthy_since: Mapping[str, float],
    statuses: Sequence[DagsterRunStatus] = MONITORED_STATUSES,
    crashes_only: bool = False,
    reader: RunReader | None = None,
    beats: HeartbeatSight | None = None,
    histories: JobHistories | None = None,
) -> list[RunFacts]:
    """Facts for each run in ``statuses`` (the actions act on the runs re-read under their
    claims). ``crashes_only`` leaves out what only the timeout policies need (stalls, steps); a
    daemon's ``reader`` re-reads only the runs that changed since its last pass, its ``beats``
    judge heartbeats by the daemon's clock across passes (without: this pass is the first), its
    ``histories`` keep jobs' histories between their refreshes (without: read now)."""
    records = reader.read(instance, statuses) if reader else read_all(instance, statuses)
    complete = set(statuses) >= set(MONITORED_STATUSES)
    entered = reader.entered_after(records, now, complete) if reader else {}
    storage = instance.event_log_storage
    # Beats before the launcher's checks: a launcher that sees a worker running is never
    # weighed against a later beat (a worker dying in between would read lost, not its cause).
    beats = beats or HeartbeatSight()
    workers = beats.read(instance, settings, now)
    checks = None
    if settings.can_check_health:  # the checks run while the event log is read
        checked = [r for r in records if r.dagster_run.status in HEALTH_CHECKED]
        launcher = instance.run_launcher
        answers = None
        if is_k8s_launcher(launcher):  # it counts resumes and reads a Job on every check
            ids = [r.dagster_run.run_id for r in checked]
            counts = (
                reader.resume_counts(storage, checked)
                if reader
                else count_resume_attempts(storage, ids)
            )
            jobs = k8s_launcher.job_statuses(launcher, [r.dagster_run for r in checked])
            answers = PassAnswers(counts, jobs)
        elif is_ecs_launcher(launcher):  # it reads the run and describes its one task
            runs_checked = [r.dagster_run for r in checked]
            tasks = ecs_launcher.task_documents(launcher, runs_checked)
            ecs_launcher.forget_contexts(launcher, [r.run_id for r in runs_checked])
            answers = PassAnswers(ecs_tasks=tasks, runs={r.run_id: r for r in runs_checked})
        checks = HealthChecks(
            launcher,
            settings.health_check_threads,
            settings.health_check_timeout_seconds,
            answers,
        )
        checks.submit([r.dagster_run for r in checked])
    runs = {r.dagster_run.run_id: r.dagster_run for r in records}
    if not crashes_only:  # runs that just failed keep their rows for their step crashes' stacks
        in_progress = set(runs) | (reader.failed_ids() if reader else set())
        timeout = settings.heartbeats.timeout_seconds
        beats.forget_ended(instance, in_progress, now, timeout, not settings.dry_run)
    ids_in = lambda *statuses: [i for i, run in runs.items() if run.status in statuses]  # noqa: E731
    launched = latest_event_times(
        storage, ids_in(DagsterRunStatus.STARTING), DagsterEventType.PIPELINE_STARTING
    )
    canceling = latest_event_times(
        storage, ids_in(DagsterRunStatus.CANCELING), DagsterEventType.PIPELINE_CANCELING
    )
    enqueued = latest_event_times(
        storage, ids_in(DagsterRunStatus.QUEUED), DagsterEventType.PIPELINE_ENQUEUED
    )
    started = [] if crashes_only else ids_in(DagsterRunStatus.STARTED)
    # Each run's limits, resolved once for the pass (the crash checks between full passes
    # leave them to decide, for the few runs they act on).
    if crashes_only:
        limits = {}
    elif reader:
        limits = reader.limits(runs, settings)
    else:
        limits = {i: run_limits(run, settings) for i, run in runs.items()}
    learned = {}
    if not crashes_only:
        histories = histories or JobHistories()
        learning = {i: limits[i] for i in ids_in(DagsterRunStatus.STARTED, SUSPENDED)}
        every = settings.oom_memory is not None  # an OOM-killed worker's size from its peaks
        learned = histories.read(instance, settings.learned, runs, learning, now, every)
        for i, found in learned.items():
            limits[i] = with_history(limits[i], found, settings.learned)
    stall_watched = [i for i in started if limits[i][STALL_TIMEOUT.key].seconds]
    hang_watched = [i for i in started if limits[i][HANG_TIMEOUT.key].seconds and i in workers]
    last_event = latest_event_times(storage, sorted({*stall_watched, *hang_watched}), None)
    step_limits = {i: _step_limits(instance, runs[i]) for i in started}
    timeout = settings.heartbeats.timeout_seconds
    lost_steps = {i for i in started if lost_step_workers(workers.get(i, ()), now, timeout)}
    lost_steps |= {
        i
        for i in started
        for s in workers.get(i, ())
        if s.beat.ended and s.beat.worker != RUN_WORKER
    }
    steps = running_steps(
        storage,
        [i for i in started if step_limits[i] or limits[i].watches_steps or i in lost_steps],
    )
    gone = steps_gone(
        instance, runs, {i: workers[i] for i in lost_steps if i in workers}, now, timeout
    )
    health: dict[str, Health] = checks.results() if checks is not None else {}
    for run_id in ids_in(DagsterRunStatus.STARTED):
        if run_id in workers:
            merged = with_heartbeats(health.get(run_id), workers[run_id], now, timeout)
            if merged is not None:
                health[run_id] = merged
    unhealthy = {i for i, h in health.items() if h.answered and not h.healthy}
    resumes = resume_history(storage, sorted({*unhealthy, *stall_watched, *hang_watched}))
    facts = []
    for record in records:
        run_id = record.dagster_run.run_id
        resume_count, last_resume_at = resumes.get(run_id, (0, None))
        quiet = quiet_since(workers.get(run_id, ()))
        if quiet is not None and run_id in last_event:
            quiet = max(quiet, last_event[run_id])
        created = record.create_timestamp.timestamp()  # by the database, not another host
        at_least = _not_before(max(entered.get(run_id) or created, created))
        facts.append(
            RunFacts(
                run_id=run_id,
                job_name=record.dagster_run.job_name,
                status=record.dagster_run.status,
                created_at=created,
                updated_at=at_least(record.update_timestamp.timestamp()),
                tags=record.dagster_run.tags,
                started_at=at_least(record.start_time),
                launched_at=at_least(launched.get(run_id)),
                canceling_at=at_least(canceling.get(run_id)),
                location=location_of(record.dagster_run),
                enqueued_at=at_least(enqueued.get(run_id)),
                last_event_at=at_least(last_event.get(run_id)),
                running_steps={k: at_least(t) for k, t in steps.get(run_id, {}).items()},
                step_limits=step_limits.get(run_id, {}),
                limits=limits.get(run_id),
                health=health.get(run_id),
                unhealthy_since=unhealthy_clock(
                    health.get(run_id),
                    unhealthy_since.get(run_id),
                    now,
                ),
                resume_attempts=resume_count,
                last_resume_at=last_resume_at,
                workers=workers.get(run_id, ()),
                quiet_since=quiet if run_id in hang_watched else None,
                quiet_seen_until=seen_until(workers.get(run_id, ())),
                history=learned.get(run_id),
                steps_gone=gone.get(run_id, frozenset()),
            )
        )
    return facts


def _not_before(bound: float | None):
    """``t`` no earlier than ``bound``: the run's creation (the database's clock), or later,
    when this daemon saw the run's status begin at the earliest (``RunReader.entered_after``),
    as times written by other hosts may be behind."""

    def at_least(t):
        return t if t is None or bound is None else max(t, bound)

    return at_least


_STEP_TAGS_CACHE: dict[str, dict[str, str]] = {}  # execution plan snapshots never change


def _step_limits(instance: DagsterInstance, run: DagsterRun) -> dict[str, str]:
    """The ``run_monitor/max_step_runtime`` op tags of the run's steps (cached per plan)."""
    snapshot_id = run.execution_plan_snapshot_id
    if not snapshot_id:
        return {}
    if snapshot_id not in _STEP_TAGS_CACHE:
        if len(_STEP_TAGS_CACHE) > 10_000:
            _STEP_TAGS_CACHE.clear()
        try:
            plan = instance.get_execution_plan_snapshot(snapshot_id)
        except Exception:
            return {}
        _STEP_TAGS_CACHE[snapshot_id] = {
            step.key: step.tags[MAX_STEP_RUNTIME_TAG]
            for step in plan.steps
            if step.tags and MAX_STEP_RUNTIME_TAG in step.tags
        }
    return _STEP_TAGS_CACHE[snapshot_id]
