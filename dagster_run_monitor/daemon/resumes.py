"""Resuming crashed runs, many at a time.

``instance.resume_run`` reads the run again, writes the "Launching a new run worker to resume
run" event (which counts the attempt) and calls the launcher's ``resume_run``. The daemon has
just re-read the runs under their claim, so it writes what comes before their new workers in
a few statements for many runs (``bulk_writes``): the tags of a batch of runs (``tag``), then
a chunk at a time the "Detected ..." and resume events (``announce``), and ``launch`` calls
the launcher for each run of the chunk, as Dagster does. A chunk is as many runs as there are
action threads: a daemon killed after a chunk's events leaves at most that many runs with an
attempt counted and no new worker, as many as when each thread wrote its own run's event.
"""

import logging
import sys
from collections.abc import Mapping, Sequence

from dagster import DagsterInstance
from dagster._core.events import EngineEventData
from dagster._core.launcher import ResumeRunContext
from dagster._core.storage.dagster_run import DagsterRun, RunRecord
from dagster._core.workspace.context import BaseWorkspaceRequestContext
from dagster._utils.error import serializable_error_info_from_exc_info

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.model import Action, ResumeRun
from dagster_run_monitor.core.policy import resume_of
from dagster_run_monitor.core.settings import MonitorSettings
from dagster_run_monitor.daemon.health import HealthChecks
from dagster_run_monitor.storage import answers
from dagster_run_monitor.storage.answers import PassAnswers
from dagster_run_monitor.storage.bulk_writes import write_engine_events, write_tags


def batched(actions: Sequence[Action]) -> ResumeRun | None:
    """The resume among ``actions`` that is prepared with its chunk: every resume but a stalled
    run's, whose worker is stopped before anything is written."""
    resume = resume_of(actions)
    return resume if resume is not None and not resume.kill_first else None


def healthy_again(
    instance: DagsterInstance,
    runs: Sequence[DagsterRun],
    settings: MonitorSettings,
    resume_counts: Mapping[str, int],
    logger: logging.Logger,
) -> set[str]:
    """The runs among ``runs`` (crashed when the pass looked) whose worker answers healthy when
    checked again under the claim, all checked at once: another daemon may have resumed a run
    between this pass's health check and its claim (its resume event written before its new
    worker started). ``resume_counts``: read under the claim; each worker is read afresh (a
    list of all Jobs costs more than the reads of the few about to be resumed)."""
    if not runs:
        return set()
    checks = HealthChecks(
        instance.run_launcher,
        settings.health_check_threads,
        settings.health_check_timeout_seconds,
        PassAnswers(resume_counts),
        explain=False,
    )
    checks.submit(runs)
    healthy = set()
    for run_id, health in checks.results().items():
        if health.answered and health.healthy:
            logger.info("Run %s: its worker is healthy again (%s); left running.", run_id, health)
            healthy.add(run_id)
    return healthy


def tag(
    instance: DagsterInstance, resumes: Sequence[tuple[RunRecord, ResumeRun]]
) -> dict[str, DagsterRun]:
    """Write the resumes' tags (the attempt, the reason, the cause, an uncounted attempt,
    raised memory), for all runs at once; returns each run as written."""
    return write_tags(
        instance,
        [
            (
                record,
                {**resume.tags, c.RESUMED_TAG: str(resume.attempt), c.REASON_TAG: resume.reason},
            )
            for record, resume in resumes
        ],
    )


def announce(instance: DagsterInstance, resumes: Sequence[tuple[DagsterRun, ResumeRun]]) -> None:
    """Write each run's events before its new worker: what the resume changes (a note), why
    ("Detected ..."), and the resume event that counts the attempt."""
    events = []
    for run, resume in resumes:
        notes = [resume.note] if resume.note else []
        events += [(run, m) for m in [*notes, resume.message, c.RESUME_RUN_LOG_MESSAGE]]
    write_engine_events(instance, events)


def launch(
    instance: DagsterInstance,
    run: DagsterRun,
    workspace: BaseWorkspaceRequestContext,
    attempt: int,
) -> None:
    """The rest of ``instance.resume_run`` once its event is written: the launcher's
    ``resume_run`` (its tag writes that change nothing left out: ``answers``); if that raises,
    Dagster's error event and FAILURE, and the error."""
    try:
        context = ResumeRunContext(run, workspace, resume_attempt_number=attempt)
        with answers.resuming(run):
            instance.run_launcher.resume_run(context)
    except Exception:
        error = serializable_error_info_from_exc_info(sys.exc_info())
        instance.report_engine_event(error.message, run, EngineEventData.engine_error(error))
        instance.report_run_failed(run)
        raise
