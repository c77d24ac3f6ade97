"""One monitoring pass against a real DagsterInstance, on SQLite and on Postgres."""

import logging
import threading

import pytest
import sqlalchemy as sa
from dagster import MAX_RUNTIME_SECONDS_TAG, Definitions, asset, define_asset_job, job, op
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG

from dagster_run_monitor.config.parse import read_settings
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.model import MONITORED_STATUSES, Health, ResumeRun
from dagster_run_monitor.daemon.actions import apply_actions
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor.daemon.observe import observe
from dagster_run_monitor.storage.runs import RunReader
from dagster_run_monitor.storage.schema_checks import remember_schema_checks
from dagster_run_monitor_tests.support.home import monitor_instance
from dagster_run_monitor_tests.support.launchers import (
    AFTER_RESUME_TAG,
    HEALTH_RAISE_TAG,
    HEALTH_SLEEP_TAG,
    HEALTH_TAG,
    RESUME_RAISE_TAG,
    TERMINATE_TAG,
    TERMINATED_TAG,
)
from dagster_run_monitor_tests.support.runs import (
    T0,
    at,
    events,
    make_run,
    messages,
    monitor_pass,
    report,
    status_of,
    tags_of,
)


def resume_events(instance, run_id):
    return [m for m in messages(instance, run_id) if m == c.RESUME_RUN_LOG_MESSAGE]


# --- start timeout -----------------------------------------------------------------------


def test_starting_run_past_start_timeout_fails_and_its_worker_is_terminated(
    instance, workspace_context
):
    late = make_run(instance, S.STARTING, launched=T0 - 180)
    on_time = make_run(instance, S.STARTING, launched=T0 - 179)
    with workspace_context(instance) as ctx:
        assert monitor_pass(instance, ctx) == []

    assert status_of(instance, late.run_id) == S.FAILURE
    tags = tags_of(instance, late.run_id)
    assert tags[RUN_FAILURE_REASON_TAG] == "START_TIMEOUT"
    assert tags[c.REASON_TAG] == c.REASON_START_TIMEOUT
    assert tags[TERMINATED_TAG] == "true"
    assert events(instance, late.run_id)[-1] == (
        DagsterEventType.RUN_FAILURE.value,
        "Run timed out due to taking longer than 180 seconds to start.\n"
        "scripted worker debug info (container logs: True)",
    )
    assert status_of(instance, on_time.run_id) == S.STARTING


def test_a_launch_stamped_by_a_clock_ten_minutes_behind_is_not_timed_out_early(
    instance, workspace_context
):
    """The launching host's clock is 10 minutes behind: its STARTING event says the run has
    waited 600 s. This daemon saw the run NOT_STARTED at its pass 5 s before: the start
    timeout (180 s) counts from that pass, never from the other host's time."""
    run = make_run(instance, S.NOT_STARTED, created=T0 - 6)
    daemon = RunMonitorDaemon.from_instance(instance)
    with workspace_context(instance) as ctx:
        assert monitor_pass(instance, ctx, T0 - 5, daemon) == []
        with at(T0 - 600):  # the launcher's clock
            report(instance, run, DagsterEventType.PIPELINE_STARTING)
        assert monitor_pass(instance, ctx, T0, daemon) == []
        assert status_of(instance, run.run_id) == S.STARTING
        assert monitor_pass(instance, ctx, T0 + 174, daemon) == []
        assert status_of(instance, run.run_id) == S.STARTING
        assert monitor_pass(instance, ctx, T0 + 176, daemon) == []  # 181 s after that pass
    assert status_of(instance, run.run_id) == S.FAILURE
    assert tags_of(instance, run.run_id)[c.REASON_TAG] == c.REASON_START_TIMEOUT


def test_a_fresh_daemon_never_times_out_a_start_before_the_run_was_created(
    instance, workspace_context
):
    """Found by the soak: a daemon restarted a moment before has no earlier pass to bound the
    launch time by; the launching host's clock, 10 minutes behind, stamped STARTING 600 s
    ago, and the run was failed for its start timeout 6 s after the database created it. No
    status begins before the run's creation (the database's clock)."""
    run = make_run(instance, S.NOT_STARTED, created=T0 - 6)
    with at(T0 - 600):  # the launcher's clock
        report(instance, run, DagsterEventType.PIPELINE_STARTING)
    with workspace_context(instance) as ctx:
        assert monitor_pass(instance, ctx, T0, RunMonitorDaemon.from_instance(instance)) == []
    assert status_of(instance, run.run_id) == S.STARTING


