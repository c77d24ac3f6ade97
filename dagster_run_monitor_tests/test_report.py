"""The recovery report from a known set of runs the daemon acted on (real passes, SQLite and
PostgreSQL): its numbers, its formats, its statements."""

import json

from click.testing import CliRunner
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.cli import main as cli
from dagster_run_monitor.core.crash_cause import CrashCause
from dagster_run_monitor_tests.support.launchers import (
    AFTER_RESUME_TAG,
    HEALTH_TAG,
    ScriptedRunLauncher,
)
from dagster_run_monitor_tests.support.runs import T0, at, make_run, monitor_pass, report

CAUSE_TAG = "test/cause"
DAY = 86400


class CausedRunLauncher(ScriptedRunLauncher):
    """The scripted launcher, telling each crash's cause from a run tag."""

    def crash_cause(self, run: DagsterRun) -> CrashCause:
        return CrashCause(run.tags.get(CAUSE_TAG, "unknown"))


LAUNCHER = {"module": __name__, "class": "CausedRunLauncher"}


def worker_started(instance, run: DagsterRun, when: float) -> None:
    with at(when):
        instance.report_engine_event("Started process for run (pid: 4242).", run)


def test_the_report_counts_recoveries_delays_and_stuck_time(make_instance, workspace_context):
    """etl_a: OOM-killed, resumed, its new worker up 8 s later, SUCCESS. etl_b: preempted,
    resumed (new worker 20 s later), dies again past its one attempt: FAILURE. load: over its
    max runtime of 300 s: FAILURE, 400 s after its last progress. An old acted-on run (8 days)
    and a run never acted on are left out."""
    config = {"max_resume_run_attempts": 1, "max_runtime_seconds": 300}
    with make_instance(run_monitoring=config, launcher=LAUNCHER) as instance:
        crash = {HEALTH_TAG: "FAILED", AFTER_RESUME_TAG: "RUNNING"}
        with at(T0 - 8 * DAY):
            old = make_run(instance, S.STARTED, job_name="old", tags=crash, created=T0 - 8 * DAY)
        with workspace_context(instance) as ctx:
            monitor_pass(instance, ctx, T0 - 8 * DAY + 10)  # the old run: resumed then
        with at(T0 - 8 * DAY + 20):
            report(instance, old, DagsterEventType.RUN_SUCCESS)
        a = make_run(
            instance, S.STARTED, job_name="etl_a", tags={**crash, CAUSE_TAG: "oom_killed"},
            created=T0 - 250, started=T0 - 200,
        )  # fmt: skip
        again = {HEALTH_TAG: "FAILED", AFTER_RESUME_TAG: "FAILED", CAUSE_TAG: "preempted"}
        b = make_run(
            instance, S.STARTED, job_name="etl_b", tags=again, created=T0 - 250, started=T0 - 240
        )
        make_run(instance, S.STARTED, job_name="load", created=T0 - 450, started=T0 - 400)
        make_run(instance, S.STARTED, job_name="quiet", created=T0 - 50, started=T0 - 40)
        with workspace_context(instance) as ctx:
            for run in (a, b):
                worker_started(instance, run, T0 - 199)
            monitor_pass(instance, ctx, T0)  # a and b resumed, load failed (400 > 300)
            worker_started(instance, a, T0 + 8)
            worker_started(instance, b, T0 + 20)
            monitor_pass(instance, ctx, T0 + 30)  # b's new worker died: no attempts left
        with at(T0 + 100):
            report(instance, instance.get_run_by_id(a.run_id), DagsterEventType.RUN_SUCCESS)
        assert instance.get_run_by_id(old.run_id).tags.get("run_monitor/resumed") == "1"
        with at(T0 + 200):
            shown = CliRunner().invoke(cli, ["report", "--since", "7d", "--format", "json"])
        assert shown.exit_code == 0, shown.output
        data = json.loads(shown.output)
        statements = 3 if type(instance.event_log_storage).__name__.startswith("Postgres") else 4
        assert data["statements"] == statements  # runs; then per chunk or per run
        crash_line = {
            "runs": 2, "resumed": 2, "recovered": 1, "recovery_rate": 0.5,
            "to_new_worker_p50_s": 8.0, "to_new_worker_p95_s": 20.0,
            "ended": 1, "stuck_p50_s": 270.0, "stuck_p95_s": 270.0,
        }  # fmt: skip
        assert data["by_reason"]["worker_crash"] == crash_line  # b: 270 s since RUN_START
        assert data["by_reason"]["max_runtime"] == {
            "runs": 1, "resumed": 0, "recovered": 0, "recovery_rate": None,
            "to_new_worker_p50_s": None, "to_new_worker_p95_s": None,
            "ended": 1, "stuck_p50_s": 400.0, "stuck_p95_s": 400.0,
        }  # fmt: skip
        assert data["by_cause"]["oom_killed"]["recovery_rate"] == 1.0
        assert data["by_cause"]["oom_killed"]["to_new_worker_p50_s"] == 8.0
        assert data["by_cause"]["preempted"]["recovery_rate"] == 0.0
        assert data["by_cause"]["preempted"]["ended"] == 1
        assert data["total"]["runs"] == 3
        assert data["crashed_jobs"] == [["etl_b", 2], ["etl_a", 1]]
        with at(T0 + 200):
            text = CliRunner().invoke(cli, ["report", "--since", "7d"]).output
            markdown = CliRunner().invoke(cli, ["report", "--format", "markdown"]).output
        assert text.startswith("Recovery report, 2027-01-08T08:03:20+00:00 to")
        assert ": 3 run(s) acted on" in text.splitlines()[0]
        line = next(x for x in text.splitlines() if x.strip().startswith("worker_crash"))
        assert line.split() == ["worker_crash", *"2 2 1 50% 8.0 s 20.0 s 1 270.0 s 270.0 s".split()]
        assert "Jobs that crashed most: etl_b (2), etl_a (1)." in text
        assert "| max_runtime | 1 | 0 | 0 | - | - | - | 1 | 400.0 s | 400.0 s |" in markdown


def test_a_bad_since_is_refused_naming_the_option(make_instance):
    with make_instance():
        refused = CliRunner().invoke(cli, ["report", "--since", "last week"])
        assert refused.exit_code == 2 and "--since" in refused.output
