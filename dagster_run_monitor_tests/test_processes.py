"""Process identity and worker health of ProcessRunLauncher, with real OS processes."""

import signal
import subprocess
import sys
import time

import pytest
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.launchers.process.processes import (
    describe_exit,
    hostname,
    is_alive,
    start_ticks,
    stop_group,
)
from dagster_run_monitor_tests.support.home import monitor_instance
from dagster_run_monitor_tests.support.runs import make_run

LAUNCHER = {"module": "dagster_run_monitor", "class": "ProcessRunLauncher"}


@pytest.fixture
def sleeper():
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    yield process
    process.kill()
    process.wait()


def test_pid_reuse_and_zombies_are_not_mistaken_for_a_live_worker(sleeper):
    ticks = start_ticks(sleeper.pid)
    assert ticks and is_alive(sleeper.pid, ticks)
    assert not is_alive(sleeper.pid, ticks + 1)  # same pid, another process: reused
    sleeper.send_signal(signal.SIGKILL)
    state = None
    for _ in range(100):  # killed but not reaped: a zombie (at most 5 s)
        with open(f"/proc/{sleeper.pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        time.sleep(0.05)
    assert state == "Z"
    assert not is_alive(sleeper.pid, ticks)


def test_stop_group_escalates_to_sigkill():
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(60)",
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stubborn.stdout.readline().strip() == "ready"
    ticks = start_ticks(stubborn.pid)
    assert stop_group(stubborn.pid, ticks, grace_seconds=0.5) == "killed"
    assert stubborn.wait(5) == -signal.SIGKILL
    assert stop_group(stubborn.pid, ticks, grace_seconds=0.5) == "gone"


def test_exit_descriptions():
    assert describe_exit(-9) == "was killed by signal SIGKILL"
    assert describe_exit(3) == "exited with code 3"


def worker_tags(pid, **extra):
    return {
        c.WORKER_PID_TAG: str(pid),
        c.WORKER_HOST_TAG: hostname(),
        c.WORKER_START_TAG: str(start_ticks(pid) or ""),
        **extra,
    }


def test_health_of_a_local_worker(sleeper):
    with monitor_instance(launcher=LAUNCHER) as instance:
        launcher = instance.run_launcher
        health = lambda tags: launcher.check_run_worker_health(  # noqa: E731
            make_run(instance, S.STARTED, tags=tags)
        )
        assert health({}).status == WorkerStatus.NOT_FOUND
        assert health(worker_tags(sleeper.pid)).status == WorkerStatus.RUNNING
        elsewhere = health({**worker_tags(sleeper.pid), c.WORKER_HOST_TAG: "other-host"})
        assert elsewhere.status == WorkerStatus.UNKNOWN and "other-host" in elsewhere.msg
        tags = worker_tags(sleeper.pid)
        sleeper.kill()
        sleeper.wait()
        gone = health(tags)
        assert gone.status == WorkerStatus.FAILED and "exit status was not recorded" in gone.msg
        killed = health({**tags, c.WORKER_EXIT_TAG: f"{sleeper.pid}:-9"})
        assert killed.status == WorkerStatus.FAILED
        assert killed.msg == f"Run worker process {sleeper.pid} was killed by signal SIGKILL."
        previous_worker = health({**tags, c.WORKER_EXIT_TAG: "1:0"})  # another pid's status
        assert previous_worker.status == WorkerStatus.FAILED
        assert (
            health({**tags, c.WORKER_EXIT_TAG: f"{sleeper.pid}:0"}).status == WorkerStatus.SUCCESS
        )
