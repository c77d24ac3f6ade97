"""The tags and events written for a chunk of resumes at once read back exactly as Dagster's
one-run-at-a-time API would have written them, on SQLite and on PostgreSQL."""

import logging

import sqlalchemy as sa
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._core.storage.dagster_run import RunsFilter

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor.storage.bulk_writes import (
    add_tags_while,
    write_engine_events,
    write_tags,
)
from dagster_run_monitor_tests.support.launchers import HEALTH_TAG
from dagster_run_monitor_tests.support.runs import (
    events,
    make_run,
    messages,
    monitor_pass,
    tags_of,
)


def records(instance, runs):
    return {
        r.dagster_run.run_id: r
        for r in instance.get_run_records(RunsFilter(run_ids=[run.run_id for run in runs]))
    }


def test_tags_written_for_many_runs_read_back_as_add_run_tags_writes_them(instance):
    runs = [make_run(instance, S.STARTED, tags={"team": "data"}) for _ in range(3)]
    before = records(instance, runs)
    written = write_tags(
        instance,
        [
            (before[runs[0].run_id], {c.CRASH_CAUSE_TAG: "oom_killed"}),
            (before[runs[1].run_id], {c.CRASH_CAUSE_TAG: "signal", "team": "ml"}),
            (before[runs[2].run_id], {}),  # nothing to write
        ],
    )
    after = records(instance, runs)
    assert tags_of(instance, runs[0].run_id) == {"team": "data", c.CRASH_CAUSE_TAG: "oom_killed"}
    assert tags_of(instance, runs[1].run_id) == {"team": "ml", c.CRASH_CAUSE_TAG: "signal"}
    assert tags_of(instance, runs[2].run_id) == {"team": "data"}
    for run in runs:  # what was written is what is stored
        assert written[run.run_id] == after[run.run_id].dagster_run
    # the tag rows, which run filters read, match the bodies
    assert {r.run_id for r in instance.get_runs(RunsFilter(tags={"team": "ml"}))} == {
        runs[1].run_id
    }
    assert {r.run_id for r in instance.get_runs(RunsFilter(tags={"team": "data"}))} == {
        runs[0].run_id,
        runs[2].run_id,
    }
    assert {
        r.run_id for r in instance.get_runs(RunsFilter(tags={c.CRASH_CAUSE_TAG: "oom_killed"}))
    } == {runs[0].run_id}
    # a written row's update time changes (the daemon re-reads changed runs by it)
    assert after[runs[0].run_id].update_timestamp != before[runs[0].run_id].update_timestamp
    assert after[runs[2].run_id].update_timestamp == before[runs[2].run_id].update_timestamp


def test_a_run_written_since_it_was_read_keeps_that_write(instance):
    """A user (or a run worker) adds a tag between the daemon's read and its write: the daemon's
    write neither loses that tag nor is lost itself."""
    runs = [make_run(instance, S.STARTED) for _ in range(2)]
    seen = records(instance, runs)
    instance.add_run_tags(runs[1].run_id, {"note": "added by a user"})
    written = write_tags(
        instance, [(seen[run.run_id], {c.CRASH_CAUSE_TAG: "evicted"}) for run in runs]
    )
    assert tags_of(instance, runs[0].run_id) == {c.CRASH_CAUSE_TAG: "evicted"}
    assert tags_of(instance, runs[1].run_id) == {
        "note": "added by a user",
        c.CRASH_CAUSE_TAG: "evicted",
    }
    assert written[runs[1].run_id].tags == tags_of(instance, runs[1].run_id)
    assert {r.run_id for r in instance.get_runs(RunsFilter(tags={"note": "added by a user"}))} == {
        runs[1].run_id
    }


def test_a_dead_workers_exit_is_never_written_over_its_successors_tags(instance):
    """ProcessRunLauncher records a worker's exit while the daemon may be resuming the run
    (a stalled run: its worker killed, a new one started at once). Dagster's add_run_tags
    writes back the body it read, so a late exit write put the dead worker's pid back and the
    next pass failed the resumed run for the dead worker's SIGKILL (seen in CI)."""
    run = make_run(instance, S.STARTED, tags={c.WORKER_PID_TAG: "100"})
    exit_of_100 = {c.WORKER_EXIT_TAG: "100:-9:"}

    def still_100(stored):
        return stored.tags.get(c.WORKER_PID_TAG) == "100"

    instance.add_run_tags(run.run_id, {c.WORKER_PID_TAG: "200"})  # the resumed worker
    assert not add_tags_while(instance, run.run_id, exit_of_100, still_100)
    assert tags_of(instance, run.run_id) == {c.WORKER_PID_TAG: "200"}


