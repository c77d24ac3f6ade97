"""Limits learned from each job's history: the pure rules (percentiles, precedence, min_runs,
min_seconds, opting out), then real passes on SQLite and PostgreSQL over backdated runs."""

import json

import pytest
from click.testing import CliRunner
from dagster import DagsterEvent, DagsterRunStatus
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.events import DagsterEventType, StepSuccessData
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._core.storage.tags import RESUME_RETRY_TAG

from dagster_run_monitor.cli import main as cli
from dagster_run_monitor.config.parse import settings_from_config
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.learned import LearnedLimits, Sample, history, learn, percentile
from dagster_run_monitor.core.limits import resolve_limits, with_history
from dagster_run_monitor.core.memory import K8S_CONFIG_TAG
from dagster_run_monitor.core.model import Alert, Notice, RunFacts, TerminateAndFail
from dagster_run_monitor.core.policy import decide
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor_tests.support.metrics import scrape
from dagster_run_monitor_tests.support.runs import (
    T0,
    at,
    make_run,
    messages,
    monitor_pass,
    report,
    status_of,
    tags_of,
)
from dagster_run_monitor_tests.support.subprocesses import free_port

NOW = 100_000.0
LEARN = {"min_runs": 10, "max_runtime_factor": 3}
P95_OF_30 = 600.0  # the p95 of the histories these tests build (``durations``)


def settings(learned=None, **config):
    return settings_from_config(
        {"enabled": True, "learned_limits": learned or LEARN, **config},
        can_check_health=True,
        can_resume=True,
    )


def durations(p95: float, count: int = 30) -> list[float]:
    """``count`` durations whose nearest-rank p95 is ``p95`` (the rest below it)."""
    return [p95 * 0.5] * (count - 2) + [p95, p95 * 2]  # rank ceil(.95 n) is p95 for n <= 39


def started_run(elapsed: float, tags=None, steps=None, job="etl", learned=None) -> RunFacts:
    config = settings(learned)
    past = history(job, durations(P95_OF_30), steps or {}, config.learned)
    return RunFacts(
        "r1",
        job,
        S.STARTED,
        NOW - elapsed - 10,
        NOW,
        tags=tags or {},
        started_at=NOW - elapsed,
        history=past,
    )


# --- pure -----------------------------------------------------------------------------


def test_percentiles_are_nearest_rank_values_some_run_really_took():
    values = list(range(1, 31))
    assert percentile(values, 95) == 29  # ceil(0.95 * 30) = 29th smallest
    assert percentile(values, 50) == 15
    assert percentile(values, 100) == 30
    assert percentile([7.0], 1) == 7.0
    assert percentile(durations(600.0), 95) == 600.0


def test_min_runs_and_min_seconds():
    config = LearnedLimits(min_runs=10, min_seconds=60)
    assert history("etl", [100.0] * 9, {}, config).runs is None  # nine runs: nothing learned
    found = history("etl", [100.0] * 10, {}, config).runs
    assert found == Sample(100.0, 10)
    assert learn(found, 3, config, "etl").seconds == 300
    assert learn(Sample(5.0, 10), 3, config, "etl").seconds == 60  # never below min_seconds
    assert learn(found, 0, config, "etl") is None  # factor 0: off
    assert history("etl", [1.0] * 50, {}, LearnedLimits(runs=30)).runs.count == 30


