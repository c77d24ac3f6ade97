"""The worker side: which processes beat, inert when off, never raising, the watcher's end."""

import os
import signal
import subprocess
import sys
import time

import pytest
from dagster import MetadataValue
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.core.heartbeats import RUN_WORKER
from dagster_run_monitor.launchers.process.processes import is_alive
from dagster_run_monitor.storage.heartbeats import forget, read_beats, take_over
from dagster_run_monitor.worker import beats
from dagster_run_monitor_tests.support.frozen_worker import CHILD
from dagster_run_monitor_tests.support.home import load_instance, write_home
from dagster_run_monitor_tests.support.runs import make_run, messages
from dagster_run_monitor_tests.support.subprocesses import process_env, wait_until

FROZEN_WORKER = "dagster_run_monitor_tests.support.frozen_worker"

QUICK = {"worker_heartbeats": {"interval_seconds": 1, "timeout_seconds": 5}}


def started(pid: int) -> dict:
    return {"pid": MetadataValue.text(str(pid))}


def rows(instance, run_id: str) -> list:
    return [b for b in read_beats(instance) or [] if b.run_id == run_id]


def test_only_this_process_as_a_run_worker_beats_and_a_clean_end_leaves_nothing(make_instance):
    with make_instance(run_monitoring=QUICK) as instance:
        beats.run_worker_started(instance, "other", started(os.getpid() + 1))  # another pid
        beats.run_worker_started(instance, "step", {**started(os.getpid()), "step_keys": "[a]"})
        assert os.getpid() not in beats._BEATING
        beats.run_worker_started(instance, "r1", started(os.getpid()))
        beats.run_worker_started(instance, "r2", started(os.getpid()))  # one per process
        watcher = beats._BEATING[os.getpid()].process
        beat = wait_until(lambda: rows(instance, "r1"), 10, "the beat")[0]
        assert (beat.worker, beat.pid) == (RUN_WORKER, os.getpid())
        assert rows(instance, "r2") == [] and rows(instance, "other") == []
        beats.disposed(instance)
        assert watcher.wait(10) == 0
        assert rows(instance, "r1") == []  # a clean end removes its rows


def test_inert_when_heartbeats_are_off(make_instance):
    off = {"worker_heartbeats": {"enabled": False}}
    with make_instance(run_monitoring=off) as instance:
        beats.run_worker_started(instance, "r1", started(os.getpid()))
        assert os.getpid() not in beats._BEATING


def test_hooks_never_raise_into_the_run(make_instance):
    with make_instance(run_monitoring=QUICK) as instance:
        beats.run_worker_started(instance, "r1", None)
        beats.run_worker_started(instance, "r1", {"pid": object()})
        beats.event_handled(instance, object())
        beats.disposed(None)
        assert os.getpid() not in beats._BEATING


WORKER = """
import os, sys, time
from dagster import DagsterInstance, MetadataValue
from dagster_run_monitor.worker import beats
instance = DagsterInstance.get()
beats.run_worker_started(instance, sys.argv[1], {"pid": MetadataValue.text(str(os.getpid()))})
print("beating", beats._BEATING[os.getpid()].process.pid, flush=True)
time.sleep(600)
"""


def test_the_watcher_sees_its_worker_die_at_once(tmp_path):
    home = write_home(tmp_path / "home", QUICK)
    instance = load_instance(home)
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, "r1"], env=process_env(home), stdout=subprocess.PIPE
    )
    assert worker.stdout.readline().startswith(b"beating ")
    wait_until(lambda: rows(instance, "r1"), 10, "the beat")
    os.kill(worker.pid, signal.SIGKILL)  # the worker alone: its watcher lives on
    worker.wait(10)
    [beat] = wait_until(lambda: [b for b in rows(instance, "r1") if b.ended], 5, "the end")
    assert beat.pid == worker.pid
    instance.dispose()


@pytest.mark.parametrize("taken_over", [False, True])
def test_a_worker_dead_before_its_first_beat_never_writes_over_the_monitors_row(
    tmp_path, taken_over
):
    """The monitor may see the worker dead and resume (fencing the row) before the watcher
    notices: its late ``ended`` must not read as the new worker's loss (seen in CI)."""
    home = write_home(tmp_path / "home", QUICK)
    instance = load_instance(home)
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, "r1"], env=process_env(home), stdout=subprocess.PIPE
    )
    watcher_pid = int(worker.stdout.readline().split()[1])  # its first beat is 1.5 s away
    if taken_over:
        take_over(instance, "r1", 1000.0)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    wait_until(lambda: not is_alive(watcher_pid), 10, "the watcher's end")
    [beat] = rows(instance, "r1")
    if taken_over:
        assert beat.fenced and not beat.ended
    else:
        assert beat.ended and beat.pid == worker.pid
    instance.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["run", "child"])
def test_a_thawed_worker_whose_run_was_taken_over_or_ended_elsewhere_writes_nothing(
    tmp_path, postgres_database, kind
):
    """A worker stopped (SIGSTOP) while its run was taken over, its watcher still stopped when
    it runs again, writes no event and stops (found by the soak on Kubernetes):
    - ``run``: the run ended elsewhere meanwhile (a resumed worker failed it, and the daemon
      removed the run's rows): no row is left to be fenced;
    - ``child``: a ``multiprocess`` child whose run was resumed: its row removed (a child is
      never adopted) and its run worker's fenced.
    On PostgreSQL: a watcher stopped while it writes would hold a SQLite database's lock."""
    home = write_home(tmp_path / "home", QUICK, "postgres")
    instance = load_instance(home)
    run = make_run(instance, S.STARTED)
    name = RUN_WORKER if kind == "run" else CHILD
    written = f"written by {name}"
    fifo = tmp_path / "tell"
    os.mkfifo(fifo)
    worker = subprocess.Popen(
        [sys.executable, "-m", FROZEN_WORKER, run.run_id, kind, str(fifo)],
        env=process_env(home),
        start_new_session=True,
    )
    tell = open(fifo, "w")  # noqa: SIM115 (open until the worker has read its last line)

    def write() -> None:
        tell.write("write\n")
        tell.flush()

    stopped: list[int] = []
    try:
        write()  # while its run is its own, it writes
        wait_until(lambda: written in messages(instance, run.run_id), 60, "the first event")
        [beat] = wait_until(
            lambda: [b for b in rows(instance, run.run_id) if b.worker == name], 30, "its beat"
        )
        stopped = [beat.pid, *children(beat.pid)]  # the worker and its watcher
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        if kind == "run":
            instance.report_run_failed(instance.get_run_by_id(run.run_id), "Failed elsewhere.")
            forget(instance, [run.run_id])
        else:
            take_over(instance, run.run_id, time.time())
        time.sleep(3 * QUICK["worker_heartbeats"]["interval_seconds"])  # longer than it may
        os.kill(beat.pid, signal.SIGCONT)  # its watcher stays stopped
        write()
        wait_until(
            lambda: not is_alive(beat.pid) or messages(instance, run.run_id).count(written) > 1,
            30,
            "the thawed worker to stop, or to write",
        )
        assert messages(instance, run.run_id).count(written) == 1
        assert not is_alive(beat.pid)
    finally:
        tell.close()
        os.killpg(worker.pid, signal.SIGKILL)
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        worker.wait(10)
        instance.dispose()


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as found:
        return [int(child) for child in found.read().split()]
