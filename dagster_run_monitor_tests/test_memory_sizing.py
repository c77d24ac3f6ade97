"""Memory sized from what a job really used: the peaks its successful runs carry
(``run_monitor/memory``), read with the learned-limits history, size the next attempt of a
worker the OOM killer ended and give right-sizing advice (``history``, ``report``)."""

import json

from click.testing import CliRunner
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.cli import main as cli
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.crash_cause import CrashCause
from dagster_run_monitor.core.learned import Sample
from dagster_run_monitor.core.memory_sizing import advice
from dagster_run_monitor.core.memory_use import mebibytes, quantity
from dagster_run_monitor.core.model import Health, RunFacts
from dagster_run_monitor.core.policy import decide
from dagster_run_monitor.core.step_crashes import StepCrash, StepEnd, raised_step_config
from dagster_run_monitor.daemon.history import JobHistories
from dagster_run_monitor_tests.support.runs import make_run
from dagster_run_monitor_tests.test_learned_limits import T0, finished_run, settings

MI = 2**20


def memory_tag(run_peak: int, run_limit: int | None, step_peak: int | None = None) -> dict:
    workers = {"run": [run_peak, run_limit]}
    if step_peak is not None:
        workers["step:train"] = [step_peak, 4096 * MI]
    return {c.MEMORY_TAG: json.dumps(workers)}


def test_an_oom_killed_worker_is_resumed_at_its_jobs_p95_peak_plus_15_percent(make_instance):
    """Twelve successful runs peaked at up to 900Mi; killed under a 256Mi limit, the worker
    is resumed at 1035Mi at once, not 384Mi, then 576Mi, then ..."""
    with make_instance(run_monitoring={}) as instance:
        for i in range(12):
            peak = 900 * MI if i >= 10 else (500 + 10 * i) * MI
            finished_run(instance, 60, tags=memory_tag(peak, 256 * MI), ended=T0 - 10_000 + i)
        run = make_run(instance, S.STARTED, job_name="etl", location="loc", started=T0 - 100)
        config = settings(oom_memory={"multiplier": 1.5, "max": "8Gi"})
        (history,) = JobHistories().for_runs(instance, config.learned, {run.run_id: run}).values()
        assert history.peaks["run"] == Sample(900 * MI, 12)

    oom = CrashCause("oom_killed", "OOMKilled", 137, {"limits": "256Mi"})
    facts = RunFacts(
        "r1",
        "etl",
        S.STARTED,
        T0 - 100,
        T0 - 50,
        started_at=T0 - 50,
        health=Health("FAILED", "K8s job failed", cause=oom),
        unhealthy_since=T0 - 120,
        history=history,
    )
    (resume,) = decide(facts, config, T0)
    assert resume.note == (
        "Resuming with memory limit 1035Mi (was 256Mi) after the worker was OOMKilled: 1.15 x"
        " this job's p95 peak over its last 12 successful runs."
    )
    limits = json.loads(resume.tags["dagster-k8s/config"])["container_config"]["resources"]
    assert limits == {"limits": {"memory": "1035Mi"}}

    # Without a history: the multiplier, or the killed limit + 100Mi where that is more.
    (plain,) = decide(RunFacts(**{**facts.__dict__, "history": None}), config, T0)
    assert plain.note.startswith("Resuming with memory limit 384Mi (was 256Mi)")
    small = CrashCause("oom_killed", "OOMKilled", 137, {"limits": "128Mi"})
    health = Health("FAILED", "K8s job failed", cause=small)
    (bumped,) = decide(
        RunFacts(**{**facts.__dict__, "history": None, "health": health}), config, T0
    )
    assert bumped.note.endswith(
        "(was 128Mi) after the worker was OOMKilled: the killed limit + 100Mi."
    )