@pytest.mark.parametrize(
    "configured, tags, expected, source",
    [
        ({}, {}, 1800, "learned: 3 x p95 of the last 30 successful runs of job etl, 600 s"),
        ({"max_runtime_seconds": 86400}, {}, 1800, "learned: 3 x p95"),
        ({"max_runtime_seconds": 900}, {}, 900, "instance default"),  # configured is smaller
        ({"rules": [{"match": {"job": "etl"}, "max_runtime_seconds": 1000}]}, {}, 1000, "rule 1"),
        ({}, {c.MAX_RUNTIME_TAG: "7200"}, 7200, "tag dagster/max_runtime"),  # the tag wins
        ({}, {c.LEARNED_LIMITS_TAG: "off"}, 0, "instance default"),  # opted out
    ],
)
def test_a_tag_wins_else_the_smaller_of_configured_and_learned(configured, tags, expected, source):
    config = settings(**configured)
    limits = resolve_limits("etl", None, tags, config)
    found = history("etl", durations(P95_OF_30), {}, config.learned)
    limit = with_history(limits, found, config.learned)["max_runtime_seconds"]
    assert (limit.seconds, limit.source.startswith(source)) == (expected, True)
    if expected != 1800 and c.LEARNED_LIMITS_TAG not in tags:
        assert limit.learned is not None and limit.learned.seconds == 1800  # shown in explain


def test_rules_set_the_factors_for_their_jobs():
    config = settings(rules=[{"match": {"job": "etl"}, "max_runtime_factor": 2}])
    found = history("etl", durations(P95_OF_30), {}, config.learned)
    for job, expected in (("etl", 1200), ("other", 1800)):
        limits = with_history(resolve_limits(job, None, {}, config), found, config.learned)
        assert limits["max_runtime_seconds"].seconds == expected


def test_a_run_over_its_learned_max_runtime_fails_naming_where_the_limit_came_from():
    assert decide(started_run(1800), settings(), NOW) == []
    (action,) = decide(started_run(1801), settings(), NOW)
    learned = "(learned: 3 x p95 of the last 30 successful runs of job etl, 600 s)"
    assert isinstance(action, TerminateAndFail)
    assert action.failure_message == f"Exceeded maximum runtime of 1800 seconds {learned}."
    assert action.tags == {c.LIMIT_SOURCE_TAG: "learned"}
    assert action.reason == c.REASON_MAX_RUNTIME


def test_slower_than_usual_warns_once():
    learned = {**LEARN, "max_runtime_factor": 0, "warn_factor": 1.5}
    assert decide(started_run(900, learned=learned), settings(learned), NOW) == []
    (notice,) = decide(started_run(901, learned=learned), settings(learned), NOW)
    expected = (
        "Run is slower than usual: 15 minutes so far, past 1.5 x p95 (10 minutes) of its"
        " job's last 30 successful runs."
    )
    assert isinstance(notice, Notice) and notice.message == expected
    assert notice.alert == Alert("r1", "etl", "warning", expected, "slower_than_usual", 900, 901)
    warned = {notice.tag: notice.value}
    assert decide(started_run(5000, tags=warned, learned=learned), settings(learned), NOW) == []


def test_a_bad_opt_out_value_warns_and_learned_limits_apply():
    (notice, fail) = decide(started_run(2000, tags={c.LEARNED_LIMITS_TAG: "nope"}), settings(), NOW)
    assert notice.message == c.invalid_learning_tag_message("nope")
    assert isinstance(fail, TerminateAndFail)


def test_a_step_over_its_learned_limit_fails_the_run_and_an_op_tag_wins():
    learned = {**LEARN, "max_runtime_factor": 0, "max_step_runtime_factor": 2}
    steps = {"load": durations(100.0)}
    run = started_run(1000, steps=steps, learned=learned)
    ok = RunFacts(**{**run.__dict__, "running_steps": {"load": NOW - 200}})
    assert decide(ok, settings(learned), NOW) == []
    over = RunFacts(**{**run.__dict__, "running_steps": {"load": NOW - 201}})
    (action,) = decide(over, settings(learned), NOW)
    source = "learned: 2 x p95 of the last 30 successful executions of step load in job etl, 100 s"
    assert action.failure_message == c.step_timeout_message("load", 201, 200, source)
    assert action.tags == {c.LIMIT_SOURCE_TAG: "learned"}
    tagged = RunFacts(**{**over.__dict__, "step_limits": {"load": "1h"}})
    assert decide(tagged, settings(learned), NOW) == []


