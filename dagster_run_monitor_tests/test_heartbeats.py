"""Heartbeats from inside real workers under Dagster's DefaultRunLauncher (run workers are
children of the code server), judged by the stock `dagster-daemon run`: a lost host, the
stacks on an action, a C call holding the GIL."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.config.dagster_yaml import instance_config, write_dagster_yaml
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.heartbeats import RUN_WORKER, Beat, beat_key
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor.storage.heartbeats import read_beats, read_stacks
from dagster_run_monitor_tests.support.home import load_instance
from dagster_run_monitor_tests.support.postgres import pg_url
from dagster_run_monitor_tests.support.runs import messages, status_of, tags_of
from dagster_run_monitor_tests.support.subprocesses import (
    BIN,
    log_text,
    process_env,
    running,
    wait_until,
)

pytestmark = pytest.mark.slow

MODULE = "dagster_run_monitor_tests.heartbeat_jobs"
BEATS = {"interval_seconds": 1, "timeout_seconds": 5}
QUEUED = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}


def default_launcher_home(home: Path, storage: str) -> Path:
    """Dagster's DefaultRunLauncher behind the QueuedRunCoordinator, our monitor on."""
    monitoring = {
        "poll_interval_seconds": 1,
        "max_resume_run_attempts": 0,  # DefaultRunLauncher cannot resume
        "worker_heartbeats": BEATS,
    }
    url = pg_url() if storage == "postgres" else None
    config = instance_config(monitoring, None, url, run_coordinator=QUEUED)
    return write_dagster_yaml(home, config)


