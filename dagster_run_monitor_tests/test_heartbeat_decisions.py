"""The pure side of heartbeats: clocks on the daemon's time only, lost run workers, what a
launcher's verdict leaves to them, hangs, and the breaker."""

import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.config.parse import settings_from_config
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.crash_cause import CrashCause
from dagster_run_monitor.core.crashes import with_heartbeats
from dagster_run_monitor.core.heartbeats import Beat, by_run, parse_beat, watch
from dagster_run_monitor.core.model import (
    FailRun,
    Health,
    Notice,
    ResumeRun,
    RunFacts,
    TerminateAndFail,
)
from dagster_run_monitor.core.policy import plan
from dagster_run_monitor.core.settings import Heartbeats, MonitorSettings

NOW = 10_000.0
TIMEOUT = 180.0
SETTINGS = MonitorSettings(enabled=True, can_check_health=True, can_resume=True)


def beat(seq: int, run_id: str = "r1", **kwargs) -> Beat:
    kwargs.setdefault("host", "h")
    kwargs.setdefault("pid", 7)
    return Beat(run_id, "run", "tok", seq, **kwargs)


def sights_after(*passes: tuple[float, list[Beat]], fresh_at: float | None = None):
    """The sights after the passes (time, beats read), as a daemon keeps them."""
    sights: dict = {}
    for now, beats in passes:
        sights = watch(sights, beats, now, fresh=now == fresh_at)
    return by_run(sights)


def lost_health(workers, now: float, launcher: Health | None = None) -> Health | None:
    return with_heartbeats(launcher, workers, now, TIMEOUT)


def test_the_stored_row_is_read_back():
    value = 'tok|{"seq":3,"host":"h","pid":7,"cpu":1.5,"hash":"ab","steps":["load"]}'
    assert parse_beat("run_monitor/beat/r1/step:load", value) == Beat(
        "r1", "step:load", "tok", 3, "h", 7, 1.5, "ab", ("load",)
    )
    assert parse_beat("run_monitor/beat/r1/run", "garbage") is None
    assert parse_beat("run_monitor/beat/r1/run", "tok|{not json") is None


def test_a_beat_is_stale_only_by_the_daemons_clock():
    # The same beat for the timeout, as this daemon saw it: lost.
    workers = sights_after((NOW, [beat(1)]), (NOW + TIMEOUT, [beat(1)]))["r1"]
    health = lost_health(workers, NOW + TIMEOUT)
    assert health.status == "FAILED" and health.cause == CrashCause("worker_lost")
    assert "no heartbeat from the run worker (host h, pid 7) for 180 seconds" in health.message
    # A beat that changed a moment ago is fresh, whatever time the worker's host thinks it is
    # (a beat carries no timestamp to compare).
    workers = sights_after((NOW, [beat(1)]), (NOW + TIMEOUT - 1, [beat(2)]))["r1"]
    assert lost_health(workers, NOW + TIMEOUT) is None


def test_a_daemon_that_starts_or_lost_its_sight_gives_every_run_the_full_timeout():
    # First pass of a new daemon: a beat unchanged for hours is seen from now.
    workers = sights_after((NOW, [beat(1)]))["r1"]
    assert lost_health(workers, NOW + TIMEOUT - 1) is None
    # A pass that could not read (storage down) makes the next read start every clock again.
    later = NOW + 3 * TIMEOUT
    workers = sights_after((NOW, [beat(1)]), (later, [beat(1)]), fresh_at=later)["r1"]
    assert lost_health(workers, later) is None


def test_an_ended_worker_is_lost_at_once_and_that_is_evidence():
    workers = sights_after((NOW, [beat(1, ended=True)]))["r1"]
    health = lost_health(workers, NOW)
    assert "the run worker (host h, pid 7) ended without finishing the run" in health.message
    assert not health.blind


def test_the_launchers_verdict_of_a_dead_worker_stands_and_beats_do_not_act_twice():
    exited = Health("FAILED", "exit code 137", cause=CrashCause("signal", exit_code=-9))
    workers = sights_after((NOW, [beat(1)]), (NOW + TIMEOUT, [beat(1)]))["r1"]
    assert lost_health(workers, NOW + TIMEOUT, exited) is exited


