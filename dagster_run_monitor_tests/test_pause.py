"""The pause: stored in the instance, obeyed by every daemon, observed but not acted on, over
by itself; the first pass after it judges every run afresh, once."""

import pytest
from click.testing import CliRunner
from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRunStatus as S

import dagster_run_monitor
from dagster_run_monitor.cli import main as cli
from dagster_run_monitor.core.pause import Pause, parse_pause
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor_tests.support.runs import (
    T0,
    at,
    make_run,
    messages,
    monitor_pass,
    status_of,
)
from dagster_run_monitor_tests.support.subprocesses import free_port

OVER = "Exceeded maximum runtime of 600 seconds."


def test_a_pause_is_stored_whole_and_ends_by_itself():
    paused = Pause("ops@host-1", T0, T0 + 1800, "db migration")
    assert parse_pause(paused.to_json()) == paused
    assert paused.active(T0 + 1799) and not paused.active(T0 + 1800)
    assert parse_pause("") is None and parse_pause("{not json") is None
    assert parse_pause('{"by": "x"}') is None  # not a pause: none in force
    assert paused.describe(T0 + 60).endswith("(29 min left): db migration")


def test_two_daemons_hold_during_the_pause_and_one_acts_once_after_it(
    make_instance, workspace_context
):
    """A run passes its max runtime while every daemon is paused; when the pause has run out
    (nobody unpaused), the first pass fails it, and the other daemon finds it done."""
    with make_instance(run_monitoring={"max_runtime_seconds": 600}) as instance:
        run = make_run(instance, S.STARTED, started=T0 - 500)
        with at(T0):
            dagster_run_monitor.pause(instance, "30m", "db migration", by="ops@host-1")
        other = DagsterInstance.from_ref(instance.get_ref())  # a second daemon's instance
        with workspace_context(instance) as first, workspace_context(other) as second:
            daemons = [
                (owner, RunMonitorDaemon.from_instance(owner), context)
                for owner, context in ((instance, first), (other, second))
            ]
            for now in (T0 + 200, T0 + 1700):  # past the max runtime from T0 + 100
                for owner, daemon, context in daemons:
                    errors = [e.message for e in monitor_pass(owner, context, now, daemon)]
                    (held,) = [e for e in errors if e.startswith("Run monitor paused")]
                    assert "paused by ops@host-1" in held and ": db migration." in held
                    assert "Observing only: 1 action(s) held this pass" in held
            assert status_of(instance, run.run_id) == S.STARTED
            assert OVER not in messages(instance, run.run_id)
            for owner, daemon, context in daemons:
                assert monitor_pass(owner, context, T0 + 1801, daemon) == []
        other.dispose()
        assert status_of(instance, run.run_id) == S.FAILURE
        assert messages(instance, run.run_id).count(OVER) == 1


def test_unpause_ends_it_and_the_cli_shows_who_why_and_until_when(make_instance, workspace_context):
    config = {"max_runtime_seconds": 600, "metrics": {"port": free_port()}}
    with make_instance(run_monitoring=config) as instance:
        run = make_run(instance, S.STARTED, started=T0 - 700)
        runner = CliRunner()
        daemon = RunMonitorDaemon.from_instance(instance)
        paused = lambda: daemon.metrics.registry.get_sample_value(  # noqa: E731
            "dagster_run_monitor_paused"
        )
        with at(T0):
            set_it = runner.invoke(cli, ["pause", "--for", "2h", "--reason", "cluster upgrade"])
            assert set_it.exit_code == 0, set_it.output
            shown = runner.invoke(cli, ["status"])
        assert shown.exit_code == 0, shown.output
        first = shown.output.splitlines()[0]
        assert first.startswith("The monitor is paused by ") and "(120 min left)" in first
        assert " at 2027-01-15T08:00:00+00:00 until 2027-01-15T10:00:00+00:00 " in first
        assert first.endswith(": cluster upgrade: it observes and acts on nothing.")
        with workspace_context(instance) as ctx:
            monitor_pass(instance, ctx, T0 + 10, daemon)
            assert status_of(instance, run.run_id) == S.STARTED and paused() == 1
            ended = runner.invoke(cli, ["unpause"])
            assert ended.output == "Pause ended.\n"
            assert monitor_pass(instance, ctx, T0 + 20, daemon) == [] and paused() == 0
        assert status_of(instance, run.run_id) == S.FAILURE
        assert runner.invoke(cli, ["unpause"]).output == "The monitor was not paused.\n"
        assert dagster_run_monitor.current_pause(instance) is None


@pytest.mark.parametrize("duration", ["soon", "0", "-5m"])
def test_a_bad_duration_is_refused_naming_the_option(make_instance, duration):
    with make_instance() as instance:
        refused = CliRunner().invoke(cli, ["pause", "--for", duration])
        assert refused.exit_code == 2 and "--for" in refused.output
        assert dagster_run_monitor.current_pause(instance) is None