def test_not_started_run_times_out_from_its_creation(instance, workspace_context):
    run = make_run(instance, S.NOT_STARTED, created=T0 - 180)
    with workspace_context(instance) as ctx:
        monitor_pass(instance, ctx)
    assert status_of(instance, run.run_id) == S.FAILURE
    assert tags_of(instance, run.run_id)[RUN_FAILURE_REASON_TAG] == "START_TIMEOUT"
    assert TERMINATED_TAG not in tags_of(instance, run.run_id)


def test_start_timeout_zero_disables_the_check(make_instance, workspace_context):
    with make_instance(run_monitoring={"start_timeout_seconds": 0}) as instance:
        run = make_run(instance, S.STARTING, launched=T0 - 10**6)
        with workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx) == []
        assert status_of(instance, run.run_id) == S.STARTING


def test_dead_worker_of_a_starting_run_fails_before_the_start_timeout(instance, workspace_context):
    run = make_run(instance, S.STARTING, launched=T0 - 5, tags={HEALTH_TAG: "FAILED"})
    daemon = RunMonitorDaemon.from_instance(instance)
    with workspace_context(instance) as ctx:
        monitor_pass(instance, ctx, now=T0, daemon=daemon)
        assert status_of(instance, run.run_id) == S.STARTING  # first sight: may be starting
        monitor_pass(instance, ctx, now=T0 + 60, daemon=daemon)  # the grace period later
    assert status_of(instance, run.run_id) == S.FAILURE
    assert tags_of(instance, run.run_id)[c.REASON_TAG] == c.REASON_START_FAILED
    assert messages(instance, run.run_id)[-1].startswith(
        f"Detected run worker status FAILED: 'worker is failed' before the run started. Marking"
        f" run {run.run_id} as failed."
    )


# --- cancel timeout ----------------------------------------------------------------------


def test_canceling_run_past_cancel_timeout_is_canceled(instance, workspace_context):
    stuck = make_run(instance, S.CANCELING, canceling=T0 - 180)
    with at(T0 - 1):  # a tag write moves update_timestamp, not the cancel time
        instance.add_run_tags(stuck.run_id, {"note": "touched"})
    recent = make_run(instance, S.CANCELING, canceling=T0 - 179)
    with workspace_context(instance) as ctx:
        assert monitor_pass(instance, ctx) == []
    assert status_of(instance, stuck.run_id) == S.CANCELED
    assert events(instance, stuck.run_id)[-1] == (
        DagsterEventType.RUN_CANCELED.value,
        "Run timed out due to taking longer than 180 seconds to cancel.\n"
        "scripted worker debug info (container logs: True)",
    )
    assert tags_of(instance, stuck.run_id)[c.REASON_TAG] == c.REASON_CANCEL_TIMEOUT
    assert status_of(instance, recent.run_id) == S.CANCELING


def test_cancel_timeout_counts_from_the_last_canceling_event(instance, workspace_context):
    run = make_run(instance, S.CANCELING, canceling=T0 - 1000)
    with at(T0 - 10):
        instance.report_run_canceling(instance.get_run_by_id(run.run_id))
    with workspace_context(instance) as ctx:
        monitor_pass(instance, ctx)
    assert status_of(instance, run.run_id) == S.CANCELING


# --- max runtime -------------------------------------------------------------------------


@op
def noop():
    pass


@job(tags={MAX_RUNTIME_SECONDS_TAG: 10})
def job_with_timeout():
    noop()


@asset
def an_asset():
    return 1


asset_job = define_asset_job(name="some_job", selection="*", tags={MAX_RUNTIME_SECONDS_TAG: 10})
defs = Definitions(assets=[an_asset], jobs=[asset_job, job_with_timeout])