def test_beats_answer_for_a_worker_the_launcher_cannot_see():
    unknown = Health("UNKNOWN", "the worker runs on another host")
    fresh = sights_after((NOW, [beat(1)]))["r1"]
    assert lost_health(fresh, NOW, unknown).status == "RUNNING"
    stale = sights_after((NOW, [beat(1)]), (NOW + TIMEOUT, [beat(1)]))["r1"]
    assert lost_health(stale, NOW + TIMEOUT, unknown).cause == CrashCause("worker_lost")


def test_a_lost_worker_the_launcher_sees_running_is_stopped_before_its_resume():
    running = Health("RUNNING", "pod Running")  # a lost Kubernetes node
    stale = sights_after((NOW, [beat(1)]), (NOW + TIMEOUT, [beat(1)]))["r1"]
    health = lost_health(stale, NOW + TIMEOUT, running)
    run = RunFacts("r1", "job", S.STARTED, NOW - 500, NOW - 500, health=health)
    [resume] = plan([run], SETTINGS, NOW + TIMEOUT).due[0][1]
    assert isinstance(resume, ResumeRun)
    assert resume.kill_first and resume.reason == c.REASON_WORKER_LOST
    assert resume.tags[c.CRASH_CAUSE_TAG] == "worker_lost"


def test_a_lost_worker_fails_where_the_launcher_cannot_resume():
    stale = sights_after((NOW, [beat(1, steps=("load",))]), (NOW + 200, [beat(1)]))["r1"]
    run = RunFacts(
        "r1", "job", S.STARTED, NOW - 500, NOW - 500, health=lost_health(stale, NOW + 200)
    )
    settings = MonitorSettings(enabled=True)  # DefaultRunLauncher: no health check, no resume
    [fail] = plan([run], settings, NOW + 200).due[0][1]
    assert isinstance(fail, FailRun) and fail.reason == c.REASON_WORKER_LOST
    assert fail.message == (
        "Detected run worker status FAILED: 'no heartbeat from the run worker (host h, pid 7)"
        " for 200 seconds' (cause: worker_lost). Marking run r1 as failed."
    )


def stale_runs(count: int) -> list[RunFacts]:
    runs = []
    for i in range(count):
        rid = f"r{i}"
        workers = sights_after((NOW, [beat(1, rid)]), (NOW + TIMEOUT, [beat(1, rid)]))[rid]
        health = lost_health(workers, NOW + TIMEOUT, Health("RUNNING", "ok"))
        runs.append(RunFacts(rid, "job", S.STARTED, NOW - 500, NOW - 500, health=health))
    return runs


def test_the_breaker_opens_when_many_runs_look_lost_at_once_and_evidence_still_acts():
    killed = Health("FAILED", "signal 9", cause=CrashCause("signal", exit_code=-9))
    evidence = RunFacts("oom", "job", S.STARTED, NOW - 500, NOW - 500, health=killed)
    healthy = [
        RunFacts(f"ok{i}", "job", S.STARTED, NOW - 500, NOW - 500, health=Health("RUNNING", "ok"))
        for i in range(5)
    ]
    decided = plan([*stale_runs(20), evidence, *healthy], SETTINGS, NOW + TIMEOUT)
    assert [run_id for run_id, _ in decided.due] == ["oom"]
    assert decided.breaker.startswith("Breaker open: 20 of 26 checked runs look lost")


@pytest.mark.parametrize("lost, healthy", [(9, 0), (10, 10)])  # below min_runs; not > half
def test_the_breaker_stays_closed_below_its_thresholds(lost, healthy):
    ok = [
        RunFacts(f"ok{i}", "job", S.STARTED, NOW - 500, NOW - 500, health=Health("RUNNING", "ok"))
        for i in range(healthy)
    ]
    decided = plan([*stale_runs(lost), *ok], SETTINGS, NOW + TIMEOUT)
    assert decided.breaker is None and len(decided.due) == lost


