"""Heartbeats in the daemon's passes, beats written by the watcher's own code: the breaker (20
runs that lose their beats at once are not acted on, one alert, the gauge reads 1; when their
beats come back nothing is acted on late; one lost run among many beating ones is), a daemon
restarted mid-run, two daemons, and a worker host whose clock is off."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.heartbeats import beat_key, stack_key
from dagster_run_monitor.core.model import Alert
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor.integration.internals import run_storage_database
from dagster_run_monitor.metrics import Metrics
from dagster_run_monitor.storage.heartbeats import read_beats
from dagster_run_monitor.worker.beats import WATCHER
from dagster_run_monitor.worker.watcher import Watcher
from dagster_run_monitor_tests.support.runs import (
    T0,
    at,
    make_run,
    messages,
    monitor_pass,
    status_of,
)
from dagster_run_monitor_tests.support.subprocesses import wait_until

CALLED: list[Alert] = []
TIMEOUT = 180


def record_alert(alert: Alert) -> None:
    CALLED.append(alert)


def watchers(instance, runs) -> dict[str, Watcher]:
    """The watcher's writer for each run, as if each run had a worker (pid 4242 elsewhere)."""
    database, target = run_storage_database(instance)
    return {
        run.run_id: Watcher(
            {
                "database": database,
                "target": target,
                "key": beat_key(run.run_id),
                "stack_key": stack_key(run.run_id),
                "token": f"token{i}",
                "pid": 4242,
                "host": "worker-host",
                "interval": 30,
            }
        )
        for i, run in enumerate(runs)
    }


def beat(writers: dict[str, Watcher], run_ids) -> None:
    for run_id in run_ids:
        writers[run_id].sample = {"stacks": ["Thread MainThread:"], "hash": "a", "steps": []}
        writers[run_id].beat()


def gauge(daemon: RunMonitorDaemon) -> float:
    return daemon.metrics.registry.get_sample_value("dagster_run_monitor_breaker_open")


def test_many_runs_losing_their_beats_at_once_open_the_breaker(make_instance, workspace_context):
    CALLED.clear()
    config = {
        "max_resume_run_attempts": 0,
        "alerts": {"on": ["failed"], "callable": {"module": __name__, "function": "record_alert"}},
    }
    with make_instance(run_monitoring=config) as instance, workspace_context(instance) as ctx:
        runs = [make_run(instance, S.STARTED, started=T0 - 60) for _ in range(25)]
        ids = [r.run_id for r in runs]
        writers = watchers(instance, runs)
        daemon = RunMonitorDaemon.from_instance(instance)
        daemon.metrics = Metrics()
        beat(writers, ids)
        assert monitor_pass(instance, ctx, T0, daemon) == []
        assert gauge(daemon) == 0

        # 20 of 25 go silent at once: the breaker opens, no run is touched, one alert.
        beat(writers, ids[20:])
        errors = monitor_pass(instance, ctx, T0 + TIMEOUT, daemon)
        assert [e.message for e in errors][0].startswith("Breaker open: 20 of 25 checked runs")
        assert gauge(daemon) == 1
        beat(writers, ids[20:])
        monitor_pass(instance, ctx, T0 + TIMEOUT + 30, daemon)  # still open: no second alert
        assert [a.event for a in CALLED] == ["breaker"]
        assert all(status_of(instance, i) == S.STARTED for i in ids)

        # Their beats come back: closed, and nothing is acted on late.
        beat(writers, ids)
        assert monitor_pass(instance, ctx, T0 + TIMEOUT + 60, daemon) == []
        assert gauge(daemon) == 0
        assert all(status_of(instance, i) == S.STARTED for i in ids)

        # One run alone goes silent: it is lost, and failed.
        beat(writers, ids[1:])
        monitor_pass(instance, ctx, T0 + 2 * TIMEOUT + 60, daemon)
        beat(writers, ids[1:])
        assert monitor_pass(instance, ctx, T0 + 2 * TIMEOUT + 61, daemon) == []
        assert status_of(instance, ids[0]) == S.FAILURE
        assert all(status_of(instance, i) == S.STARTED for i in ids[1:])
        assert any(
            "no heartbeat from the run worker (host worker-host, pid 4242)" in m
            for m in messages(instance, ids[0])
        )
        assert [a.event for a in CALLED] == ["breaker", "failed"]
        assert CALLED[1].reason == c.REASON_WORKER_LOST
        stored = json.loads(
            instance.run_storage.get_cursor_values({beat_key(ids[0])})[beat_key(ids[0])].partition(
                "|"
            )[2]
        )
        assert "at" in stored  # the row is fenced, waiting for the worker to come back


def test_a_restarted_daemon_gives_every_run_the_full_timeout(make_instance, workspace_context):
    with make_instance(run_monitoring={"max_resume_run_attempts": 0}) as instance:
        run = make_run(instance, S.STARTED, started=T0 - 60)
        writers = watchers(instance, [run])
        beat(writers, [run.run_id])
        with workspace_context(instance) as ctx:
            monitor_pass(instance, ctx, T0, RunMonitorDaemon.from_instance(instance))
            # The worker goes silent at T0; the daemon restarts at T0 + 150.
            restarted = RunMonitorDaemon.from_instance(instance)
            monitor_pass(instance, ctx, T0 + 150, restarted)
            monitor_pass(instance, ctx, T0 + 150 + TIMEOUT - 1, restarted)
            assert status_of(instance, run.run_id) == S.STARTED  # no verdict before its timeout
            monitor_pass(instance, ctx, T0 + 150 + TIMEOUT, restarted)
            assert status_of(instance, run.run_id) == S.FAILURE