@pytest.mark.parametrize(
    "learned, key",
    [
        ({"max_runtime_factor": 0.5}, "learned_limits.max_runtime_factor"),
        ({"warn_factor": -1}, "learned_limits.warn_factor"),
        ({"percentile": 0}, "learned_limits.percentile"),
        ({"percentile": 100.5}, "learned_limits.percentile"),
        ({"min_runs": 1}, "learned_limits.min_runs"),
        ({"runs": 5}, "learned_limits.runs"),  # fewer than min_runs
        ({"typo": 1}, "learned_limits"),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_key(learned, key):
    with pytest.raises(DagsterInvalidConfigError, match=f"run_monitoring.{key}"):
        settings(learned)
    with pytest.raises(DagsterInvalidConfigError, match=r"rules\[1\].warn_factor"):
        settings(rules=[{"match": {"job": "a"}, "warn_factor": 0.9}])


# --- passes on SQLite and PostgreSQL ----------------------------------------------------


def finished_run(instance, seconds: float, job="etl", tags=None, ended=T0 - 100_000, steps=()):
    """A SUCCESS run of ``job`` that took ``seconds`` (its steps: (key, seconds) pairs)."""
    run = make_run(
        instance,
        S.STARTED,
        job_name=job,
        tags=tags,
        location="loc",
        created=ended - seconds - 10,
        started=ended - seconds,
    )
    for step, step_seconds in steps:
        for kind, when in (
            (DagsterEventType.STEP_START, ended - step_seconds - 1),
            (DagsterEventType.STEP_SUCCESS, ended - 1),
        ):
            with at(when):
                data = (
                    StepSuccessData(step_seconds * 1000) if kind.value == "STEP_SUCCESS" else None
                )
                event = DagsterEvent(
                    kind.value, job_name=job, step_key=step, event_specific_data=data
                )
                instance.report_dagster_event(event, run_id=run.run_id)
    with at(ended):
        report(instance, run, DagsterEventType.RUN_SUCCESS)
    assert status_of(instance, run.run_id) == DagsterRunStatus.SUCCESS


def history_of(instance, count: int, job="etl", steps=()):
    for i, seconds in enumerate(durations(P95_OF_30, count)):
        finished_run(instance, seconds, job, ended=T0 - 400_000 + i * 10_000, steps=steps)


def test_a_run_over_three_times_its_jobs_p95_fails_with_the_learned_message(
    make_instance, workspace_context
):
    with make_instance(run_monitoring={"learned_limits": LEARN}) as instance:
        history_of(instance, 30)
        run = make_run(instance, S.STARTED, job_name="etl", location="loc", started=T0 - 1801)
        ok = make_run(instance, S.STARTED, job_name="etl", location="loc", started=T0 - 1700)
        with workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx) == []
        assert status_of(instance, run.run_id) == S.FAILURE
        assert status_of(instance, ok.run_id) == S.STARTED
        expected = (
            "Exceeded maximum runtime of 1800 seconds (learned: 3 x p95 of the last 30"
            " successful runs of job etl, 600 s)."
        )
        assert expected in messages(instance, run.run_id)
        tags = tags_of(instance, run.run_id)
        assert tags[c.REASON_TAG] == c.REASON_MAX_RUNTIME
        assert tags[c.LIMIT_SOURCE_TAG] == "learned"


ALERTED: list = []


def record_alert(alert) -> None:
    ALERTED.append(alert)


def test_slower_than_usual_warns_once_also_across_restarts(make_instance, workspace_context):
    ALERTED.clear()
    config = {
        "learned_limits": {"warn_factor": 1.5},
        "alerts": {"callable": {"module": __name__, "function": "record_alert"}},
    }
    with make_instance(run_monitoring=config) as instance:
        history_of(instance, 30)
        run = make_run(instance, S.STARTED, job_name="etl", location="loc", started=T0 - 901)
        with workspace_context(instance) as ctx:
            for i in range(3):  # a new daemon each pass: as if restarted
                daemon = RunMonitorDaemon.from_instance(instance)
                assert monitor_pass(instance, ctx, now=T0 + i, daemon=daemon) == []
        expected = (
            "Run is slower than usual: 15 minutes so far, past 1.5 x p95 (10 minutes) of its"
            " job's last 30 successful runs."
        )
        assert messages(instance, run.run_id).count(expected) == 1
        assert status_of(instance, run.run_id) == S.STARTED
        assert [(a.run_id, a.message) for a in ALERTED] == [(run.run_id, expected)]


def test_nine_counted_runs_teach_nothing_resumed_and_retried_runs_do_not_count(
    make_instance, workspace_context
):
    with make_instance(run_monitoring={"learned_limits": LEARN}) as instance:
        history_of(instance, 9)
        finished_run(instance, 600, tags={c.RESUMED_TAG: "1"})
        finished_run(instance, 600, tags={RESUME_RETRY_TAG: "true"})
        finished_run(instance, 600, job="other")  # another job
        run = make_run(instance, S.STARTED, job_name="etl", location="loc", started=T0 - 90_000)
        with workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx) == []
        assert status_of(instance, run.run_id) == S.STARTED