def hang_facts(workers, last_event_at: float, tags=None) -> RunFacts:
    from dagster_run_monitor.core.heartbeats import quiet_since, seen_until

    quiet = max(quiet_since(workers), last_event_at)
    return RunFacts(
        "r1",
        "job",
        S.STARTED,
        NOW - 5000,
        NOW - 5000,
        tags={c.HANG_TIMEOUT_TAG: "10m"} if tags is None else tags,
        last_event_at=last_event_at,
        workers=workers,
        quiet_since=quiet,
        quiet_seen_until=seen_until(workers),
    )


def test_a_blocked_worker_is_hung_and_a_busy_one_is_not():
    blocked = [(NOW + t, [beat(t + 1, cpu=3.0, stack_hash="a")]) for t in range(0, 700, 30)]
    workers = sights_after(*blocked)["r1"]
    [action] = plan([hang_facts(workers, NOW)], SETTINGS, NOW + 690).due[0][1]
    assert isinstance(action, TerminateAndFail) and action.reason == c.REASON_HUNG
    assert "Run hung: for 690 seconds" in action.failure_message
    busy = [(NOW + t, [beat(t + 1, cpu=3.0 + t, stack_hash="a")]) for t in range(0, 700, 30)]
    workers = sights_after(*busy)["r1"]
    assert plan([hang_facts(workers, NOW)], SETTINGS, NOW + 690).due == []
    # Sleeping, with no hang limit: alive.
    workers = sights_after(*blocked)["r1"]
    assert plan([hang_facts(workers, NOW, tags={})], SETTINGS, NOW + 690).due == []


def test_with_the_default_interval_no_verdict_comes_before_a_beat_that_shows_the_hang():
    """A hang timeout of 12 s, beats every 30 s (the default): 13 s after a beat nothing shows
    that the run made no progress, so no verdict (found failing a busy loop as hung); the next
    beat decides: a busy loop's CPU time advanced, a blocked one's did not. The timeout being
    shorter than the beats' interval is said once."""
    tags = {c.HANG_TIMEOUT_TAG: "12"}
    first = (NOW, [beat(1, cpu=3.0, stack_hash="a")])
    early = plan([hang_facts(sights_after(first)["r1"], NOW, tags)], SETTINGS, NOW + 13).due
    [(_, [notice])] = early
    assert isinstance(notice, Notice) and notice.message == (
        "The hang timeout of 12 seconds is shorter than the heartbeats' interval (30 s): a hang"
        " is judged only on beats that show it, so it is seen at a beat at least that long after"
        " the run last made progress."
    )
    warned = {**tags, notice.tag: notice.value}
    busy = sights_after(first, (NOW + 30, [beat(2, cpu=33.0, stack_hash="a")]))["r1"]
    assert plan([hang_facts(busy, NOW, warned)], SETTINGS, NOW + 31).due == []
    blocked = sights_after(first, (NOW + 30, [beat(2, cpu=3.0, stack_hash="a")]))["r1"]
    [(_, [action])] = plan([hang_facts(blocked, NOW, warned)], SETTINGS, NOW + 31).due
    assert isinstance(action, TerminateAndFail) and action.reason == c.REASON_HUNG


@pytest.mark.parametrize(
    "block, key",
    [
        ({"worker_heartbeats": {"interval_seconds": 30, "timeout_seconds": 40}}, "timeout_seconds"),
        ({"worker_heartbeats": {"interval_seconds": 0}}, "interval_seconds"),
        ({"worker_heartbeats": {"enabled": "yes"}}, "enabled"),
        ({"worker_heartbeats": {"every": 3}}, "worker_heartbeats"),
        ({"breaker": {"fraction": 1.5}}, "breaker.fraction"),
        ({"breaker": {"min_runs": 0}}, "breaker.min_runs"),
    ],
)
def test_bad_heartbeat_and_breaker_settings_name_their_key(block, key):
    with pytest.raises(Exception) as raised:
        settings_from_config(block)
    assert key in str(raised.value.errors[0].message)