def test_max_runtime_from_job_and_asset_job_tags(instance, workspace_context):
    runs = []
    for job_def in (defs.resolve_job_def("job_with_timeout"), defs.resolve_job_def("some_job")):
        tags = dict(job_def.tags)
        assert tags[MAX_RUNTIME_SECONDS_TAG] == "10"
        runs.append(
            make_run(instance, S.STARTED, tags=tags, started=T0 - 11, job_name=job_def.name)
        )
    under = make_run(instance, S.STARTED, tags={MAX_RUNTIME_SECONDS_TAG: "10"}, started=T0 - 10)
    with workspace_context(instance) as ctx:
        assert monitor_pass(instance, ctx) == []
    for run in runs:
        assert status_of(instance, run.run_id) == S.FAILURE
        log = events(instance, run.run_id)
        assert (
            DagsterEventType.RUN_CANCELING.value,
            "Canceling due to exceeding maximum runtime of 10 seconds.",
        ) in log
        assert log[-1] == (
            DagsterEventType.RUN_FAILURE.value,
            "Exceeded maximum runtime of 10 seconds.",
        )
        assert tags_of(instance, run.run_id)[TERMINATED_TAG] == "true"
        assert tags_of(instance, run.run_id)[c.REASON_TAG] == c.REASON_MAX_RUNTIME
    assert status_of(instance, under.run_id) == S.STARTED


def test_global_max_runtime_and_duration_tags(make_instance, workspace_context):
    with make_instance(run_monitoring={"max_runtime_seconds": 100}) as instance:
        by_default = make_run(instance, S.STARTED, started=T0 - 101)
        by_duration = make_run(
            instance, S.STARTED, tags={MAX_RUNTIME_SECONDS_TAG: "PT1M"}, started=T0 - 61
        )
        alias = make_run(
            instance, S.STARTED, tags={"dagster/max_runtime_seconds": "1h"}, started=T0 - 101
        )
        with workspace_context(instance) as ctx:
            monitor_pass(instance, ctx)
        assert status_of(instance, by_default.run_id) == S.FAILURE
        assert status_of(instance, by_duration.run_id) == S.FAILURE
        assert "Exceeded maximum runtime of 60 seconds." in messages(instance, by_duration.run_id)
        assert status_of(instance, alias.run_id) == S.STARTED


def test_max_runtime_fails_the_run_even_if_terminate_fails_or_raises(instance, workspace_context):
    refused = make_run(
        instance,
        S.STARTED,
        tags={MAX_RUNTIME_SECONDS_TAG: "5", TERMINATE_TAG: "false"},
        started=T0 - 6,
    )
    raised = make_run(
        instance,
        S.STARTED,
        tags={MAX_RUNTIME_SECONDS_TAG: "5", TERMINATE_TAG: "raise"},
        started=T0 - 6,
    )
    with workspace_context(instance) as ctx:
        assert monitor_pass(instance, ctx) == []
    for run in (refused, raised):
        assert status_of(instance, run.run_id) == S.FAILURE
        assert messages(instance, run.run_id)[-1] == c.FORCE_FAILED_MESSAGE
    assert c.TERMINATE_EXCEPTION_MESSAGE in messages(instance, raised.run_id)
    assert c.TERMINATE_EXCEPTION_MESSAGE not in messages(instance, refused.run_id)


def test_bad_max_runtime_tag_warns_once_on_the_run_and_the_default_applies(
    make_instance, workspace_context
):
    with make_instance(run_monitoring={"max_runtime_seconds": 100}) as instance:
        run = make_run(
            instance, S.STARTED, tags={MAX_RUNTIME_SECONDS_TAG: "10 minutes"}, started=T0 - 50
        )
        expected = c.invalid_tag_message(MAX_RUNTIME_SECONDS_TAG, "10 minutes", 100)
        with workspace_context(instance) as ctx:
            monitor_pass(instance, ctx, now=T0)
            monitor_pass(instance, ctx, now=T0 + 10)
            assert messages(instance, run.run_id).count(expected) == 1
            warning = next(e for e in instance.all_logs(run.run_id) if e.message == expected)
            assert warning.level == 30  # logging.WARNING: shown as a warning in the UI
            assert status_of(instance, run.run_id) == S.STARTED
            monitor_pass(instance, ctx, now=T0 + 51)  # 101 s after start: the default applies
        assert status_of(instance, run.run_id) == S.FAILURE
        assert messages(instance, run.run_id)[-1] == "Exceeded maximum runtime of 100 seconds."