def test_the_runs_own_tag_wins(make_instance, workspace_context):
    with make_instance(run_monitoring={"learned_limits": LEARN}) as instance:
        history_of(instance, 30)
        tags = {c.MAX_RUNTIME_TAG: "3600"}
        run = make_run(
            instance, S.STARTED, job_name="etl", location="loc", tags=tags, started=T0 - 3000
        )
        with workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx) == []
            assert status_of(instance, run.run_id) == S.STARTED  # 3000 s: past 1800, under 3600
            assert monitor_pass(instance, ctx, now=T0 + 601) == []
        assert status_of(instance, run.run_id) == S.FAILURE
        assert "Exceeded maximum runtime of 3600 seconds." in messages(instance, run.run_id)
        assert c.LIMIT_SOURCE_TAG not in tags_of(instance, run.run_id)


def test_a_step_over_its_learned_limit_fails_the_run_naming_the_step(
    make_instance, workspace_context
):
    learned = {**LEARN, "max_runtime_factor": 0, "max_step_runtime_factor": 2}
    with make_instance(run_monitoring={"learned_limits": learned}) as instance:
        history_of(instance, 12, steps=[("load", 100.0), ("save", 5.0)])
        run = make_run(instance, S.STARTED, job_name="etl", location="loc", started=T0 - 500)
        with at(T0 - 201):
            event = DagsterEvent(DagsterEventType.STEP_START.value, job_name="etl", step_key="load")
            instance.report_dagster_event(event, run_id=run.run_id)
        with workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx, now=T0 - 1) == []  # 200 s: at the limit
            assert status_of(instance, run.run_id) == S.STARTED
            assert monitor_pass(instance, ctx) == []
        assert status_of(instance, run.run_id) == S.FAILURE
        source = (
            "learned: 2 x p95 of the last 12 successful executions of step load in job etl, 100 s"
        )
        assert c.step_timeout_message("load", 201, 200, source) in messages(instance, run.run_id)
        assert tags_of(instance, run.run_id)[c.REASON_TAG] == c.REASON_STEP_TIMEOUT


