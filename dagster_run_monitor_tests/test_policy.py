"""The decision core with plain values: boundaries, precedence, bad values."""

import pytest
from dagster._core.events import RunFailureReason
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core import policy
from dagster_run_monitor.core.limits import Limit, resolve_limits
from dagster_run_monitor.core.model import (
    CancelRun,
    FailRun,
    Health,
    Notice,
    ResumeRun,
    RunFacts,
    TerminateAndFail,
)
from dagster_run_monitor.core.policy import bad_tag_notices, decide, plan
from dagster_run_monitor.core.settings import MonitorSettings
from dagster_run_monitor_tests.support.decisions import crash_resume

NOW = 10_000.0
SETTINGS = MonitorSettings(enabled=True, can_check_health=True, can_resume=True)
RUNNING = Health("RUNNING", "ok")
FAILED = Health("FAILED", "exit code 137")


def facts(status: S, **kwargs) -> RunFacts:
    kwargs.setdefault("created_at", NOW - 5000)
    kwargs.setdefault("updated_at", NOW - 5000)
    return RunFacts(run_id="r1", job_name="job", status=status, **kwargs)


@pytest.mark.parametrize(
    "age, expected",
    [(179.999, []), (180, [c.REASON_START_TIMEOUT]), (181, [c.REASON_START_TIMEOUT])],
)
def test_start_timeout_boundaries(age, expected):
    actions = decide(facts(S.STARTING, launched_at=NOW - age), SETTINGS, NOW)
    assert [a.reason for a in actions] == expected
    if expected:
        (action,) = actions
        assert action == FailRun(
            "Run timed out due to taking longer than 180 seconds to start.",
            c.REASON_START_TIMEOUT,
            RunFailureReason.START_TIMEOUT,
            terminate_first=True,
            debug_info=True,
        )


def test_not_started_times_out_from_creation_without_terminating():
    (action,) = decide(facts(S.NOT_STARTED, created_at=NOW - 180), SETTINGS, NOW)
    assert action.reason == c.REASON_START_TIMEOUT and not action.terminate_first
    assert decide(facts(S.NOT_STARTED, created_at=NOW - 179), SETTINGS, NOW) == []


def test_start_timeout_zero_disables():
    settings = MonitorSettings(enabled=True, start_timeout_seconds=0)
    assert decide(facts(S.STARTING, launched_at=NOW - 10**6), settings, NOW) == []
    assert decide(facts(S.NOT_STARTED, created_at=NOW - 10**6), settings, NOW) == []


@pytest.mark.parametrize("age, fires", [(179, False), (180, True), (500, True)])
def test_cancel_timeout_from_last_canceling_event(age, fires):
    run = facts(S.CANCELING, canceling_at=NOW - age, updated_at=NOW)  # a tag write bumped it
    expected = [CancelRun("Run timed out due to taking longer than 180 seconds to cancel.")]
    assert decide(run, SETTINGS, NOW) == (expected if fires else [])


def test_a_run_left_canceling_by_a_daemon_that_was_failing_it_is_failed_not_canceled():
    """The daemon stopped between terminate and the failure it was writing (its reason in
    ``run_monitor/failing``): at the cancel timeout the run ends FAILURE for that reason."""
    run = facts(S.CANCELING, canceling_at=NOW - 180, tags={c.FAILING_TAG: c.REASON_HUNG})
    (action,) = decide(run, SETTINGS, NOW)
    assert action == FailRun(
        "Run failed (hung): its worker was stopped, and the run was still canceling 180 seconds"
        " later (the daemon failing it stopped before it could).",
        c.REASON_HUNG,
    )


def test_cancel_timeout_zero_disables():
    settings = MonitorSettings(enabled=True, cancel_timeout_seconds=0)
    assert decide(facts(S.CANCELING, canceling_at=NOW - 10**6), settings, NOW) == []


@pytest.mark.parametrize(
    "tags, expected",
    [
        ({}, 0),
        ({c.MAX_RUNTIME_TAG: "10"}, 10),
        ({c.MAX_RUNTIME_ALIAS_TAG: "20"}, 20),
        ({c.MAX_RUNTIME_TAG: "10", c.MAX_RUNTIME_ALIAS_TAG: "20"}, 10),
        ({c.MAX_RUNTIME_TAG: "90s"}, 90),
        ({c.MAX_RUNTIME_TAG: "2h"}, 7200),
        ({c.MAX_RUNTIME_TAG: "PT1H30M"}, 5400),
        ({c.MAX_RUNTIME_TAG: "1.5"}, 1.5),
        ({c.MAX_RUNTIME_TAG: "0"}, 0),
    ],
)
def test_max_runtime_sources(tags, expected):
    limits = resolve_limits("job", None, tags, SETTINGS)
    assert limits["max_runtime_seconds"].seconds == expected and limits.bad_tags == ()


