"""A step process killed by the kernel's OOM killer in its memory cgroup, for real (root: the
tests make a cgroup with a limit and a process that allocates past it), told apart from a
SIGKILL by someone else."""

import os
import signal
import subprocess
import sys

import pytest

from dagster_run_monitor.launchers.process.executor import step_process_cause
from dagster_run_monitor.worker.memory_reader import OomWatch, memory_cgroup
from dagster_run_monitor_tests.support import cgroups
from dagster_run_monitor_tests.support.subprocesses import wait_until

HOG = """
import os, sys, time
open(os.path.join(sys.argv[1], "cgroup.procs"), "w").write(str(os.getpid()))
time.sleep(float(sys.argv[2]))
hog = bytearray(300 * 2**20)
for i in range(0, len(hog), 4096):
    hog[i] = 1
"""


@pytest.mark.parametrize("version", [1, 2])
def test_an_oom_kill_in_the_processs_cgroup_is_oom_killed_and_a_plain_sigkill_is_not(version):
    why = cgroups.unavailable(version)
    if why:
        pytest.skip(why)
    name = f"run-monitor-cgroup-test-{os.getpid()}-{version}"
    with cgroups.memory_cgroup(version, 100 * 2**20, name) as cgroup:
        hog = subprocess.Popen([sys.executable, "-c", HOG, str(cgroup), "1"])
        watch = OomWatch()
        watch.look(hog.pid)  # at launch: the parent's cgroup
        wait_until(
            lambda: watch.look(hog.pid) or memory_cgroup(hog.pid) == str(cgroup),
            10,
            "the process to join its cgroup",
            interval=0.05,
        )
        watch.look(hog.pid)
        assert hog.wait(60) == -signal.SIGKILL
        cause = step_process_cause(hog.returncode, watch, None)
        assert cause.kind == "oom_killed", cause
        assert f"in memory cgroup {cgroup}" in cause.detail

        # SIGKILL from outside, in the same cgroup: no OOM kill counted since it was seen.
        sleeper = subprocess.Popen([sys.executable, "-c", HOG, str(cgroup), "600"])
        other = OomWatch()
        wait_until(
            lambda: other.look(sleeper.pid) or memory_cgroup(sleeper.pid) == str(cgroup),
            10,
            "the second process to join its cgroup",
            interval=0.05,
        )
        other.look(sleeper.pid)
        sleeper.kill()
        assert sleeper.wait(10) == -signal.SIGKILL
        cause = step_process_cause(sleeper.returncode, other, None)
        assert (cause.kind, cause.detail) == ("signal", "SIGKILL")