def test_an_oom_killed_step_is_retried_at_its_ops_p95_peak_capped_at_max():
    crash = StepCrash(
        StepEnd("train", False, "", worker={"Kubernetes Job name": "dagster-step-1"}),
        CrashCause("oom_killed", "", 137, {"limits": "256Mi"}),
    )
    oom = settings(oom_memory={"multiplier": 1.5, "max": "1Gi"}).oom_memory
    usual = {"step:train": Sample(900 * MI, 30)}
    config, said = raised_step_config({}, [crash], oom, usual)
    per_step = config["execution"]["config"]["per_step_k8s_config"]["train"]
    assert per_step["container_config"]["resources"]["limits"]["memory"] == "1Gi"
    assert said == (
        " with memory limit 1Gi for step 'train' (was 256Mi: oom_memory.max (not 1035Mi: 1.15 x"
        " this op's p95 peak over its last 30 successful runs))"
    )


def test_advice_follows_the_vertical_pod_autoscalers_rule_and_flags_risk_and_waste():
    # 20 runs: the run worker peaks 100..290Mi under 2Gi (over-provisioned); the step 3.5..3.88Gi
    # under 4Gi (p95 3872Mi, above 0.9 x 4Gi: at risk).
    tags = [memory_tag((100 + 10 * i) * MI, 2048 * MI, (3584 + 16 * i) * MI) for i in range(20)]
    run, step = advice([t[c.MEMORY_TAG] for t in tags], 0.9)
    assert run.as_dict() == {
        "worker": "run",
        "runs": 20,
        "p50_peak": "190Mi",
        "p95_peak": "280Mi",
        "limit": "2Gi",
        "recommended": "311Mi",  # p90 270Mi + 15% = 310.5Mi, rounded up
        "at_risk": False,
        "over_provisioned": True,
    }
    assert (step.worker, step.at_risk, step.over_provisioned) == ("step:train", True, False)
    assert step.as_dict()["recommended"] == "4435Mi"  # p90 3856Mi + 15%, rounded up
    tiny = advice([json.dumps({"run": [50 * MI, None]})], 0.9)[0]
    assert (tiny.recommended, tiny.limit, tiny.at_risk) == (256 * MI, None, False)


def test_history_and_the_reports_json_show_the_advice(make_instance):
    with make_instance(run_monitoring={}) as instance:
        for i in range(20):
            tags = memory_tag((100 + 10 * i) * MI, 2048 * MI, (3584 + 16 * i) * MI)
            finished_run(instance, 60, tags=tags, ended=T0 - 10_000 + i)
        runner = CliRunner()
        shown = runner.invoke(cli, ["history"])
        assert shown.exit_code == 0, shown.output
        lines = shown.output.splitlines()
        assert (
            "  memory of the run worker: p50 190Mi, p95 280Mi over 20 run(s); limit 2Gi;"
            " recommended 311Mi (p90 peak + 15%, at least 256Mi); over-provisioned: limit above"
            " 2x the recommendation: set it in the run's dagster-k8s/config tag (Kubernetes) or"
            " ecs/memory tag (ECS)" in lines
        ), lines
        assert any(
            line.startswith("  memory of the step 'train': ")
            and "at risk: p95 above memory.warn_fraction of the limit" in line
            for line in lines
        ), lines
        report = runner.invoke(cli, ["report", "--format", "json"])
        assert report.exit_code == 0, report.output
        memory = json.loads(report.output)["memory"]
        assert [a["worker"] for a in memory["etl (__repository__@loc)"]] == ["run", "step:train"]
        assert memory["etl (__repository__@loc)"][0]["recommended"] == "311Mi"