def test_a_write_between_the_read_and_the_write_is_kept_and_the_condition_read_again(instance):
    run = make_run(instance, S.STARTED, tags={c.WORKER_PID_TAG: "100"})
    looked = []

    def still_100_while_a_user_tags_the_run(stored):
        if not looked:  # between this read and the write: another writer
            instance.add_run_tags(run.run_id, {"team": "ml"})
        looked.append(stored.tags.get("team"))
        return stored.tags.get(c.WORKER_PID_TAG) == "100"

    exit_of_100 = {c.WORKER_EXIT_TAG: "100:-9:"}
    assert add_tags_while(instance, run.run_id, exit_of_100, still_100_while_a_user_tags_the_run)
    assert looked == [None, "ml"]  # the first write was refused, the run read again
    assert tags_of(instance, run.run_id) == {
        c.WORKER_PID_TAG: "100",
        "team": "ml",
        c.WORKER_EXIT_TAG: "100:-9:",
    }


def test_events_written_for_many_runs_read_back_in_order(instance):
    runs = [make_run(instance, S.STARTED) for _ in range(2)]
    before = {run.run_id: len(events(instance, run.run_id)) for run in runs}
    write_engine_events(
        instance,
        [(runs[0], "first"), (runs[1], "other run"), (runs[0], "second")],
    )
    assert events(instance, runs[0].run_id)[before[runs[0].run_id] :] == [
        ("ENGINE_EVENT", "first"),
        ("ENGINE_EVENT", "second"),
    ]
    assert events(instance, runs[1].run_id)[before[runs[1].run_id] :] == [
        ("ENGINE_EVENT", "other run")
    ]
    entry = instance.all_logs(runs[1].run_id)[-1]
    assert (entry.level, entry.job_name, entry.run_id) == (
        logging.INFO,
        runs[1].job_name,
        runs[1].run_id,
    )


def test_crashed_runs_resumed_in_chunks_get_each_event_once_in_dagsters_order(
    make_instance, workspace_context
):
    """Seven crashed runs, two action threads: four chunks. Every run: the cause tag, then
    "Detected ...", Dagster's resume event, the new worker (its health tag), once each."""
    with make_instance(run_monitoring={"action_threads": 2}) as instance:
        crashed = [make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"}) for _ in range(7)]
        with workspace_context(instance) as ctx:
            assert (
                monitor_pass(instance, ctx, daemon=RunMonitorDaemon.from_instance(instance)) == []
            )
        for run in crashed:
            detected, resumed = messages(instance, run.run_id)[-2:]
            assert detected.startswith("Detected run worker status FAILED")
            assert detected.endswith(f"Resuming run {run.run_id} with a new worker.")
            assert resumed == c.RESUME_RUN_LOG_MESSAGE
            assert tags_of(instance, run.run_id)[HEALTH_TAG] == "RUNNING"
            assert c.CRASH_CAUSE_TAG in tags_of(instance, run.run_id)


def test_a_chunk_whose_writes_fail_is_left_for_the_next_pass(make_instance, workspace_context):
    """The database refuses the chunk's writes: no worker is launched, the error is reported
    per run, and the next pass resumes the runs once."""
    with make_instance(run_monitoring={"action_threads": 4}) as instance:
        crashed = [make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"}) for _ in range(3)]
        daemon = RunMonitorDaemon.from_instance(instance)
        refuse = {"on": True}

        def refuse_updates(conn, cursor, statement, *args):
            if refuse["on"] and statement.lstrip().upper().startswith("UPDATE RUNS"):
                raise sa.exc.OperationalError(statement, {}, Exception("database is read-only"))

        sa.event.listen(sa.engine.Engine, "before_cursor_execute", refuse_updates)
        try:
            with workspace_context(instance) as ctx:
                errors = monitor_pass(instance, ctx, daemon=daemon)
                assert len(errors) == 3 and all("read-only" in e.to_string() for e in errors)
                for run in crashed:
                    assert c.RESUME_RUN_LOG_MESSAGE not in [
                        m for _, m in events(instance, run.run_id)
                    ]
                refuse["on"] = False
                assert monitor_pass(instance, ctx, daemon=daemon) == []
        finally:
            sa.event.remove(sa.engine.Engine, "before_cursor_execute", refuse_updates)
        for run in crashed:
            assert messages(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1
            assert tags_of(instance, run.run_id)[HEALTH_TAG] == "RUNNING"
