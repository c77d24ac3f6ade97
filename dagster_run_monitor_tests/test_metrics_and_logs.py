"""What operators see outside the UI: the Prometheus endpoint and one log line per action."""

import json
import logging

from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._utils.log import get_structlog_json_formatter

from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor_tests.support.launchers import HEALTH_RAISE_TAG, HEALTH_TAG
from dagster_run_monitor_tests.support.metrics import scrape
from dagster_run_monitor_tests.support.runs import T0, make_run, monitor_pass
from dagster_run_monitor_tests.support.subprocesses import free_port


def test_the_metrics_endpoint_counts_a_known_pass(make_instance, workspace_context):
    port = free_port()
    config = {
        "metrics": {"port": port},
        "max_runtime_seconds": 100,
        "warn_after_fraction": 0.5,
    }
    with make_instance(run_monitoring=config) as instance:
        make_run(instance, S.STARTED, started=T0 - 10, tags={HEALTH_TAG: "FAILED"})  # resumed
        make_run(instance, S.STARTING, launched=T0 - 500)  # start timeout (and past 50%)
        make_run(instance, S.STARTED, started=T0 - 60)  # warned: 60 of 100 s
        make_run(instance, S.STARTED, started=T0 - 10, tags={HEALTH_RAISE_TAG: "1"})
        make_run(instance, S.QUEUED)
        daemon = RunMonitorDaemon.from_instance(instance)
        with workspace_context(instance) as ctx:
            errors = monitor_pass(instance, ctx, daemon=daemon)
        assert len(errors) == 1  # the health check that raised
        m = scrape(port)
    actions = "dagster_run_monitor_actions_total"
    crash = (("action", "resume"), ("cause", "unknown"), ("reason", "worker_crash"))
    assert m[(actions, crash)] == 1  # a launcher that does not say why: unknown
    assert m[(actions, (("action", "fail"), ("cause", ""), ("reason", "start_timeout")))] == 1
    warned = "run_monitor/warned/max_runtime_seconds"
    assert m[(actions, (("action", "notice"), ("cause", ""), ("reason", warned)))] == 1
    assert sum(v for (name, _), v in m.items() if name == actions) == 3
    crashes = "dagster_run_monitor_crashes_total"  # every cause from 0: rates count the first
    assert m[(crashes, (("cause", "unknown"),))] == 1
    assert m[(crashes, (("cause", "oom_killed"),))] == 0
    assert m[("dagster_run_monitor_runs", (("status", "STARTED"),))] == 3
    assert m[("dagster_run_monitor_runs", (("status", "STARTING"),))] == 1
    assert m[("dagster_run_monitor_runs", (("status", "QUEUED"),))] == 1
    assert m[("dagster_run_monitor_runs_over_warning_threshold", ())] == 2
    assert m[("dagster_run_monitor_health_check_duration_seconds_count", ())] == 4
    assert m[("dagster_run_monitor_health_check_errors_total", ())] == 1
    assert m[("dagster_run_monitor_pass_duration_seconds_count", (("kind", "full"),))] == 1


def test_workers_near_their_memory_limit_by_kind_both_always_set():
    from prometheus_client import generate_latest

    from dagster_run_monitor.metrics import Metrics

    metrics = Metrics()
    metrics.near_memory_limit({"step": 2})
    lines = generate_latest(metrics.registry).decode().splitlines()
    assert 'dagster_run_monitor_workers_near_memory_limit{worker="step"} 2.0' in lines
    assert 'dagster_run_monitor_workers_near_memory_limit{worker="run"} 0.0' in lines
    metrics.near_memory_limit({})  # the next full pass: none near
    lines = generate_latest(metrics.registry).decode().splitlines()
    assert 'dagster_run_monitor_workers_near_memory_limit{worker="step"} 0.0' in lines


def test_one_structured_log_line_per_action(make_instance, workspace_context, caplog):
    with make_instance(run_monitoring={"max_runtime_seconds": 100}) as instance:
        late = make_run(instance, S.STARTED, started=T0 - 130, job_name="etl")
        with workspace_context(instance) as ctx, caplog.at_level(logging.INFO):
            assert monitor_pass(instance, ctx) == []
    (record,) = [r for r in caplog.records if getattr(r, "action", None)]
    assert record.getMessage() == (
        f"Run {late.run_id} (etl): terminate_and_fail, reason max_runtime, limit 100, observed 130"
    )
    # What `dagster-daemon run --log-format json` prints for it (Dagster's own formatter).
    line = json.loads(get_structlog_json_formatter().format(record))
    assert {
        k: line[k] for k in ("run_id", "job_name", "action", "reason", "limit", "observed")
    } == {
        "run_id": late.run_id,
        "job_name": "etl",
        "action": "terminate_and_fail",
        "reason": "max_runtime",
        "limit": 100,
        "observed": 130.0,
    }


def test_a_bad_metrics_port_is_named_at_start_up(make_instance):
    from dagster import DagsterInvalidConfigError

    try:
        with make_instance(run_monitoring={"metrics": {"port": 70000}}):
            raise AssertionError("the instance started with metrics.port 70000")
    except DagsterInvalidConfigError as error:
        assert "run_monitoring.metrics.port" in str(error)