# --- crashed workers ---------------------------------------------------------------------


def test_crashed_worker_is_resumed(instance, workspace_context):
    run = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"})
    with workspace_context(instance) as ctx:
        assert monitor_pass(instance, ctx) == []
    assert status_of(instance, run.run_id) == S.STARTED
    log = messages(instance, run.run_id)
    assert log[-2:] == [
        f"Detected run worker status FAILED: 'worker is failed'. Resuming run {run.run_id}"
        " with a new worker.",
        c.RESUME_RUN_LOG_MESSAGE,
    ]
    assert tags_of(instance, run.run_id)[HEALTH_TAG] == "RUNNING"  # the new worker


def test_worker_that_keeps_dying_is_resumed_max_attempts_times_then_failed(
    make_instance, workspace_context
):
    with make_instance(run_monitoring={"max_resume_run_attempts": 2}) as instance:
        run = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED", AFTER_RESUME_TAG: "FAILED"})
        with workspace_context(instance) as ctx:
            for i in range(4):
                assert monitor_pass(instance, ctx, now=T0 + i) == []
        assert status_of(instance, run.run_id) == S.FAILURE
        assert len(resume_events(instance, run.run_id)) == 2
        assert messages(instance, run.run_id)[-1] == (
            f"Detected run worker status FAILED: 'worker is failed'. Marking run {run.run_id} as"
            " failed, because it has surpassed the configured maximum attempts to resume the run:"
            " 2.\nscripted worker debug info (container logs: True)"
        )
        assert tags_of(instance, run.run_id)[c.REASON_TAG] == c.REASON_WORKER_CRASH


def test_documented_default_of_three_resumes(instance, workspace_context):
    assert instance.run_monitoring_max_resume_run_attempts == 3
    run = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED", AFTER_RESUME_TAG: "FAILED"})
    with workspace_context(instance) as ctx:
        for i in range(5):
            monitor_pass(instance, ctx, now=T0 + i)
    assert len(resume_events(instance, run.run_id)) == 3
    assert status_of(instance, run.run_id) == S.FAILURE


def test_zero_resume_attempts_never_resumes(make_instance, workspace_context):
    with make_instance(run_monitoring={"max_resume_run_attempts": 0}) as instance:
        run = make_run(instance, S.STARTED, tags={HEALTH_TAG: "NOT_FOUND"})
        with workspace_context(instance) as ctx:
            monitor_pass(instance, ctx)
        assert resume_events(instance, run.run_id) == []
        assert status_of(instance, run.run_id) == S.FAILURE
        assert messages(instance, run.run_id)[-1] == (
            f"Detected run worker status NOT_FOUND: 'worker is not_found'. Marking run {run.run_id}"
            " as failed."
        )


def test_unknown_health_is_not_a_crash_until_the_grace_period_ends(
    make_instance, workspace_context
):
    with make_instance(run_monitoring={"worker_unknown_grace_seconds": 60}) as instance:
        unknown = make_run(instance, S.STARTED, tags={HEALTH_TAG: "UNKNOWN"})
        daemon = RunMonitorDaemon.from_instance(instance)
        with workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx, now=T0, daemon=daemon) == []
            assert monitor_pass(instance, ctx, now=T0 + 59, daemon=daemon) == []
            assert resume_events(instance, unknown.run_id) == []
            assert status_of(instance, unknown.run_id) == S.STARTED
            monitor_pass(instance, ctx, now=T0 + 60, daemon=daemon)
        assert len(resume_events(instance, unknown.run_id)) == 1


def test_a_health_check_that_raises_is_no_evidence_of_a_crash(make_instance, workspace_context):
    """An API error (the cluster's API down, say) is retried every pass and reported in the
    heartbeat, however long it lasts; the run is never resumed or failed for it."""
    with make_instance(run_monitoring={"worker_unknown_grace_seconds": 60}) as instance:
        api_error = make_run(instance, S.STARTED, tags={HEALTH_RAISE_TAG: "1"})
        daemon = RunMonitorDaemon.from_instance(instance)
        with workspace_context(instance) as ctx:
            for later in (0, 59, 60, 600):
                (error,) = monitor_pass(instance, ctx, now=T0 + later, daemon=daemon)
                assert "1 worker health check(s) had no answer" in error.message
                assert "Health check raised ConnectionError" in error.message
        assert resume_events(instance, api_error.run_id) == []
        assert status_of(instance, api_error.run_id) == S.STARTED


