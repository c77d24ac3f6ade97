"""Reliability (issue 7): several daemons, daemons killed mid-pass, the database restarted under
a daemon, hanging health checks. Real `dagster-daemon run` processes on PostgreSQL; each test
asserts what a user checks: run status, resume events, failure events, reason tags."""

import logging
import os
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._time import get_current_timestamp

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.model import ResumeRun
from dagster_run_monitor.daemon.actions import apply_actions
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor_tests.support.home import load_instance, write_home, write_home_for_url
from dagster_run_monitor_tests.support.launchers import (
    HEALTH_SLEEP_TAG,
    HEALTH_TAG,
    RACE_TAG,
    RACING_LAUNCHER,
    RECORDING_LAUNCHER,
    RESUME_SLEEP_TAG,
    TERMINATED_TAG,
    RacingRunLauncher,
    launched_attempts,
)
from dagster_run_monitor_tests.support.postgres import private_postgres
from dagster_run_monitor_tests.support.runs import (
    T0,
    current_runs,
    make_run,
    messages,
    monitor_pass,
    pool_connections,
    run_logs,
    started_runs,
    status_of,
)
from dagster_run_monitor_tests.support.subprocesses import (
    action_lines,
    daemon,
    kill_group,
    log_text,
    start_daemon,
    stop_group,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

# Runs are created event by event while daemons watch: no start timeout, a long grace for
# STARTING runs, and three resume attempts so that a second resume shows as a second event.
WATCHING = {
    "poll_interval_seconds": 1,
    "start_timeout_seconds": 0,
    "cancel_timeout_seconds": 600,
    "worker_unknown_grace_seconds": 600,
    "max_resume_run_attempts": 3,
}
DAEMON_UP = "Instance is configured with the following daemons"


class Stopwatch:
    """Prints how long each phase of a test took (the numbers reported for issue 7)."""

    def __init__(self) -> None:
        self.began = self.last = time.monotonic()

    def lap(self, what: str) -> None:
        now = time.monotonic()
        print(f"[{now - self.began:6.1f}s] +{now - self.last:5.1f}s {what}", flush=True)
        self.last = now


def fresh_instance(home: Path):
    instance = load_instance(home)
    instance.wipe()
    instance.wipe_daemon_heartbeats()
    pool_connections(instance)
    return instance


def all_launched(instance, run_ids: list[str]) -> bool:
    return all(launched_attempts(r) for r in current_runs(instance, run_ids).values())


# --- several daemons ----------------------------------------------------------------------

DAEMONS = 3
RUNS = 200
API_CALL = "0.05"  # seconds a launcher's health check or resume takes (a Kubernetes API call)


def test_three_daemons_resume_each_crash_once_and_fail_each_late_run_once(
    tmp_path, postgres_database
):
    """Three `dagster-daemon run` on one Postgres instance: 200 runs whose workers crashed,
    created while the daemons run, are resumed once each; then 200 runs past their max
    runtime, created while the daemons run, are failed once each."""
    # Three daemons on two cores: a pass every 2 seconds, 16 health checks at a time.
    config = {**WATCHING, "poll_interval_seconds": 2, "health_check_threads": 16}
    home = write_home(tmp_path / "home", config, "postgres", RECORDING_LAUNCHER)
    instance = fresh_instance(home)
    clock = Stopwatch()
    procs = [start_daemon(home, f"daemon-{i}.log") for i in range(DAEMONS)]
    try:
        wait_until(
            lambda: all(DAEMON_UP in log_text(home / f"daemon-{i}.log") for i in range(DAEMONS)),
            timeout=120,
            what=f"{DAEMONS} daemons to start",
        )
        clock.lap(f"{DAEMONS} daemons started")
        remote_api = {HEALTH_SLEEP_TAG: API_CALL, RESUME_SLEEP_TAG: API_CALL}
        crashed = started_runs(instance, RUNS, {HEALTH_TAG: "FAILED", **remote_api})
        crashed_ids = [r.run_id for r in crashed]
        clock.lap(f"{RUNS} crashed runs created")
        wait_until(
            lambda: all_launched(instance, crashed_ids),
            timeout=180,
            what=f"{RUNS} crashed runs to be resumed",
            interval=0.5,
        )
        clock.lap("the last of them resumed")
        now = get_current_timestamp()
        late = started_runs(instance, RUNS, {c.MAX_RUNTIME_TAG: "60"}, started=now - 3600)
        late_ids = [r.run_id for r in late]
        clock.lap(f"{RUNS} runs past their max runtime created")
        wait_until(
            lambda: all(r.status == S.FAILURE for r in current_runs(instance, late_ids).values()),
            timeout=180,
            what=f"{RUNS} runs past their max runtime to fail",
            interval=0.5,
        )
        clock.lap("the last of them failed")
        exited = [i for i, p in enumerate(procs) if p.poll() is not None]
        assert exited == [], f"daemons {exited} exited"
    finally:
        for proc in procs:
            stop_group(proc)  # SIGTERM: a daemon finishes the actions of its pass, then exits
    clock.lap("daemons stopped")

    # Every daemon has stopped: nothing is in flight, these are the final counts.
    logs = run_logs(instance, crashed_ids + late_ids)
    runs = current_runs(instance, crashed_ids + late_ids)
    resumed = {i: (logs[i].resumes, launched_attempts(runs[i])) for i in crashed_ids}
    wrong = {i: r for i, r in resumed.items() if r != (1, [1])}
    assert wrong == {}, (
        f"{len(wrong)} of {RUNS} crashed runs not resumed exactly once"
        f" (run: resume events, attempts whose worker was launched): {wrong}"
    )
    health = "FAILED: 'worker is failed'"
    assert all(logs[i].count(c.resuming_message(health, i)) == 1 for i in crashed_ids)
    assert all(runs[i].status == S.STARTED for i in crashed_ids)
    assert all(logs[i].failures == [] for i in crashed_ids)
    assert all(runs[i].tags[HEALTH_TAG] == "RUNNING" for i in crashed_ids)

    failures = {i: logs[i].failures for i in late_ids}
    assert {i: f for i, f in failures.items() if f != [c.max_runtime_failed_message(60)]} == {}
    canceling = c.max_runtime_canceling_message(60)
    assert {i: logs[i].count(canceling) for i in late_ids if logs[i].count(canceling) != 1} == {}
    assert all(logs[i].resumes == 0 for i in late_ids)
    assert all(runs[i].tags[c.REASON_TAG] == c.REASON_MAX_RUNTIME for i in late_ids)
    assert all(runs[i].tags[TERMINATED_TAG] == "true" for i in late_ids)

    texts = [log_text(home / f"daemon-{i}.log") for i in range(DAEMONS)]
    acted = [action_lines(t) for t in texts]
    skipped = [t.count("being handled by another daemon") for t in texts]
    print(f"actions per daemon: {acted}; runs skipped as claimed by another daemon: {skipped}")
    assert sum(1 for n in acted if n) >= 2, "the daemons never competed for the runs"
    instance.dispose()


# --- SIGKILL at random points -------------------------------------------------------------

KILLS = 20
SLOTS = 3  # daemons alive at once, each killed and restarted in turn
CRASHED = 100
MAX_DELAY = 4.0  # seconds after the controller is up: its first pass reads, checks, resumes
# One resume at a time, so that a pass spans several kills; five attempts, so that a run
# whose resume is cut short by kills more than once is still resumed, not failed.
CHAOS = {**WATCHING, "action_threads": 1, "max_resume_run_attempts": 5}
RESUME_SECONDS = "0.15"  # each resume's launch takes this long: 100 resumes outlast many kills
CUT_SHORT_WINDOW = 10.0  # a resume cut short by a kill is written this soon before it


@dataclass
class Life:
    """One daemon process, from its start to its SIGKILL."""

    number: int
    proc: subprocess.Popen
    log: Path
    delay: float
    up_at: float | None = None
    killed_at: float | None = None
    actions: int = 0


@dataclass
class Chaos:
    home: Path
    rng: random.Random
    slots: list[Life | None] = field(default_factory=lambda: [None] * SLOTS)
    lives: list[Life] = field(default_factory=list)

    def step(self) -> bool:
        """Start, watch and kill daemons; True once the last one is killed."""
        for i, life in enumerate(self.slots):
            if life is None:
                if len(self.lives) < KILLS:
                    self.slots[i] = self._start()
                continue
            assert life.proc.poll() is None, (
                f"daemon {life.number} exited by itself:\n{log_text(life.log)[-3000:]}"
            )
            if life.up_at is None and DAEMON_UP in log_text(life.log):
                life.up_at = time.monotonic()
            if life.up_at is not None and time.monotonic() >= life.up_at + life.delay:
                kill_group(life.proc)
                life.killed_at = time.time()
                life.actions = action_lines(log_text(life.log))
                self.slots[i] = None
        return len(self.lives) == KILLS and all(s is None for s in self.slots)

    def _start(self) -> Life:
        number = len(self.lives) + 1
        log = self.home / f"life-{number}.log"
        life = Life(number, start_daemon(self.home, log.name), log, self.rng.uniform(0, MAX_DELAY))
        self.lives.append(life)
        return life

    def stop(self) -> None:
        for life in self.slots:
            if life is not None:
                kill_group(life.proc)


def test_daemons_killed_at_random_points_resume_each_crash_once(tmp_path, postgres_database):
    """Three daemons at a time, each SIGKILLed at a seeded random point of its pass and replaced,
    20 kills over 100 crashed runs; then one daemon runs to the end. Every run has exactly one
    new worker, and every resume event beyond the first was cut short by a kill (written
    before the kill, its worker never launched)."""
    seed = int(os.environ.get("DAGSTER_RUN_MONITOR_CHAOS_SEED") or random.randrange(2**32))
    print(f"chaos seed {seed}: DAGSTER_RUN_MONITOR_CHAOS_SEED={seed} replays these kill delays")
    home = write_home(tmp_path / "home", CHAOS, "postgres", RECORDING_LAUNCHER)
    instance = fresh_instance(home)
    tags = {HEALTH_TAG: "FAILED", RESUME_SLEEP_TAG: RESUME_SECONDS}
    runs = started_runs(instance, CRASHED, tags)
    ids = [r.run_id for r in runs]
    chaos = Chaos(home, random.Random(seed))
    try:
        wait_until(chaos.step, timeout=300, what=f"{KILLS} kills (seed {seed})", interval=0.05)
    finally:
        chaos.stop()
    handled_by_kills = sum(bool(launched_attempts(r)) for r in current_runs(instance, ids).values())

    with daemon(home, "final.log"):
        wait_until(
            lambda: all_launched(instance, ids),
            timeout=120,
            what="the final daemon to resume the rest",
            interval=0.5,
        )
    logs = run_logs(instance, ids)
    current = current_runs(instance, ids)
    kill_times = [life.killed_at for life in chaos.lives]
    cut_short = 0
    for run_id in ids:
        run, log = current[run_id], logs[run_id]
        assert run.status == S.STARTED and run.tags[HEALTH_TAG] == "RUNNING", run_id
        # One new worker per crash: the launch of the last resume event's attempt.
        launched = launched_attempts(run)
        assert launched == [log.resumes], (
            f"run {run_id}: {log.resumes} resume events, workers launched for attempts"
            f" {launched}; one worker per crash expected (seed {seed})"
        )
        for at in log.times(c.RESUME_RUN_LOG_MESSAGE)[:-1]:
            cut_short += 1
            assert any(at <= k < at + CUT_SHORT_WINDOW for k in kill_times), (
                f"run {run_id}: a second resume event without a kill after the first (seed {seed})"
            )
    assert all(log.failures == [] for log in logs.values())
    acting = sum(1 for life in chaos.lives if life.actions)
    events = sum(log.resumes for log in logs.values())
    print(
        f"{CRASHED} crashed runs, {KILLS} SIGKILLs ({acting} of daemons that had acted),"
        f" {handled_by_kills} runs resumed by the killed daemons, {events} resume events,"
        f" {cut_short} resumes cut short by a kill between their event and their launch"
    )
    instance.dispose()


# --- PostgreSQL restarted under a daemon --------------------------------------------------

# A pooled connection the shutdown closed, a new one refused, Dagster's retries given up.
DB_ERROR = (
    "server closed the connection unexpectedly",
    "Connection refused",
    "too many retries for DB connection",
)


def test_daemon_survives_a_postgres_restart(tmp_path):
    """A private cluster is stopped while the daemon runs, then started again: the daemon keeps
    running, logs and reports the error in a heartbeat, and monitors again by itself."""
    with private_postgres() as cluster:
        home = write_home_for_url(tmp_path / "home", WATCHING, RECORDING_LAUNCHER, cluster.url)
        instance = load_instance(home)
        now = get_current_timestamp()
        healthy = [make_run(instance, S.STARTED, created=now - 60) for _ in range(5)]
        before = make_run(instance, S.STARTED, created=now - 60, tags={HEALTH_TAG: "FAILED"})
        healthy_events = {r.run_id: len(instance.all_logs(r.run_id)) for r in healthy}
        log = home / "daemon.log"
        with daemon(home) as proc:
            wait_until(
                lambda: launched_attempts(instance.get_run_by_id(before.run_id)) == [1],
                timeout=90,
                what="the daemon to resume a run crashed before the outage",
            )
            cluster.stop()
            seen = len(log_text(log))
            wait_until(
                lambda: "RunMonitorDaemon - ERROR" in log_text(log)[seen:],
                timeout=90,
                what="the daemon to log the database error",
            )
            assert proc.poll() is None, "the daemon died with the database"
            outage_log = log_text(log)[seen:]
            cluster.start()
            restarted = time.time()
            after = make_run(instance, S.STARTED, created=now - 60, tags={HEALTH_TAG: "FAILED"})
            wait_until(
                lambda: launched_attempts(instance.get_run_by_id(after.run_id)) == [1],
                timeout=90,
                what="the daemon to resume a run crashed after the restart",
            )
            heartbeat = wait_until(
                lambda: (
                    (hb := instance.get_daemon_heartbeats().get(c.DAEMON_TYPE))
                    and hb.timestamp > restarted
                    and hb
                ),
                timeout=75,  # the daemon writes a heartbeat every 30 seconds
                what="a RUN_MONITOR heartbeat after the restart",
            )
            assert proc.poll() is None, "the daemon died after the restart"
        assert any(e in outage_log for e in DB_ERROR), outage_log[-3000:]
        reported = "\n".join(e.to_string() for e in heartbeat.errors)
        assert any(e in reported for e in DB_ERROR), reported or "no errors in the heartbeat"
        for run in healthy:
            assert status_of(instance, run.run_id) == S.STARTED
            assert len(instance.all_logs(run.run_id)) == healthy_events[run.run_id]
        for run in (before, after):
            assert messages(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1
        instance.dispose()


# --- hanging health checks ----------------------------------------------------------------


def test_hanging_health_checks_hold_up_only_their_own_runs(make_instance, workspace_context):
    """Health checks of three runs hang far past health_check_timeout_seconds: the other
    crashed runs are resumed within the pass, the hanging ones are left alone (no answer is
    no evidence) and handled on the next pass, once their checks answer."""
    config = {"health_check_timeout_seconds": 1, "worker_unknown_grace_seconds": 60}
    with make_instance(run_monitoring=config) as instance:
        crashed = [make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED"}) for _ in range(8)]
        hanging = [
            make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED", HEALTH_SLEEP_TAG: "30"})
            for _ in range(3)
        ]
        events_before = {r.run_id: len(messages(instance, r.run_id)) for r in hanging}
        monitor = RunMonitorDaemon.from_instance(instance)
        with workspace_context(instance) as ctx:
            began = time.monotonic()
            errors = monitor_pass(instance, ctx, now=T0, daemon=monitor)
            elapsed = time.monotonic() - began
            assert elapsed < 15, f"the pass waited {elapsed:.1f}s for hanging checks"
            for run in crashed:
                assert messages(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1
            for run in hanging:
                assert status_of(instance, run.run_id) == S.STARTED
                assert len(messages(instance, run.run_id)) == events_before[run.run_id]
            assert any("health check" in e.message.lower() for e in errors), errors

            for run in hanging:  # the launcher's API answers again
                instance.add_run_tags(run.run_id, {HEALTH_SLEEP_TAG: "0"})
            monitor_pass(instance, ctx, now=T0 + 5, daemon=monitor)
            monitor_pass(instance, ctx, now=T0 + 10, daemon=monitor)
        for run in crashed + hanging:
            assert messages(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1
            assert status_of(instance, run.run_id) == S.STARTED


# --- a resume by another daemon in the middle of a pass -----------------------------------


def pass_while_another_daemon_resumes(instance, workspace_context) -> list:
    """Daemon B's pass (its errors), during whose health check daemon A resumes the run."""
    with workspace_context(instance) as ctx:

        def daemon_a_resumes(raced) -> None:
            message = c.resuming_message("FAILED: 'worker is failed'", raced.run_id)
            apply_actions(
                instance,
                instance.get_run_by_id(raced.run_id),
                [ResumeRun(1, message)],
                ctx.create_request_context,
                logging.getLogger("daemon_a"),
            )

        RacingRunLauncher.race = daemon_a_resumes
        try:
            return monitor_pass(instance, ctx)  # daemon B
        finally:
            RacingRunLauncher.race = None


def test_a_resume_between_health_check_and_resume_count_is_not_repeated(
    make_instance, workspace_context
):
    """Daemon B reads a crashed worker's health; daemon A resumes the run (event, then the new
    worker) before B counts the run's resumes. B's facts then say "crashed, resumed once":
    B must not launch a second worker for the same crash."""
    with make_instance(launcher=RACING_LAUNCHER) as instance:
        run = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED", RACE_TAG: "1"})
        errors = pass_while_another_daemon_resumes(instance, workspace_context)
        assert errors == []
        assert launched_attempts(instance.get_run_by_id(run.run_id)) == [1]
        assert messages(instance, run.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1


def test_a_resume_between_health_check_and_the_final_failure_keeps_the_new_worker(
    make_instance, workspace_context
):
    """One resume allowed. Daemon B reads a crashed worker's health; daemon A resumes the run
    before B counts its resumes. B's facts then say "crashed, no resume left": B must not fail
    the run its new worker now runs (a worker event after the final failure, seen once in
    test_process_launcher)."""
    with make_instance(
        launcher=RACING_LAUNCHER, run_monitoring={"max_resume_run_attempts": 1}
    ) as instance:
        run = make_run(instance, S.STARTED, tags={HEALTH_TAG: "FAILED", RACE_TAG: "1"})
        errors = pass_while_another_daemon_resumes(instance, workspace_context)
        assert errors == []
        assert status_of(instance, run.run_id) == S.STARTED
        assert launched_attempts(instance.get_run_by_id(run.run_id)) == [1]