def test_the_defaults():
    settings = settings_from_config({})
    assert settings.heartbeats == Heartbeats(True, 30, 180)
    assert (settings.breaker.fraction, settings.breaker.min_runs) == (0.5, 10)
    assert settings.hang_timeout_seconds == 0


@pytest.mark.parametrize("evidence", ["ended", "gone"])
def test_a_step_that_never_ended_and_lost_its_worker_for_sure_fails_the_run(evidence):
    """Its watcher saw the process end, or the platform shows no worker (a step Job completed
    by a replacement pod that only verified the step: dagster-io/dagster#33755): the run is
    failed now with reason step_lost, not left to hang until its max runtime."""
    ended = evidence == "ended"
    step = Beat("r1", "step:load", "steptok", 1, "h", 8, steps=("load",), ended=ended)
    workers = sights_after((NOW, [beat(1), step]), (NOW + TIMEOUT, [beat(2), step]))["r1"]
    run = RunFacts(
        "r1",
        "job",
        S.STARTED,
        NOW - 500,
        NOW - 500,
        workers=workers,
        running_steps={"load": NOW - 300},
        steps_gone=frozenset() if ended else frozenset({"load"}),
    )
    # Not before the timeout, even when its watcher saw it end: the executor reports first.
    early = plan([run], SETTINGS, NOW + TIMEOUT - 1).due
    assert not any(isinstance(a, TerminateAndFail) for _, acts in early for a in acts)
    when = NOW + TIMEOUT
    [action] = plan([run], SETTINGS, when).due[0][1]
    assert isinstance(action, TerminateAndFail)
    assert action.reason == c.REASON_STEP_LOST == "step_lost"
    assert action.tags == {c.CRASH_CAUSE_TAG: "worker_lost", c.LOST_STEP_TAG: "load"}
    why = (
        "the step worker of 'load' (host h, pid 8) ended without finishing its step"
        if ended
        else "no heartbeat from the step worker of 'load' (host h, pid 8) for 180 seconds"
    )
    assert action.failure_message.startswith(
        f"Step 'load' worker lost (cause: worker_lost, {why}), and the step never ended."
    )
    # A step that ended (its failure or success is in the event log) is the executor's.
    done = RunFacts("r1", "job", S.STARTED, NOW - 500, NOW - 500, workers=workers)
    assert not any(
        isinstance(a, TerminateAndFail)
        for _, acts in plan([done], SETTINGS, when).due
        for a in acts
    )


def test_a_lost_step_worker_is_one_warning_and_the_run_is_left_to_its_executor():
    from dagster_run_monitor.core.model import Notice

    step = Beat("r1", "step:load", "steptok", 1, "h", 8, steps=("load",))
    workers = sights_after((NOW, [beat(1), step]), (NOW + TIMEOUT, [beat(2), step]))["r1"]
    run = RunFacts("r1", "job", S.STARTED, NOW - 500, NOW - 500, workers=workers)
    [notice] = plan([run], SETTINGS, NOW + TIMEOUT).due[0][1]
    assert isinstance(notice, Notice)
    assert notice.message == (
        "Step worker lost: no heartbeat from the step worker of 'load' (host h, pid 8) for 180"
        " seconds. The executor and the run's limits decide the run's fate."
    )
    warned = RunFacts(
        "r1",
        "job",
        S.STARTED,
        NOW - 500,
        NOW - 500,
        tags={notice.tag: notice.value},
        workers=workers,
    )
    assert plan([warned], SETTINGS, NOW + TIMEOUT).due == []  # once
    # The run worker lost too (the host went): the run's own verdict, no step warning.
    gone = sights_after((NOW, [beat(1), step]), (NOW + TIMEOUT, [beat(1), step]))["r1"]
    health = lost_health(gone, NOW + TIMEOUT)
    run = RunFacts("r1", "job", S.STARTED, NOW - 500, NOW - 500, workers=gone, health=health)
    [action] = plan([run], SETTINGS, NOW + TIMEOUT).due[0][1]
    assert isinstance(action, ResumeRun)