def test_health_recovering_resets_the_grace_period(make_instance, workspace_context):
    with make_instance(run_monitoring={"worker_unknown_grace_seconds": 60}) as instance:
        run = make_run(instance, S.STARTED, tags={HEALTH_TAG: "UNKNOWN"})
        daemon = RunMonitorDaemon.from_instance(instance)
        with workspace_context(instance) as ctx:
            monitor_pass(instance, ctx, now=T0, daemon=daemon)
            instance.add_run_tags(run.run_id, {HEALTH_TAG: "RUNNING"})
            monitor_pass(instance, ctx, now=T0 + 30, daemon=daemon)
            instance.add_run_tags(run.run_id, {HEALTH_TAG: "UNKNOWN"})
            monitor_pass(instance, ctx, now=T0 + 61, daemon=daemon)
            assert resume_events(instance, run.run_id) == []
            monitor_pass(instance, ctx, now=T0 + 121, daemon=daemon)
        assert len(resume_events(instance, run.run_id)) == 1


def test_a_run_the_user_terminated_is_never_resumed(instance, workspace_context):
    run = make_run(instance, S.CANCELING, canceling=T0 - 5, tags={HEALTH_TAG: "FAILED"})
    with workspace_context(instance) as ctx:
        monitor_pass(instance, ctx)
        monitor_pass(instance, ctx, now=T0 + 180)
    assert resume_events(instance, run.run_id) == []
    assert status_of(instance, run.run_id) == S.CANCELED


def test_no_resume_when_the_user_terminates_during_the_pass(instance, workspace_context):
    """The pass saw STARTED with a dead worker; the user pressed Terminate before it acted."""
    run = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"})
    instance.report_run_canceling(run)
    with workspace_context(instance) as ctx:
        actions = [ResumeRun(1, "resume")]
        apply_actions(instance, run, actions, ctx.create_request_context, logging.getLogger())
    assert resume_events(instance, run.run_id) == []
    assert status_of(instance, run.run_id) == S.CANCELING


# --- isolation ---------------------------------------------------------------------------


def test_an_error_on_one_run_is_reported_and_the_others_are_handled(
    instance, workspace_context, caplog
):
    broken = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED", RESUME_RAISE_TAG: "1"})
    fine = make_run(instance, S.STARTING, launched=T0 - 500)
    with workspace_context(instance) as ctx, caplog.at_level(logging.ERROR):
        errors = monitor_pass(instance, ctx)
    assert len(errors) == 1
    assert "could not start a new worker" in errors[0].to_string()
    # the daemon's log names the error, with its traceback (the soak found "NoneType: None")
    [logged] = [r for r in caplog.records if r.getMessage().startswith("Hit error")]
    assert logged.exc_info is not None and "could not start a new worker" in str(logged.exc_info[1])
    assert status_of(instance, fine.run_id) == S.FAILURE
    assert (
        status_of(instance, broken.run_id) == S.FAILURE
    )  # resume_run fails a run it cannot resume


def test_a_hanging_health_check_does_not_hold_up_the_others(make_instance, workspace_context):
    with make_instance(run_monitoring={"health_check_timeout_seconds": 1}) as instance:
        hanging = make_run(instance, S.STARTED, tags={HEALTH_SLEEP_TAG: "4"})
        crashed = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"})
        with workspace_context(instance) as ctx:
            (error,) = monitor_pass(instance, ctx)
        assert "Health check did not answer within 1 seconds" in error.message
        assert len(resume_events(instance, crashed.run_id)) == 1
        assert status_of(instance, hanging.run_id) == S.STARTED
        assert resume_events(instance, hanging.run_id) == []


def test_finished_runs_are_not_touched(instance, workspace_context):
    done = make_run(instance, S.STARTED, started=T0 - 10**5)
    with at(T0 - 10**4):
        report(instance, done, DagsterEventType.RUN_SUCCESS)
    with workspace_context(instance) as ctx:
        assert monitor_pass(instance, ctx) == []
    assert status_of(instance, done.run_id) == S.SUCCESS