def test_two_daemons_act_once_on_a_lost_worker(make_instance, workspace_context):
    """Both reach the same verdict at the same time; the claims let one act: one resume."""
    from concurrent.futures import ThreadPoolExecutor

    with make_instance(run_monitoring={"max_resume_run_attempts": 2}) as instance:
        run = make_run(instance, S.STARTED, started=T0 - 60)
        writers = watchers(instance, [run])
        beat(writers, [run.run_id])
        daemons = [RunMonitorDaemon.from_instance(instance) for _ in range(2)]
        with workspace_context(instance) as ctx:
            for daemon in daemons:
                monitor_pass(instance, ctx, T0, daemon)
            with at(T0 + TIMEOUT), ThreadPoolExecutor(2) as pool:
                passes = [pool.submit(lambda d=d: list(d.monitor_runs(ctx))) for d in daemons]
                for done in passes:
                    done.result()
        log = messages(instance, run.run_id)
        assert log.count(c.RESUME_RUN_LOG_MESSAGE) == 1
        assert (
            sum(m.startswith("Detected run worker status FAILED: 'no heartbeat") for m in log) == 1
        )


FAKETIME = shutil.which("faketime")


@pytest.mark.slow  # real time: twice the timeout beating, then the timeout silent
@pytest.mark.parametrize("offset", ["+10m", "-10m"])
def test_a_worker_host_whose_clock_is_off_is_neither_lost_nor_kept_alive(
    make_instance, workspace_context, offset
):
    """The watcher under Debian's faketime, its clock 10 minutes off: beating, it is alive;
    silent, it is lost after the timeout, on the daemon's clock."""
    if FAKETIME is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the clock-skew test, but faketime is missing")
        pytest.skip("faketime is missing (scripts/faketime installs Debian's)")
    beats = {"worker_heartbeats": {"interval_seconds": 1, "timeout_seconds": 4}}
    with make_instance(run_monitoring={"max_resume_run_attempts": 0, **beats}) as instance:
        run = make_run(instance, S.STARTED, started=time.time() - 60)
        database, target = run_storage_database(instance)
        settings = {
            "database": database,
            "target": target,
            "key": beat_key(run.run_id),
            "stack_key": stack_key(run.run_id),
            "token": "skewed",
            "host": "skewed-host",
            "interval": 1,
        }
        skewed = subprocess.Popen(  # faketime runs the watcher as its child: the "worker"
            [FAKETIME, "-f", offset, sys.executable, WATCHER],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        settings["pid"] = skewed.pid
        skewed.stdin.write((json.dumps(settings) + "\n").encode())
        skewed.stdin.flush()
        daemon = RunMonitorDaemon.from_instance(instance)
        with workspace_context(instance) as ctx:
            until = time.monotonic() + 8  # twice the timeout, beating
            while time.monotonic() < until:
                assert monitor_pass(instance, ctx, time.time(), daemon) == []
                time.sleep(0.5)
            assert status_of(instance, run.run_id) == S.STARTED
            assert any(b.host == "skewed-host" for b in read_beats(instance))
            os.killpg(skewed.pid, signal.SIGKILL)  # the host goes: no beat, no last word
            skewed.wait(10)
            silent_at = time.time()
            wait_until(
                lambda: (
                    monitor_pass(instance, ctx, time.time(), daemon) == []
                    and status_of(instance, run.run_id) == S.FAILURE
                ),
                20,
                "the lost verdict",
                interval=0.5,
            )
        assert time.time() - silent_at >= 4 - 1  # not before the timeout (less a beat)


def test_a_worker_the_launcher_cannot_stop_is_fenced_and_the_stack_is_on_the_first_event(
    make_instance, workspace_context
):
    """A run over its max runtime whose launcher's terminate raises (a code server killed under
    DefaultRunLauncher): it is forcibly failed, its worker's row is fenced, so its watcher stops
    it at its next beat, and its stack is on the canceling event, the first one written."""
    from dagster_run_monitor.core.heartbeats import FENCED
    from dagster_run_monitor_tests.support.launchers import TERMINATE_TAG

    config = {"max_runtime_seconds": 100, "max_resume_run_attempts": 0}
    with make_instance(run_monitoring=config) as instance, workspace_context(instance) as ctx:
        run = make_run(instance, S.STARTED, started=T0 - 200, tags={TERMINATE_TAG: "raise"})
        writers = watchers(instance, [run])
        writers[run.run_id].sample = {
            "stacks": ["Thread MainThread:", '  File "etl.py", line 42, in wait_for_partner_api'],
            "hash": "a",
            "steps": [],
        }
        writers[run.run_id].beat()
        daemon = RunMonitorDaemon.from_instance(instance)
        assert monitor_pass(instance, ctx, T0, daemon) == []
        assert status_of(instance, run.run_id) == S.FAILURE
        log = messages(instance, run.run_id)
        canceling = next(m for m in log if m.startswith("Canceling due to exceeding"))
        assert "in wait_for_partner_api" in canceling
        stored = instance.run_storage.get_cursor_values({beat_key(run.run_id)})
        # fenced: the worker's watcher, at its next beat, finds the row not its own and stops
        # it (test_worker_beats.py kills a real worker that way)
        assert stored[beat_key(run.run_id)].startswith(f"{FENCED}|")
