"""The breaker, in the daemon's passes: beats written by the watcher's own code, judged on a
moved clock. 20 runs that lose their beats at once are not acted on (one alert, the gauge
reads 1); when their beats come back nothing is acted on late; one lost run among many
beating ones is."""

import json

from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.heartbeats import beat_key, stack_key
from dagster_run_monitor.core.model import Alert
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor.integration.internals import run_storage_database
from dagster_run_monitor.metrics import Metrics
from dagster_run_monitor.worker.watcher import Watcher
from dagster_run_monitor_tests.support.runs import T0, make_run, messages, monitor_pass, status_of

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