def test_concurrency_slots_of_finished_runs_are_freed_like_the_builtin_daemon(
    make_instance, workspace_context
):
    with make_instance(run_monitoring={"free_slots_after_run_end_seconds": 60}) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("db", 2)
        old = make_run(instance, S.STARTED, started=T0 - 1000)
        recent = make_run(instance, S.STARTED, started=T0 - 1000)
        for run in (old, recent):
            storage.claim_concurrency_slot("db", run.run_id, "step")
        with at(T0 - 500):
            report(instance, old, DagsterEventType.RUN_FAILURE)
        with at(T0 - 10):
            report(instance, recent, DagsterEventType.RUN_FAILURE)
        daemon = RunMonitorDaemon.from_instance(instance)
        with workspace_context(instance) as ctx, at(T0):
            list(daemon.run_iteration(ctx))
        assert storage.get_concurrency_run_ids() == {recent.run_id}


def test_crash_checks_between_full_passes_only_touch_dead_workers(instance, workspace_context):
    due_to_time_out = make_run(instance, S.STARTING, launched=T0 - 500)
    crashed = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"})
    daemon = RunMonitorDaemon.from_instance(instance)
    with workspace_context(instance) as ctx, at(T0):
        assert [e for e in daemon.monitor_runs(ctx, crashes_only=True) if e] == []
    assert status_of(instance, due_to_time_out.run_id) == S.STARTING  # left for the full pass
    assert len(resume_events(instance, crashed.run_id)) == 1


def test_local_process_launchers_get_frequent_crash_checks():
    launcher = {"module": "dagster_run_monitor", "class": "ProcessRunLauncher"}
    with monitor_instance(launcher=launcher) as instance:
        assert RunMonitorDaemon.from_instance(instance).interval_seconds == 2
    with monitor_instance() as instance:  # a remote launcher: only the full passes
        assert RunMonitorDaemon.from_instance(instance).interval_seconds == 120


def test_hung_checks_on_every_thread_do_not_block_the_pass(make_instance):
    """One thread, hung on the newest run (checked first) far longer than the test may last:
    the older run's check cannot start, is UNKNOWN, and the pass returns."""
    settings = {"health_check_threads": 1, "health_check_timeout_seconds": 1}
    with make_instance(run_monitoring=settings) as instance:
        waiting = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"})
        hung = make_run(instance, S.STARTED, tags={HEALTH_SLEEP_TAG: "3600"})
        facts = observe(instance, read_settings(instance), T0, {})
        health = {f.run_id: f.health for f in facts}
        assert health[hung.run_id] == Health(
            "UNKNOWN", "Health check did not answer within 1 seconds", answered=False
        )
        assert health[waiting.run_id] == Health(
            "UNKNOWN", "Health check could not start: every check thread was busy", answered=False
        )


