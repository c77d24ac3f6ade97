"""Queue, stall and step timeouts, back-off, warnings and alerts, rules, dry run, the CLI:
pure policy boundaries first, then each through a real pass on a real instance."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from click.testing import CliRunner
from dagster import Definitions, asset, define_asset_job, job, op
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.cli import main as cli
from dagster_run_monitor.config.parse import settings_from_config
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.limits import Limit, resolve_limits
from dagster_run_monitor.core.model import (
    Alert,
    CancelRun,
    FailRun,
    Health,
    Notice,
    ResumeRun,
    RunFacts,
    TerminateAndFail,
)
from dagster_run_monitor.core.policy import decide
from dagster_run_monitor.core.settings import Backoff, MonitorSettings
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor_tests.support.decisions import crash_resume
from dagster_run_monitor_tests.support.home import monitor_instance
from dagster_run_monitor_tests.support.launchers import AFTER_RESUME_TAG, HEALTH_TAG
from dagster_run_monitor_tests.support.runs import (
    T0,
    at,
    make_run,
    messages,
    monitor_pass,
    status_of,
    tags_of,
)

NOW = 10_000.0
RUNNING = Health("RUNNING", "ok")


def settings(**config) -> MonitorSettings:
    return settings_from_config({"enabled": True, **config}, can_check_health=True, can_resume=True)


def facts(status: S, **kwargs) -> RunFacts:
    kwargs.setdefault("created_at", NOW - 5000)
    kwargs.setdefault("updated_at", NOW - 5000)
    kwargs.setdefault("job_name", "job")
    return RunFacts(run_id="r1", status=status, **kwargs)


# --- pure policy ------------------------------------------------------------------------


@pytest.mark.parametrize("age, fires", [(299, False), (300, True), (301, True)])
def test_queue_timeout_boundaries(age, fires):
    run = facts(S.QUEUED, enqueued_at=NOW - age)
    expected = CancelRun(
        "Canceled: the run was queued longer than 300 seconds (instance default).",
        c.REASON_QUEUE_TIMEOUT,
        debug_info=False,
    )
    assert decide(run, settings(queue_timeout_seconds=300), NOW) == ([expected] if fires else [])


RULES = [
    {"match": {"job": "etl_*", "location": "prod"}, "queue_timeout_seconds": "10m"},
    {"match": {"tags": {"team": "ml"}}, "queue_timeout_seconds": 60, "warn_after_fraction": 0.5},
    {"match": {"job": "etl_*"}, "queue_timeout_seconds": 30},
]


@pytest.mark.parametrize(
    "job_name, location, tags, expected",
    [
        ("etl_daily", "prod", {}, Limit(600, "rule 1 (job etl_*, location prod)")),
        ("etl_daily", "dev", {}, Limit(30, "rule 3 (job etl_*)")),
        ("train", "prod", {"team": "ml"}, Limit(60, "rule 2 (tag team=ml)")),
        ("etl_daily", "prod", {c.QUEUE_TIMEOUT_TAG: "5"}, Limit(5, f"tag {c.QUEUE_TIMEOUT_TAG}")),
        ("report", "prod", {}, Limit(900, "instance default")),
    ],
)
def test_tag_beats_first_matching_rule_beats_instance_default(job_name, location, tags, expected):
    limits = resolve_limits(
        job_name, location, tags, settings(queue_timeout_seconds=900, rules=RULES)
    )
    assert limits["queue_timeout_seconds"] == expected


def test_a_bad_tag_falls_back_to_the_rule_and_says_so():
    limits = resolve_limits("etl_x", "dev", {c.QUEUE_TIMEOUT_TAG: "soon"}, settings(rules=RULES))
    assert limits["queue_timeout_seconds"] == Limit(30, "rule 3 (job etl_*)")
    (notice, *_) = decide(
        facts(
            S.QUEUED,
            job_name="etl_x",
            location="dev",
            tags={c.QUEUE_TIMEOUT_TAG: "soon"},
            enqueued_at=NOW,
        ),
        settings(rules=RULES),
        NOW,
    )
    assert "Using rule 3 (job etl_*) instead (30 seconds)" in notice.message


@pytest.mark.parametrize(
    "config, key",
    [
        (
            {"rules": [{"match": {"job": "a"}}, {"max_runtime_seconds": "soon"}]},
            "run_monitoring.rules[2].max_runtime_seconds",
        ),
        ({"stall_action": "restart"}, "run_monitoring.stall_action"),
        ({"warn_after_fraction": 1.5}, "run_monitoring.warn_after_fraction"),
        ({"resume_backoff": {"multiplier": 0.5}}, "run_monitoring.resume_backoff.multiplier"),
        ({"alerts": {"webhook": {"url": "ftp://x"}}}, "run_monitoring.alerts.webhook.url"),
    ],
)
def test_invalid_settings_name_the_key_or_rule(config, key):
    with pytest.raises(
        DagsterInvalidConfigError, match=key.replace("[", r"\[").replace("]", r"\]")
    ):
        settings_from_config(config)


@pytest.mark.parametrize("idle, fires", [(599, False), (600, True), (601, True)])
def test_stall_fails_a_healthy_but_silent_run(idle, fires):
    run = facts(S.STARTED, health=RUNNING, started_at=NOW - 5000, last_event_at=NOW - idle)
    actions = decide(run, settings(stall_timeout_seconds=600), NOW)
    if not fires:
        assert actions == []
        return
    (action,) = actions
    message = c.stall_message(600, idle, "instance default")
    assert action == TerminateAndFail(message, message, c.REASON_STALLED)


def test_stall_can_resume_instead():
    run = facts(S.STARTED, health=RUNNING, started_at=NOW - 5000, last_event_at=NOW - 700)
    (action,) = decide(run, settings(stall_timeout_seconds=600, stall_action="resume"), NOW)
    assert isinstance(action, ResumeRun) and action.kill_first and action.attempt == 1


def test_step_timeout_from_the_op_tag_or_the_run_limit():
    run = facts(
        S.STARTED,
        health=RUNNING,
        started_at=NOW - 500,
        running_steps={"slow": NOW - 61, "other": NOW - 200},
        step_limits={"slow": "60"},
    )
    (action,) = decide(run, settings(), NOW)
    assert action.reason == c.REASON_STEP_TIMEOUT
    assert action.failure_message == c.step_timeout_message(
        "slow", 61, 60, f"op tag {c.MAX_STEP_RUNTIME_TAG}"
    )
    (action,) = decide(run, settings(max_step_runtime_seconds=199), NOW)
    assert "Step other has run for 200 seconds" in action.failure_message
    (action,) = decide(run, settings(max_step_runtime_seconds=200), NOW)  # other: at, not over
    assert "Step slow has run for 61 seconds" in action.failure_message
    assert decide(facts(S.STARTED, health=RUNNING, started_at=NOW - 500), settings(), NOW) == []


def test_backoff_waits():
    backoff = Backoff(initial_seconds=10, multiplier=2, max_seconds=25)
    assert [backoff.wait_seconds(n, "r") for n in (1, 2, 3, 4)] == [10, 20, 25, 25]
    jittered = Backoff(initial_seconds=100, jitter=0.2)
    waits = {jittered.wait_seconds(1, f"run{i}") for i in range(20)}
    assert all(80 <= w <= 120 for w in waits) and len(waits) > 1
    assert jittered.wait_seconds(1, "run1") == jittered.wait_seconds(1, "run1")  # deterministic


def test_resume_waits_for_its_backoff_and_says_when_once():
    config = settings(resume_backoff={"initial_seconds": 30})
    crashed = dict(health=Health("FAILED", "gone"), started_at=NOW - 100)
    (scheduled,) = decide(facts(S.STARTED, unhealthy_since=NOW - 10, **crashed), config, NOW)
    assert isinstance(scheduled, Notice) and scheduled.level == logging.INFO
    assert scheduled.message.startswith("Resume attempt 1 scheduled in 20 seconds, at ")
    announced = {c.RESUME_SCHEDULED_TAG: "1"}
    assert (
        decide(facts(S.STARTED, unhealthy_since=NOW - 10, tags=announced, **crashed), config, NOW)
        == []
    )
    (resume,) = decide(
        facts(S.STARTED, unhealthy_since=NOW - 30, tags=announced, **crashed), config, NOW
    )
    assert resume == crash_resume(1, c.resuming_message("FAILED: 'gone'", "r1"))


def test_in_a_crash_loop_each_backoff_runs_from_the_previous_resume():
    """The new worker died before any pass saw it healthy, so the crash's first sighting is
    still the first one: attempt 2 must wait its 8 s from the resume, not from that sighting."""
    config = settings(resume_backoff={"initial_seconds": 4, "multiplier": 2})
    looping = dict(
        health=Health("FAILED", "gone"),
        started_at=NOW - 100,
        unhealthy_since=NOW - 10,  # first seen; attempt 1 followed 4 s later
        last_resume_at=NOW - 6,
        resume_attempts=1,
    )
    (scheduled,) = decide(facts(S.STARTED, **looping), config, NOW)
    assert isinstance(scheduled, Notice)
    assert scheduled.message.startswith("Resume attempt 2 scheduled in 2 seconds, at ")
    (resume,) = decide(facts(S.STARTED, **looping), config, NOW + 2)
    assert resume == crash_resume(2, c.resuming_message("FAILED: 'gone'", "r1"))


def test_start_failures_can_be_relaunched_within_the_budget():
    dead = dict(health=Health("FAILED", "exit 1"), launched_at=NOW - 70, unhealthy_since=NOW - 60)
    (action,) = decide(facts(S.STARTING, **dead), settings(resume_on_start_failure=True), NOW)
    assert isinstance(action, ResumeRun)
    (action,) = decide(
        facts(S.STARTING, resume_attempts=3, **dead), settings(resume_on_start_failure=True), NOW
    )
    assert isinstance(action, FailRun) and action.reason == c.REASON_START_FAILED


@pytest.mark.parametrize("elapsed, warns", [(79, False), (80, True)])
def test_warning_at_a_fraction_of_the_max_runtime(elapsed, warns):
    config = settings(max_runtime_seconds=100, warn_after_fraction=0.8)
    run = facts(S.STARTED, health=RUNNING, started_at=NOW - elapsed)
    actions = decide(run, config, NOW)
    if not warns:
        assert actions == []
        return
    (notice,) = actions
    assert notice.message == "Run has used 80% of its max runtime (80 of 100 seconds)."
    assert notice.alert == Alert(
        "r1", "job", "warning", notice.message, "max_runtime_seconds", 100, 80, 0.8
    )
    warned = {f"{c.WARNED_TAG_PREFIX}max_runtime_seconds": "0.8"}
    assert (
        decide(facts(S.STARTED, health=RUNNING, started_at=NOW - 90, tags=warned), config, NOW)
        == []
    )


# --- through a real pass ----------------------------------------------------------------


def test_queued_run_past_its_queue_timeout_is_canceled(make_instance, workspace_context):
    with make_instance(run_monitoring={"queue_timeout_seconds": 300}) as instance:
        late = make_run(instance, S.QUEUED, created=T0 - 300)
        on_time = make_run(instance, S.QUEUED, created=T0 - 299)
        with workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx) == []
        assert status_of(instance, late.run_id) == S.CANCELED
        assert messages(instance, late.run_id)[-1] == (
            "Canceled: the run was queued longer than 300 seconds (instance default)."
        )
        assert tags_of(instance, late.run_id)[c.REASON_TAG] == c.REASON_QUEUE_TIMEOUT
        assert status_of(instance, on_time.run_id) == S.QUEUED


def test_stalled_run_is_failed(make_instance, workspace_context):
    with make_instance(run_monitoring={"stall_timeout_seconds": 600}) as instance:
        silent = make_run(instance, S.STARTED, started=T0 - 700)
        chatty = make_run(instance, S.STARTED, started=T0 - 700)
        with at(T0 - 10):
            instance.report_engine_event("still working", chatty)
        with workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx) == []
        assert status_of(instance, silent.run_id) == S.FAILURE
        assert tags_of(instance, silent.run_id)[c.REASON_TAG] == c.REASON_STALLED
        assert c.stall_message(600, 700, "instance default") in messages(instance, silent.run_id)
        assert status_of(instance, chatty.run_id) == S.STARTED


@op(tags={c.MAX_STEP_RUNTIME_TAG: "60"})
def slow_op():
    pass


@job
def job_with_step_limit():
    slow_op()


@asset(op_tags={c.MAX_STEP_RUNTIME_TAG: "1m"})
def slow_asset():
    return 1


step_defs = Definitions(assets=[slow_asset], jobs=[job_with_step_limit, define_asset_job("assets")])


@pytest.mark.parametrize(
    "job_name, step", [("job_with_step_limit", "slow_op"), ("assets", "slow_asset")]
)
def test_step_past_its_op_tag_limit_fails_the_run_naming_it(
    instance, workspace_context, job_name, step
):
    job_def = step_defs.resolve_job_def(job_name)
    run = make_run(instance, S.STARTED, job_def=job_def, started=T0 - 200)
    with at(T0 - 61):
        event = DagsterEvent(
            DagsterEventType.STEP_START.value, job_name=job_def.name, step_key=step
        )
        instance.report_dagster_event(event, run_id=run.run_id)
    with workspace_context(instance) as ctx:
        assert monitor_pass(instance, ctx, now=T0 - 1) == []  # 60 s: not over
        assert status_of(instance, run.run_id) == S.STARTED
        assert monitor_pass(instance, ctx) == []
    assert status_of(instance, run.run_id) == S.FAILURE
    assert tags_of(instance, run.run_id)[c.REASON_TAG] == c.REASON_STEP_TIMEOUT
    assert c.step_timeout_message(step, 61, 60, f"op tag {c.MAX_STEP_RUNTIME_TAG}") in messages(
        instance, run.run_id
    )


def test_resume_backoff_is_announced_then_applied(make_instance, workspace_context):
    config = {"resume_backoff": {"initial_seconds": 30}, "worker_unknown_grace_seconds": 0}
    with make_instance(run_monitoring=config) as instance:
        run = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"})
        daemon = RunMonitorDaemon.from_instance(instance)
        with workspace_context(instance) as ctx:
            monitor_pass(instance, ctx, now=T0, daemon=daemon)
            monitor_pass(instance, ctx, now=T0 + 10, daemon=daemon)
            log = messages(instance, run.run_id)
            assert [m for m in log if m.startswith("Resume attempt 1 scheduled in 30 seconds")]
            assert sum(m.startswith("Resume attempt 1") for m in log) == 1
            assert c.RESUME_RUN_LOG_MESSAGE not in log
            monitor_pass(instance, ctx, now=T0 + 30, daemon=daemon)
        assert messages(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1


def test_a_crash_loop_backs_off_from_each_resume_through_daemon_passes(
    make_instance, workspace_context
):
    config = {
        "resume_backoff": {"initial_seconds": 4, "multiplier": 2},
        "worker_unknown_grace_seconds": 0,
        "max_resume_run_attempts": 3,
    }
    with make_instance(run_monitoring=config) as instance:
        tags = {HEALTH_TAG: "FAILED", AFTER_RESUME_TAG: "FAILED"}  # every new worker dies too
        run = make_run(instance, S.STARTED, tags=tags)
        daemon = RunMonitorDaemon.from_instance(instance)

        def resumes_after(now: float) -> int:
            monitor_pass(instance, ctx, now=now, daemon=daemon)
            return messages(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE)

        with workspace_context(instance) as ctx:
            assert resumes_after(T0) == 0  # first seen; attempt 1 due at T0 + 4
            assert resumes_after(T0 + 4) == 1  # attempt 2 due 8 s later: T0 + 12
            assert resumes_after(T0 + 8) == 1  # 8 s after the sighting, 4 s after the resume
            assert resumes_after(T0 + 11) == 1
            assert resumes_after(T0 + 12) == 2
        log = messages(instance, run.run_id)
        assert sum(m.startswith("Resume attempt 2 scheduled in 4 seconds") for m in log) == 1


class Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers["Content-Length"])
        Receiver.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


CALLED: list[Alert] = []


def record_alert(alert: Alert) -> None:
    CALLED.append(alert)


@pytest.fixture
def webhook():
    Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts"
    server.shutdown()


def test_one_warning_and_one_alert_per_threshold_also_across_restarts(
    make_instance, workspace_context, webhook
):
    CALLED.clear()
    config = {
        "max_runtime_seconds": 100,
        "warn_after_fraction": 0.5,
        "alerts": {
            "webhook": {"url": webhook, "timeout_seconds": 2, "retries": 1},
            "callable": {"module": __name__, "function": "record_alert"},
        },
    }
    with make_instance(run_monitoring=config) as instance:
        run = make_run(instance, S.STARTED, started=T0 - 50)
        with workspace_context(instance) as ctx:
            for i in range(3):  # a new daemon each pass: as if restarted
                monitor_pass(
                    instance, ctx, now=T0 + i, daemon=RunMonitorDaemon.from_instance(instance)
                )
        expected = "Run has used 50% of its max runtime (50 of 100 seconds)."
        assert messages(instance, run.run_id).count(expected) == 1
        assert status_of(instance, run.run_id) == S.STARTED
    (posted,) = Receiver.received
    assert posted["run_id"] == run.run_id and posted["message"] == expected
    assert posted["limit"] == "max_runtime_seconds" and posted["fraction"] == 0.5
    assert [a.run_id for a in CALLED] == [run.run_id]


def test_a_crashed_worker_is_one_failed_alert_with_its_cause(
    make_instance, workspace_context, webhook
):
    config = {
        "max_resume_run_attempts": 0,
        "alerts": {
            "on": ["failed"],
            "webhook": {"url": webhook, "timeout_seconds": 2, "retries": 1},
        },
    }
    with make_instance(run_monitoring=config) as instance:
        run = make_run(instance, S.STARTED, started=T0 - 50, tags={HEALTH_TAG: "FAILED"})
        with workspace_context(instance) as ctx:
            for i in range(2):
                monitor_pass(instance, ctx, now=T0 + i)
        assert status_of(instance, run.run_id) == S.FAILURE
        assert instance.get_run_by_id(run.run_id).tags[c.CRASH_CAUSE_TAG] == "unknown"
    (posted,) = Receiver.received  # once, though two passes ran
    assert posted["kind"] == posted["event"] == "failed" and posted["cause"] == "unknown"
    assert posted["reason"] == c.REASON_WORKER_CRASH
    assert posted["run_id"] == run.run_id
    assert posted["message"].startswith("Detected run worker status FAILED: ")


def test_rules_by_job_name_and_tags_on_the_run_beat_them(make_instance, workspace_context):
    rules = [{"match": {"job": "etl_*"}, "max_runtime_seconds": 50}]
    with make_instance(run_monitoring={"rules": rules}) as instance:
        matched = make_run(instance, S.STARTED, job_name="etl_daily", started=T0 - 60)
        other = make_run(instance, S.STARTED, job_name="report", started=T0 - 60)
        tagged = make_run(
            instance,
            S.STARTED,
            job_name="etl_hourly",
            started=T0 - 60,
            tags={c.MAX_RUNTIME_TAG: "100"},
        )
        with workspace_context(instance) as ctx:
            monitor_pass(instance, ctx)
        assert status_of(instance, matched.run_id) == S.FAILURE
        assert status_of(instance, other.run_id) == S.STARTED
        assert status_of(instance, tagged.run_id) == S.STARTED


def test_dry_run_decides_and_logs_but_changes_nothing(make_instance, workspace_context, caplog):
    with make_instance(run_monitoring={"dry_run": True}) as instance:
        run = make_run(instance, S.STARTING, launched=T0 - 500)
        before = messages(instance, run.run_id)
        with workspace_context(instance) as ctx, caplog.at_level(logging.INFO):
            assert monitor_pass(instance, ctx) == []
        assert status_of(instance, run.run_id) == S.STARTING
        assert messages(instance, run.run_id) == before
        assert f"DRY RUN: run {run.run_id} would get FailRun" in caplog.text
        assert "Run timed out due to taking longer than 180 seconds to start." in caplog.text


def test_cli_status_and_explain_use_the_same_decisions():
    rules = [{"match": {"job": "etl_*"}, "max_runtime_seconds": 3600}]
    with monitor_instance(run_monitoring={"rules": rules}) as instance, at(T0):
        running = make_run(instance, S.STARTED, job_name="etl_daily", started=T0 - 600)
        stuck = make_run(instance, S.STARTING, launched=T0 - 500, created=T0 - 600)
        runner = CliRunner()
        status = runner.invoke(cli, ["status"])
        assert status.exit_code == 0, status.output
        assert running.run_id in status.output and stuck.run_id in status.output
        assert "max_runtime_seconds: 3600s from rule 1 (job etl_*), 3000s left" in status.output
        explain = runner.invoke(cli, ["explain", stuck.run_id])
        assert explain.exit_code == 0, explain.output
        assert (
            "Next pass: FailRun: Run timed out due to taking longer than 180 seconds to start."
            in explain.output
        )
        assert "Next pass: nothing to do." in runner.invoke(cli, ["explain", running.run_id]).output
        missing = runner.invoke(cli, ["explain", "no-such-run"])
        assert missing.exit_code != 0 and "not monitored (not found)" in missing.output


def test_stall_resume_respects_the_attempt_budget():
    run = facts(
        S.STARTED, health=RUNNING, started_at=NOW - 5000, last_event_at=NOW - 700, resume_attempts=3
    )
    (action,) = decide(run, settings(stall_timeout_seconds=600, stall_action="resume"), NOW)
    assert isinstance(action, TerminateAndFail) and action.reason == c.REASON_STALLED


def test_a_dead_worker_at_start_is_relaunched_when_asked(make_instance, workspace_context):
    config = {"resume_on_start_failure": True, "worker_unknown_grace_seconds": 0}
    with make_instance(run_monitoring=config) as instance:
        run = make_run(instance, S.STARTING, launched=T0 - 5, tags={HEALTH_TAG: "FAILED"})
        with workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx) == []
        assert status_of(instance, run.run_id) == S.STARTING
        assert messages(instance, run.run_id)[-2:] == [
            c.resuming_message("FAILED: 'worker is failed'", run.run_id),
            c.RESUME_RUN_LOG_MESSAGE,
        ]
        assert tags_of(instance, run.run_id)[HEALTH_TAG] == "RUNNING"  # the relaunched worker