def launch(home: Path, job: str, tags: dict[str, str] | None = None) -> str:
    run_id = str(uuid.uuid4())
    args = [str(BIN / "dagster"), "job", "launch", "-m", MODULE, "-j", job, "--run-id", run_id]
    if tags:
        args += ["--tags", json.dumps(tags)]
    subprocess.run(args, env=process_env(home), cwd=home, check=True, capture_output=True)
    return run_id


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = parent_of(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    found = [pid]
    for p in found:
        found += [child for child, parent in parents.items() if parent == p]
    return found


def zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def heal(instance, run_id: str, worker: int, partitioned: list[int]) -> None:
    """After the monitor failed the cut-off run, its processes run again: the run worker
    (``multiprocess``) first, with an interrupt pending (a kubelet sends SIGTERM when the pod is
    deleted, which Dagster's CLI maps to SIGINT; the code server's run subprocess here takes
    SIGINT), before its watcher can beat. The worker finds its row taken over and stops,
    writing nothing more (found by the soak on Kubernetes: Dagster's termination handler wrote
    "received termination signal" first)."""
    wait_until(lambda: status_of(instance, run_id) == S.FAILURE, 30, "the cut-off's failure")
    assert tags_of(instance, run_id)[c.REASON_TAG] == c.REASON_WORKER_LOST
    written = len(instance.all_logs(run_id))

    def from_the_worker() -> list[tuple[int | None, str]]:
        later = instance.all_logs(run_id)[written:]
        return [(e.dagster_event.pid if e.dagster_event else None, e.message) for e in later]

    os.kill(worker, signal.SIGINT)
    os.kill(worker, signal.SIGCONT)
    wait_until(lambda: zombie(worker) or from_the_worker(), 10, "the worker to stop or write")
    for pid in partitioned:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:  # the worker, stopped and reaped
            pass
    wait_until(lambda: zombie(worker), 10, "the returning worker to stop")
    assert [(pid, message) for pid, message in from_the_worker() if pid in partitioned] == []


ENDED = (S.FAILURE, S.CANCELED)


def stacked(instance, run_id: str, starts: str) -> str | None:
    """The run's message that starts so and carries the worker's stack, once written."""
    found = [m for m in messages(instance, run_id) if m.startswith(starts)]
    return next((m for m in found if "in wait_for_partner_api" in m), None)


def run_worker_beat(instance, run_id: str) -> Beat | None:
    beats = read_beats(instance) or []
    return next((b for b in beats if b.run_id == run_id and b.worker == RUN_WORKER), None)


def failure_message(instance, run_id: str) -> str:
    return next(
        m for m in reversed(messages(instance, run_id)) if "Marking run" in m or "Exceeded" in m
    )


def test_default_launcher_lost_host_stacks_and_a_gil_holding_call(tmp_path, storage, monkeypatch):
    monkeypatch.setenv("HOLD_THE_GIL_SECONDS", "20")  # 4 x the timeout
    home = default_launcher_home(tmp_path / "home", storage)
    instance = load_instance(home)
    if storage == "postgres":
        instance.wipe()
    daemon_args = [str(BIN / "dagster-daemon"), "run", "-m", MODULE]
    with running(daemon_args, home, "daemon.log"):
        gil = launch(home, "holds_the_gil")
        too_long = launch(home, "waits", {c.MAX_RUNTIME_TAG: "8"})
        step_too_long = launch(home, "waits_in_step_worker", {c.MAX_RUNTIME_TAG: "10"})
        hung = launch(home, "waits", {c.HANG_TIMEOUT_TAG: "6"})
        step_timeout = launch(home, "waits", {c.MAX_STEP_RUNTIME_TAG: "6"})
        stalled = launch(home, "waits", {c.STALL_TIMEOUT_TAG: "6"})
        busy = launch(home, "spins", {c.HANG_TIMEOUT_TAG: "6"})
        lost = launch(home, "waits")
        beat = wait_until(lambda: run_worker_beat(instance, lost), 90, "the run worker's beat")
        # A partition (PostgreSQL: a SQLite database has one host, and a frozen writer would
        # hold its lock): the worker and its watcher stop (SIGSTOP) until the run is taken over.
        if storage == "postgres":
            cut_off = launch(home, "waits_in_step_worker")
            away = wait_until(lambda: run_worker_beat(instance, cut_off), 90, "the other's beat")
            partitioned = tree(away.pid)
            for pid in partitioned:
                os.kill(pid, signal.SIGSTOP)

        # A C call holding the GIL for 4 x the timeout: the watcher beats on, the run succeeds.
        wait_until(
            lambda: status_of(instance, gil) in (S.SUCCESS, S.FAILURE), 120, "the GIL run's end"
        )
        assert status_of(instance, gil) == S.SUCCESS
        assert not any("heartbeat" in m for m in messages(instance, gil))

        # Max runtime, step timeout, stall, hang (blocked on a lock): each failure says where
        # the worker was; with the multiprocess executor, where its step worker was.
        for run_id, reason, starts, worker in (
            (too_long, c.REASON_MAX_RUNTIME, "Exceeded", "The run worker (host"),
            (step_too_long, c.REASON_MAX_RUNTIME, "Exceeded", "The step worker of 'load' (host"),
            (step_timeout, c.REASON_STEP_TIMEOUT, "Step load has run for", "The run worker"),
            (stalled, c.REASON_STALLED, "Run stalled", "The run worker"),
            (hung, c.REASON_HUNG, "Run hung", "The run worker"),
        ):
            message = wait_until(lambda r=run_id, s=starts: stacked(instance, r, s), 60, starts)
            assert worker in message
            assert tags_of(instance, run_id)[c.REASON_TAG] == reason
            # (ended: FAILURE, or CANCELED where the worker, told to stop, ended it first)
            wait_until(lambda r=run_id: status_of(instance, r) in ENDED, 30, "its end")

        # A busy loop writing no events for longer than the hang timeout is not hung.
        wait_until(lambda: status_of(instance, busy) in (S.SUCCESS, S.FAILURE), 60, "the spin")
        assert status_of(instance, busy) == S.SUCCESS

        # The partition heals after the monitor failed the run: the worker stops itself.
        if storage == "postgres":
            heal(instance, cut_off, away.pid, partitioned)

        # `explain` shows what a live run's workers are doing now.
        def explained() -> str:
            args = [str(BIN / "dagster-run-monitor"), "explain", lost]
            done = subprocess.run(args, env=process_env(home), capture_output=True, text=True)
            return done.stdout if "in wait_for_partner_api" in done.stdout else ""

        output = wait_until(explained, 30, "explain to show the stack")
        assert f"run worker: host {socket.gethostname()}, pid {beat.pid}" in output
        # and its memory now (a local process: its process tree, no limit)
        assert re.search(
            r"^Memory of the run worker: \d+Mi \(no limit\), peak \d+Mi$", output, re.M
        )

        # A lost host: the code server, its run worker and the watcher die at once.
        doomed = tree(parent_of(beat.pid))
        for pid in doomed:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: status_of(instance, lost) == S.FAILURE, 30, "the lost run's failure")

    message = failure_message(instance, lost)
    where = f"the run worker (host {socket.gethostname()}, pid {beat.pid})"
    assert f"Detected run worker status FAILED: 'no heartbeat from {where} for" in message
    assert "last seen in step 'load'" in message
    assert "in wait_for_partner_api" in message
    print(message)
    tags = tags_of(instance, lost)
    assert tags[c.REASON_TAG] == c.REASON_WORKER_LOST
    assert tags[c.CRASH_CAUSE_TAG] == "worker_lost"
    assert run_worker_beat(instance, lost).fenced  # a worker coming back would stop itself