def max_runtime(tags, settings):
    """(limit, the warning notice if any), as the policy sees them."""
    limits = resolve_limits("job", None, tags, settings)
    notices = bad_tag_notices(facts(S.STARTED, tags=tags), limits)
    return limits["max_runtime_seconds"].seconds, (notices[0] if notices else None)


def test_max_runtime_global_default_and_tag_precedence():
    settings = MonitorSettings(enabled=True, max_runtime_seconds=60)
    assert max_runtime({}, settings) == (60, None)
    assert max_runtime({c.MAX_RUNTIME_TAG: "5"}, settings) == (5, None)
    assert resolve_limits("job", None, {}, settings)["max_runtime_seconds"] == Limit(
        60, "instance default"
    )


@pytest.mark.parametrize("value", ["ten", "-5", "10 parsecs", "nan", "inf", "P"])
def test_bad_max_runtime_tag_warns_once_and_applies_default(value):
    settings = MonitorSettings(enabled=True, max_runtime_seconds=60)
    limit, warning = max_runtime({c.MAX_RUNTIME_TAG: value}, settings)
    assert limit == 60
    assert isinstance(warning, Notice)
    assert warning.message == c.invalid_tag_message(c.MAX_RUNTIME_TAG, value, 60)
    assert (warning.tag, warning.value) == (f"{c.WARNED_TAG_PREFIX}{c.MAX_RUNTIME_TAG}", value)
    assert warning.alert is not None and warning.alert.kind == "invalid_tag"
    assert "Using the instance default instead (60 seconds)" in warning.message
    already_warned = {c.MAX_RUNTIME_TAG: value, warning.tag: value}
    assert max_runtime(already_warned, settings) == (60, None)


def exceeded(seconds):
    return TerminateAndFail(
        f"Canceling due to exceeding maximum runtime of {seconds} seconds.",
        f"Exceeded maximum runtime of {seconds} seconds.",
        c.REASON_MAX_RUNTIME,
    )


@pytest.mark.parametrize("elapsed, fires", [(10, False), (10.001, True)])
def test_max_runtime_boundary(elapsed, fires):
    run = facts(S.STARTED, tags={c.MAX_RUNTIME_TAG: "10"}, started_at=NOW - elapsed, health=RUNNING)
    assert decide(run, SETTINGS, NOW) == ([exceeded(10)] if fires else [])


def test_max_runtime_applies_to_suspended_runs_and_not_before_start():
    settings = MonitorSettings(enabled=True, max_runtime_seconds=10)
    if hasattr(S, "SUSPENDED"):  # Dagster 1.13 on
        assert decide(facts(S.SUSPENDED, started_at=NOW - 11), settings, NOW) == [exceeded(10)]
    assert decide(facts(S.STARTED, started_at=None, health=RUNNING), settings, NOW) == []


def test_crashed_worker_is_resumed_with_the_next_attempt_number():
    run = facts(S.STARTED, health=FAILED, resume_attempts=1, started_at=NOW - 5)
    assert decide(run, SETTINGS, NOW) == [
        crash_resume(
            2,
            "Detected run worker status FAILED: 'exit code 137'. Resuming run r1 with a new"
            " worker.",
        )
    ]


def test_crashed_worker_fails_when_attempts_are_used_up():
    run = facts(S.STARTED, health=FAILED, resume_attempts=3)
    (action,) = decide(run, SETTINGS, NOW)
    assert action.message == (
        "Detected run worker status FAILED: 'exit code 137'. Marking run r1 as failed, because it"
        " has surpassed the configured maximum attempts to resume the run: 3."
    )
    assert action.reason == c.REASON_WORKER_CRASH
    assert action.debug_info and action.container_logs


@pytest.mark.parametrize(
    "settings",
    [
        MonitorSettings(
            enabled=True, max_resume_run_attempts=0, can_check_health=True, can_resume=True
        ),
        MonitorSettings(
            enabled=True, max_resume_run_attempts=3, can_check_health=True, can_resume=False
        ),
    ],
)
def test_zero_attempts_or_no_resume_support_never_resumes(settings):
    (action,) = decide(facts(S.STARTED, health=FAILED), settings, NOW)
    assert isinstance(action, FailRun)
    assert (
        action.message
        == "Detected run worker status FAILED: 'exit code 137'. Marking run r1 as failed."
    )


def test_not_found_while_started_is_a_crash_without_debug_info():
    (action,) = decide(facts(S.STARTED, health=Health("NOT_FOUND", "gone")), SETTINGS, NOW)
    assert action == crash_resume(1, c.resuming_message("NOT_FOUND: 'gone'", "r1"))
    settings = MonitorSettings(enabled=True, max_resume_run_attempts=0, can_check_health=True)
    (failure,) = decide(facts(S.STARTED, health=Health("NOT_FOUND", "gone")), settings, NOW)
    assert not failure.debug_info