def test_cli_history_and_explain_show_what_was_learned(make_instance):
    learned = {**LEARN, "warn_factor": 1.5, "max_step_runtime_factor": 2}
    config = {"learned_limits": learned, "max_runtime_seconds": 86400}
    k8s = json.dumps({"container_config": {"resources": {"limits": {"memory": "3Gi"}}}})
    with make_instance(run_monitoring=config) as instance, at(T0):
        history_of(instance, 30, steps=[("load", 100.0)])
        oom = {c.CRASH_CAUSE_TAG: "oom_killed", K8S_CONFIG_TAG: k8s}
        finished_run(instance, 500, job="big", tags=oom)
        ecs = {c.CRASH_CAUSE_TAG: "oom_killed", "ecs/memory": "3072", "ecs/cpu": "1024"}
        finished_run(instance, 500, job="big", tags=ecs)
        run = make_run(instance, S.STARTED, job_name="etl", location="loc", started=T0 - 1000)
        runner = CliRunner()
        shown = runner.invoke(cli, ["history"])
        assert shown.exit_code == 0, shown.output
        lines = shown.output.splitlines()
        assert (
            "job etl (__repository__@loc): 30 successful run(s) counted, p50 300 s, p95 600 s,"
            " max 1200 s" in lines
        )
        assert (
            "  max runtime: 1800 s (learned: 3 x p95 of 30 runs of job etl = 600 s;"
            " configured 86400 s)" in lines
        )
        assert "  slower than usual after: 900 s (1.5 x p95 of 30 runs of job etl = 600 s)" in lines
        assert (
            "  step load max runtime: 200 s (2 x p95 of 30 executions of step load in job etl"
            " = 100 s)" in lines
        )
        assert (
            "  OOM-killed, then succeeded with memory 3Gi (1 run(s)): set this memory for good"
            " (the job's dagster-k8s/config tag) rather than raise it after each kill" in lines
        )
        assert (
            "  OOM-killed, then succeeded with memory 3072 MiB (1 run(s)): set this memory for"
            " good (the job's ecs/memory tag) rather than raise it after each kill" in lines
        )
        only = runner.invoke(cli, ["history", "big"])
        assert "job etl" not in only.output and "nothing learned" in only.output
        explain = runner.invoke(cli, ["explain", run.run_id])
        assert explain.exit_code == 0, explain.output
        assert (
            "  max_runtime_seconds: 1800s (learned: 3 x p95 of 30 runs of job etl = 600 s;"
            " configured 86400 s), 800s left" in explain.output
        )
        assert "Run is slower than usual: 16 minutes so far" in explain.output


def test_a_daemon_reads_histories_again_only_every_refresh_seconds(
    make_instance, workspace_context
):
    with make_instance(run_monitoring={"learned_limits": LEARN}) as instance:
        history_of(instance, 30)  # p95 600 s: 1800 s
        run = make_run(instance, S.STARTED, job_name="etl", location="loc", started=T0 - 400)
        daemon = RunMonitorDaemon.from_instance(instance)
        with workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx, now=T0, daemon=daemon) == []
            for i in range(30):  # the job got faster: p95 100 s, 300 s
                finished_run(instance, 100, ended=T0 - 50_000 + i)
            assert monitor_pass(instance, ctx, now=T0 + 599, daemon=daemon) == []
            assert status_of(instance, run.run_id) == S.STARTED  # the history read at T0
            assert monitor_pass(instance, ctx, now=T0 + 600, daemon=daemon) == []
        assert status_of(instance, run.run_id) == S.FAILURE
        expected = (
            "Exceeded maximum runtime of 300 seconds (learned: 3 x p95 of the last 30"
            " successful runs of job etl, 100 s)."
        )
        assert expected in messages(instance, run.run_id)


def test_the_gauge_counts_runs_slower_than_usual(make_instance, workspace_context):
    port = free_port()
    config = {"learned_limits": {"warn_factor": 1.5}, "metrics": {"port": port}}
    with make_instance(run_monitoring=config) as instance:
        history_of(instance, 30)
        for started in (T0 - 901, T0 - 899, T0 - 5000):
            make_run(instance, S.STARTED, job_name="etl", location="loc", started=started)
        make_run(instance, S.STARTED, job_name="new_job", location="loc", started=T0 - 5000)
        daemon = RunMonitorDaemon.from_instance(instance)
        with workspace_context(instance) as ctx:
            assert monitor_pass(instance, ctx, daemon=daemon) == []
        m = scrape(port)
    assert m[("dagster_run_monitor_runs_slower_than_usual", ())] == 2
    warned = (
        ("action", "notice"),
        ("cause", ""),
        ("reason", "run_monitor/warned/slower_than_usual"),
    )
    assert m[("dagster_run_monitor_actions_total", warned)] == 2