PROCESS_LAUNCHER = {"module": "dagster_run_monitor", "class": "ProcessRunLauncher"}
LAUNCH_FROM_OTHER_HOST = """
import sys
from dagster import DagsterInstance
from dagster._core.definitions.reconstruct import ReconstructableRepository
repo = ReconstructableRepository.for_module(sys.argv[1], "defs")
recon = repo.get_reconstructable_job("blocks_once")
with DagsterInstance.get() as instance:
    run = instance.create_run_for_job(
        job_def=recon.get_definition(),
        job_code_origin=recon.get_python_origin(),
        run_id=sys.argv[2],
    )
    instance.launch_run(run.run_id, workspace=None)
"""


def test_a_process_worker_on_another_host_is_alive_while_it_beats_then_lost_and_resumed(
    tmp_path, storage, monkeypatch, workspace_context
):
    """ProcessRunLauncher cannot see a worker on another host (UNKNOWN): its beats keep it
    alive; once they stop, the run is resumed, here on this host, and succeeds."""
    monkeypatch.setenv("BLOCK_ONCE_FLAG", str(tmp_path / "blocked-once"))
    monitoring = {
        "poll_interval_seconds": 1,
        "worker_unknown_grace_seconds": 0,  # UNKNOWN alone would count as a crash at once
        "max_resume_run_attempts": 1,
        "worker_heartbeats": BEATS,
    }
    url = pg_url() if storage == "postgres" else None
    launcher = {**PROCESS_LAUNCHER, "config": {"log_dir": str(tmp_path / "logs")}}
    home = write_dagster_yaml(tmp_path / "home", instance_config(monitoring, launcher, url))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", process_env(home)["PYTHONPATH"])  # the resume's worker
    instance = load_instance(home)
    if storage == "postgres":
        instance.wipe()
    run_id = str(uuid.uuid4())
    launch_there = f"exec {sys.executable} -c '{LAUNCH_FROM_OTHER_HOST}' {MODULE} {run_id}"
    script = f"hostname other-host && {launch_there}"
    subprocess.run(["unshare", "-u", "sh", "-c", script], env=process_env(home), check=True)
    daemon = RunMonitorDaemon.from_instance(instance)
    with workspace_context(instance) as context:

        def passes_until(done, timeout, what):
            def one_pass():
                errors = [e for e in daemon.monitor_runs(context) if e is not None]
                assert errors == [], errors
                return done()

            return wait_until(one_pass, timeout, what, interval=0.5)

        # (no pass yet: a STARTING run's UNKNOWN worker fails at once with no grace)
        beat = wait_until(lambda: run_worker_beat(instance, run_id), 60, "the worker's beat")
        assert beat.host == "other-host" and status_of(instance, run_id) == S.STARTED
        assert tags_of(instance, run_id)[c.WORKER_HOST_TAG] == "other-host"
        deadline = time.monotonic() + 3 * BEATS["interval_seconds"]
        passes_until(lambda: time.monotonic() > deadline, 30, "passes while it beats")
        assert status_of(instance, run_id) == S.STARTED  # UNKNOWN, but beating
        os.killpg(beat.pid, signal.SIGKILL)  # the worker and its watcher: the host is gone
        passes_until(lambda: status_of(instance, run_id) == S.SUCCESS, 90, "the resumed run")
    log = messages(instance, run_id)
    lost = [m for m in log if "no heartbeat from the run worker (host other-host" in m]
    assert len(lost) == 1 and "Resuming run" in lost[0]
    assert log.count(c.RESUME_RUN_LOG_MESSAGE) == 1
    assert tags_of(instance, run_id)[c.CRASH_CAUSE_TAG] == "worker_lost"