def test_two_daemons_racing_act_once_per_cause(make_instance, workspace_context):
    """Two daemons' passes at the same moment, in two threads: each crashed run is resumed
    once, each timed-out run failed once, each warning written once."""
    config = {"max_runtime_seconds": 100, "warn_after_fraction": 0.5}
    with make_instance(run_monitoring=config) as instance:
        crashed = [make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"}) for _ in range(8)]
        late = [make_run(instance, S.STARTING, launched=T0 - 500) for _ in range(4)]
        warned = [make_run(instance, S.STARTED, started=T0 - 60) for _ in range(4)]
        errors: list = []
        daemons = [RunMonitorDaemon.from_instance(instance) for _ in range(2)]

        def one_pass(daemon: RunMonitorDaemon) -> None:
            errors.extend(e for e in daemon.monitor_runs(ctx) if e is not None)

        # One frozen clock for both threads: freezing in each would race on the patch.
        with workspace_context(instance) as ctx, at(T0):
            passes = [threading.Thread(target=one_pass, args=(daemon,)) for daemon in daemons]
            for thread in passes:
                thread.start()
            for thread in passes:
                thread.join(120)
        assert errors == []
        for run in crashed:
            assert len(resume_events(instance, run.run_id)) == 1
        for run in late:
            failures = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
            assert status_of(instance, run.run_id) == S.FAILURE and len(failures) == 1
        for run in warned:
            warning = "Run has used 50% of its max runtime (60 of 100 seconds)."
            assert messages(instance, run.run_id).count(warning) == 1


def test_a_daemon_rereads_only_the_runs_that_changed(instance):
    reader = RunReader()
    changed, finished, same = (make_run(instance, S.STARTED) for _ in range(3))
    first = {r.dagster_run.run_id: r for r in reader.read(instance, MONITORED_STATUSES)}
    instance.add_run_tags(changed.run_id, {"team": "data"})
    report(instance, finished, DagsterEventType.RUN_SUCCESS)
    second = {r.dagster_run.run_id: r for r in reader.read(instance, MONITORED_STATUSES)}
    assert second[changed.run_id].dagster_run.tags["team"] == "data"
    assert finished.run_id not in second
    assert second[same.run_id] is first[same.run_id]  # not read again


@pytest.mark.postgres
def test_the_daemon_reuses_postgres_connections(postgres_database, workspace_context):
    """Dagster opens a server connection per query outside the webserver; the daemon keeps a
    pool of ``storage_pool_size`` per storage (0: Dagster's behaviour)."""

    def connections_for_twelve_resumes(pool_size: int) -> int:
        config = {"storage_pool_size": pool_size}
        with monitor_instance("postgres", config) as instance, workspace_context(instance) as ctx:
            daemon = RunMonitorDaemon.from_instance(instance)
            monitor_pass(instance, ctx, daemon=daemon)  # the first pass sets up the pool
            tags = {HEALTH_TAG: "FAILED"}
            crashed = [make_run(instance, S.STARTED, tags=tags) for _ in range(12)]
            connects = []
            for storage in (instance.run_storage, instance.event_log_storage):
                sa.event.listen(storage._engine, "connect", lambda *_: connects.append(1))
            assert monitor_pass(instance, ctx, daemon=daemon) == []
            for run in crashed:
                assert len(resume_events(instance, run.run_id)) == 1
            return len(connects)

    unpooled, pooled = connections_for_twelve_resumes(0), connections_for_twelve_resumes(4)
    assert unpooled > 12 * 4  # several new connections per resume
    assert pooled < unpooled / 3


def test_the_daemon_asks_dagsters_schema_checks_once(instance, workspace_context):
    """Dagster reflects the schema on every run read; the daemon keeps a True answer (a column,
    once there, stays) and asks a False one again (a migration under a running daemon)."""
    daemon = RunMonitorDaemon.from_instance(instance)
    with workspace_context(instance) as ctx:
        monitor_pass(instance, ctx, daemon=daemon)  # the first pass prepares the storages
        crashed = [make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"}) for _ in range(3)]
        reflections: list[str] = []

        def record(conn, cursor, statement: str, *args) -> None:
            if "pg_attribute" in statement or "table_xinfo" in statement.lower():  # PG, SQLite
                reflections.append(statement)

        sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
        try:
            assert monitor_pass(instance, ctx, daemon=daemon) == []
        finally:
            sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)
    for run in crashed:
        assert len(resume_events(instance, run.run_id)) == 1
    assert reflections == []
    answers = iter([False, True, False])
    storage = type("Storage", (), {"has_backfill_id_column": lambda self: next(answers)})()
    remember_schema_checks(type("Instance", (), {"run_storage": storage})())
    assert [storage.has_backfill_id_column() for _ in range(3)] == [False, True, True]


def test_the_daemon_needs_no_postgres_package_for_other_storages(workspace_context, monkeypatch):
    """dagster-postgres is an optional extra: without it (``import dagster_postgres`` fails) a
    daemon on SQLite starts and passes without an error in its heartbeat."""
    import sys

    for module in [m for m in sys.modules if m.startswith("dagster_postgres")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "dagster_postgres", None)  # import raises ImportError
    with monitor_instance("sqlite") as instance, workspace_context(instance) as ctx:
        run = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"})
        assert monitor_pass(instance, ctx) == []
        assert resume_events(instance, run.run_id) == [c.RESUME_RUN_LOG_MESSAGE]