def test_a_runs_peaks_tags_and_event_from_its_workers_rows():
    """A resumed worker's two rows keep the higher peak (and the OOM kill seen on either)."""
    from dagster_run_monitor.core.heartbeats import Peak, memory_key, parse_peak
    from dagster_run_monitor.core.memory_use import peak_message, peak_tags, run_peaks

    rows = {
        memory_key("r1", "run", "aa"): '{"peak": 188743680, "limit": null, "oom": false}',
        memory_key("r1", "run", "bb"): '{"peak": 100000000, "limit": null, "oom": true}',
        memory_key("r1", "step:train", "cc"): '{"peak": 3328599654, "limit": 4294967296}',
        memory_key("r1", "step:load", "dd"): "damaged",
    }
    found = [p for key, value in rows.items() if (p := parse_peak(key, value))]
    assert all(run_id == "r1" for run_id, _ in found)
    peaks = run_peaks(peak for _, peak in found)
    assert peaks["run"] == Peak("run", 188743680, None, True)
    assert peak_tags(peaks) == {
        c.PEAK_MEMORY_TAG: "3175Mi",
        c.MEMORY_TAG: '{"run":[188743680,null,true],"step:train":[3328599654,4294967296]}',
    }
    assert (
        peak_message(peaks)
        == "Memory: run worker 180Mi (no limit); step 'train' 3.1Gi of 4Gi (77%)."
    )


def test_two_daemons_write_an_ended_runs_memory_once_and_remove_its_rows(make_instance):
    """A worker's watcher keeps its peak as it stops; the run ends; two daemons' sights pass at
    once: one event, the tags, no row left."""
    import subprocess
    import sys
    import threading

    from dagster._core.events import DagsterEventType

    from dagster_run_monitor.config.parse import settings_from_config
    from dagster_run_monitor.core.heartbeats import beat_key, memory_key, stack_key
    from dagster_run_monitor.daemon.heartbeats import HeartbeatSight
    from dagster_run_monitor.integration.internals import run_storage_database
    from dagster_run_monitor.storage.heartbeats import read_peaks, read_rows
    from dagster_run_monitor.worker.watcher import Watcher
    from dagster_run_monitor_tests.support.runs import messages, report

    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with make_instance(run_monitoring={}) as instance:
        run = make_run(instance, S.STARTED, started=T0 - 100)
        database, target = run_storage_database(instance)
        watcher = Watcher(
            {
                "database": database,
                "target": target,
                "key": beat_key(run.run_id),
                "stack_key": stack_key(run.run_id),
                "memory_key": memory_key(run.run_id, "run", "t1"),
                "token": "t1",
                "pid": worker.pid,
                "host": "worker-host",
                "interval": 30,
            }
        )
        watcher.beat()
        watcher.stop()
        worker.kill()
        worker.wait()
        (peak,) = read_peaks(instance, [run.run_id])[run.run_id].values()
        assert peak.peak > 10 * MI and peak.limit is None
        report(instance, run, DagsterEventType.RUN_SUCCESS)

        config = settings_from_config({"enabled": True})
        sights = [HeartbeatSight(), HeartbeatSight()]
        for sight in sights:
            sight.read(instance, config, T0)
        start = threading.Barrier(2)

        def finish(sight: HeartbeatSight) -> None:
            start.wait()
            sight.forget_ended(instance, set(), T0, 180)

        threads = [threading.Thread(target=finish, args=(s,)) for s in sights]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for sight in sights:  # the one that did not hold the claim: its next pass
            sight.read(instance, config, T0 + 1)
            sight.forget_ended(instance, set(), T0 + 1, 180)

        summary = [m for m in messages(instance, run.run_id) if m.startswith("Memory: ")]
        assert summary == [f"Memory: run worker {quantity(peak.peak)} (no limit)."]
        tags = instance.get_run_by_id(run.run_id).tags
        assert tags[c.PEAK_MEMORY_TAG] == mebibytes(peak.peak)
        assert json.loads(tags[c.MEMORY_TAG]) == {"run": [peak.peak, None]}
        beats, peaks = read_rows(instance)
        assert [b for b in beats if b.run_id == run.run_id] == []
        assert [p for run_id, p in peaks if run_id == run.run_id] == []