def test_a_storage_outage_twice_the_timeout_fails_no_run(tmp_path):
    """PostgreSQL stopped for 2 x the timeout under 20 beating runs (real watcher processes):
    neither the beats nor the daemon reach it; afterwards no run is failed."""
    from dagster_run_monitor.core.heartbeats import stack_key
    from dagster_run_monitor.worker.beats import WATCHER
    from dagster_run_monitor_tests.support.postgres import private_postgres
    from dagster_run_monitor_tests.support.runs import make_run

    monitoring = {"poll_interval_seconds": 1, "worker_heartbeats": BEATS}
    with private_postgres() as cluster:
        home = write_dagster_yaml(tmp_path / "home", instance_config(monitoring, None, cluster.url))
        instance = load_instance(home)
        runs = [make_run(instance, S.STARTED) for _ in range(20)]
        watchers = []
        for run in runs:
            settings = {
                "database": "postgres",
                "target": cluster.url,
                "key": beat_key(run.run_id),
                "stack_key": stack_key(run.run_id),
                "token": run.run_id[:8],
                "pid": os.getpid(),  # this test stands in for the workers
                "host": "worker-host",
                "interval": BEATS["interval_seconds"],
            }
            watcher = subprocess.Popen([sys.executable, WATCHER], stdin=subprocess.PIPE)
            watcher.stdin.write((json.dumps(settings) + "\n").encode())
            watcher.stdin.flush()
            watchers.append(watcher)
        try:
            with running([str(BIN / "dagster-daemon"), "run", "--empty-workspace"], home, "d.log"):
                for run in runs:
                    wait_until(lambda r=run: run_worker_beat(instance, r.run_id), 30, "beats")
                cluster.stop()
                time.sleep(2 * BEATS["timeout_seconds"])  # the outage
                cluster.start()
                seq = {r.run_id: run_worker_beat(instance, r.run_id).seq for r in runs}
                wait_until(
                    lambda: all(run_worker_beat(instance, i).seq > s for i, s in seq.items()),
                    30,
                    "beats again",
                )
                until = time.monotonic() + BEATS["timeout_seconds"] + 3  # passes after it
                wait_until(lambda: time.monotonic() > until, 30, "passes after the outage")
            assert [status_of(instance, r.run_id) for r in runs] == [S.STARTED] * 20
            assert not any("heartbeat" in m for r in runs for m in messages(instance, r.run_id))
            assert "failed database connection" in log_text(home / "d.log")  # it saw the outage
        finally:
            for watcher in watchers:
                watcher.stdin.write(b"stop\n")
                watcher.stdin.close()
                watcher.wait(10)
        instance.dispose()