@pytest.mark.parametrize(
    "health",
    [Health("UNKNOWN", "API 503"), Health("FAILED", "evicted", transient=True)],
)
def test_uncertain_health_counts_only_after_the_grace_period(health):
    grace = SETTINGS.worker_unknown_grace_seconds
    first_sight = facts(S.STARTED, health=health, unhealthy_since=NOW)
    assert decide(first_sight, SETTINGS, NOW) == []
    almost = facts(S.STARTED, health=health, unhealthy_since=NOW - grace + 1)
    assert decide(almost, SETTINGS, NOW) == []
    lasted = facts(S.STARTED, health=health, unhealthy_since=NOW - grace)
    assert decide(lasted, SETTINGS, NOW) == [crash_resume(1, c.resuming_message(str(health), "r1"))]


def test_dead_worker_of_a_starting_run_fails_before_the_start_timeout():
    first_sight = facts(S.STARTING, launched_at=NOW - 5, health=FAILED, unhealthy_since=NOW)
    assert decide(first_sight, SETTINGS, NOW) == []  # a container being created looks "failed"
    run = facts(S.STARTING, launched_at=NOW - 65, health=FAILED, unhealthy_since=NOW - 60)
    (action,) = decide(run, SETTINGS, NOW)
    assert action == FailRun(
        c.start_failed_message("FAILED: 'exit code 137'", "r1"),
        c.REASON_START_FAILED,
        RunFailureReason.UNEXPECTED_TERMINATION,
        terminate_first=True,
        debug_info=True,
        cause="unknown",
    )


def test_missing_worker_of_a_starting_run_waits_for_the_grace_period():
    missing = Health("NOT_FOUND", "not created yet")
    assert (
        decide(
            facts(S.STARTING, launched_at=NOW - 5, health=missing, unhealthy_since=NOW),
            SETTINGS,
            NOW,
        )
        == []
    )
    (action,) = decide(
        facts(S.STARTING, launched_at=NOW - 61, health=missing, unhealthy_since=NOW - 60),
        SETTINGS,
        NOW,
    )
    assert action.reason == c.REASON_START_FAILED


def test_healthy_or_unchecked_worker_is_left_alone():
    for health in (RUNNING, Health("SUCCESS", "done"), None):
        assert decide(facts(S.STARTED, health=health, started_at=NOW - 10**6), SETTINGS, NOW) == []


def test_a_crash_is_handled_before_the_max_runtime():
    run = facts(S.STARTED, health=FAILED, tags={c.MAX_RUNTIME_TAG: "1"}, started_at=NOW - 100)
    (action,) = decide(run, SETTINGS, NOW)
    assert isinstance(action, ResumeRun)


def test_bad_tag_warning_comes_with_the_other_actions():
    run = facts(S.STARTING, launched_at=NOW - 181, tags={c.MAX_RUNTIME_TAG: "soon"})
    warning, failure = decide(run, SETTINGS, NOW)
    assert isinstance(warning, Notice) and failure.reason == c.REASON_START_TIMEOUT


def test_a_pass_plan_decides_each_run_and_says_what_the_heartbeat_reports(monkeypatch):
    crashed = RunFacts(
        run_id="crashed",
        job_name="job",
        status=S.STARTED,
        created_at=NOW - 50,
        updated_at=NOW - 50,
        health=FAILED,
        unhealthy_since=NOW - 1,
    )
    hung = RunFacts(
        run_id="hung",
        job_name="job",
        status=S.STARTED,
        created_at=NOW - 50,
        updated_at=NOW - 50,
        health=Health("UNKNOWN", "no answer in 30 s", answered=False),
        unhealthy_since=NOW - 5,
    )
    old = RunFacts(  # past the start timeout, worker healthy
        run_id="old",
        job_name="job",
        status=S.STARTING,
        created_at=NOW - 500,
        updated_at=NOW - 500,
        launched_at=NOW - 400,
        health=RUNNING,
    )
    full = plan([crashed, hung, old], SETTINGS, NOW)
    assert [run_id for run_id, _ in full.due] == ["crashed", "old"]
    assert isinstance(full.due[0][1][0], ResumeRun)
    assert full.unhealthy_since == {"crashed": NOW - 1, "hung": NOW - 5}
    assert full.unanswered == (
        "1 worker health check(s) had no answer; those runs are checked again next pass"
        " (run hung: no answer in 30 s)"
    )
    assert full.over_warning_threshold is None  # not asked for
    between = plan([crashed, hung, old], SETTINGS, NOW, crashes_only=True, count_warnings=True)
    assert [run_id for run_id, _ in between.due] == ["crashed"]  # only unhealthy workers
    assert between.over_warning_threshold is None  # full passes only

    real = policy.decide
    monkeypatch.setattr(
        policy, "decide", lambda run, *a: 1 / 0 if run.run_id == "crashed" else real(run, *a)
    )
    isolated = plan([crashed, old], SETTINGS, NOW)
    assert [run_id for run_id, _ in isolated.due] == ["old"]
    assert [(run_id, type(e)) for run_id, e in isolated.errors] == [("crashed", ZeroDivisionError)]