def test_a_step_worker_lost_while_its_run_worker_beats_is_one_warning(tmp_path, postgres_database):
    """The multiprocess executor's step worker and its watcher stop (SIGSTOP: on PostgreSQL,
    since a frozen SQLite writer would hold the database's lock) while the run worker beats on:
    one warning naming the step, with its stack; the run is left to its executor."""
    home = default_launcher_home(tmp_path / "home", "postgres")
    instance = load_instance(home)
    instance.wipe()
    with running([str(BIN / "dagster-daemon"), "run", "-m", MODULE], home, "daemon.log"):
        run_id = launch(home, "waits_in_step_worker")

        def step_beat() -> Beat | None:
            beats = read_beats(instance) or []
            return next((b for b in beats if b.run_id == run_id and b.worker == "step:load"), None)

        step = wait_until(step_beat, 90, "the step worker's beat")
        wait_until(
            lambda: "wait_for_partner_api" in read_stacks(instance, [run_id])[run_id]["step:load"],
            30,
            "the step worker's stack",
        )
        stopped = tree(step.pid)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            warned = wait_until(
                lambda: [m for m in messages(instance, run_id) if m.startswith("Step worker lost")],
                30,
                "the warning",
            )
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        assert status_of(instance, run_id) == S.STARTED
    [message] = warned
    assert message.startswith(
        f"Step worker lost: no heartbeat from the step worker of 'load' (host"
        f" {socket.gethostname()}, pid {step.pid}) for 5 seconds."
    )
    assert "in wait_for_partner_api" in message


ORPHAN_CHILD = """
import json, os, subprocess, sys, time
settings = json.loads(sys.argv[1])
settings.update(pid=os.getpid(), parent=os.getppid())  # a multiprocess child of its run worker
watcher = subprocess.Popen([sys.executable, sys.argv[2]], stdin=subprocess.PIPE)
watcher.stdin.write((json.dumps(settings) + "\\n").encode())
watcher.stdin.flush()
print("watched", flush=True)
time.sleep(300)
"""
RUN_WORKER_OF = "import subprocess, sys, time; subprocess.Popen({!r}); time.sleep(300)"


def test_an_orphaned_child_stopped_before_its_first_beat_leaves_no_row(make_instance):
    """The run worker dies before its multiprocess child's first beat: the child's watcher
    stops it and writes nothing (found by the soak: an 'ended' row written after the resume
    took the run over was judged a lost step worker of the resumed run, which was failed)."""
    from dagster_run_monitor.core.heartbeats import stack_key
    from dagster_run_monitor.integration.internals import run_storage_database
    from dagster_run_monitor_tests.support.runs import make_run

    with make_instance(run_monitoring={"worker_heartbeats": BEATS}) as instance:
        run = make_run(instance, S.STARTED)
        database, target = run_storage_database(instance)
        settings = {
            "database": database,
            "target": target,
            "key": beat_key(run.run_id, "step:s4"),
            "stack_key": stack_key(run.run_id, "step:s4"),
            "memory_key": f"run_monitor/memory/{run.run_id}/step:s4/t",
            "token": "orphan",
            "host": socket.gethostname(),
            "interval": BEATS["interval_seconds"],
        }
        from dagster_run_monitor.worker.beats import WATCHER

        child = [sys.executable, "-c", ORPHAN_CHILD, json.dumps(settings), WATCHER]
        run_worker = subprocess.Popen(
            [sys.executable, "-c", RUN_WORKER_OF.format(child)],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert run_worker.stdout.readline().strip() == b"watched"  # its first beat 1.5 s away
        run_worker.kill()
        run_worker.wait(10)
        time.sleep(4)  # the watcher's ticks: the orphan stopped, its end seen
        assert [b for b in read_beats(instance) if b.run_id == run.run_id] == []
