"""A step process killed by the kernel's OOM killer in its memory cgroup, for real (root: the
tests make a cgroup with a limit and a process that allocates past it), told apart from a
SIGKILL by someone else."""

import os
import signal
import subprocess
import sys

import pytest

from dagster_run_monitor.launchers.process.executor import step_process_cause
from dagster_run_monitor.worker.memory_reader import (
    MemoryReader,
    OomWatch,
    descendants,
    memory_cgroup,
)
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


CACHE_THEN_HOG = """
import os, sys, time
open(os.path.join(sys.argv[1], "cgroup.procs"), "w").write(str(os.getpid()))
with open(sys.argv[2], "wb") as f:  # 200 MB of page cache, charged to the cgroup
    for _ in range(200):
        f.write(os.urandom(10**6))
print("cached", flush=True)
sys.stdin.readline()
hog = bytearray(200 * 10**6)
for i in range(0, len(hog), 4096):
    hog[i] = 1
print("touched", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("version", [1, 2])
def test_a_workers_memory_is_its_cgroups_working_set_not_its_file_cache(tmp_path, version):
    """A worker in a memory cgroup with a limit is read from the cgroup: the file cache it made
    is not counted (the kernel reclaims it before an OOM kill), the memory it touched is."""
    why = cgroups.unavailable(version)
    if why:
        pytest.skip(why)
    name = f"run-monitor-working-set-{os.getpid()}-{version}"
    with cgroups.memory_cgroup(version, 10**9, name) as cgroup:
        worker = subprocess.Popen(
            [sys.executable, "-c", CACHE_THEN_HOG, str(cgroup), str(tmp_path / "data")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert worker.stdout.readline().strip() == "cached"
            reader = MemoryReader(worker.pid, skip=0)
            cached = reader.sample()
            assert 10**9 - cached["limit"] < 4096  # the kernel rounds to pages
            assert cached["used"] < 100 * 10**6, cached
            worker.stdin.write("\n")
            worker.stdin.flush()
            assert worker.stdout.readline().strip() == "touched"
            touched = reader.sample()
            assert 200 * 10**6 <= touched["used"] < 10**9, touched
            assert touched["peak"] >= touched["used"]
        finally:
            worker.kill()
            worker.wait()


def test_a_worker_without_a_limit_is_its_process_tree():
    """No cgroup of its own: the worker and its children, their RSS summed; the peak holds."""
    if MemoryReader(os.getpid(), skip=0).sample()["limit"] is not None:
        pytest.skip("this test runs in a memory cgroup with a limit: its workers are read from it")
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'h = bytearray(150 * 10**6)\\nfor i in range(0, len(h), 4096): h[i] = 1\\n"
        "print(1, flush=True)\\nimport time; time.sleep(60)'], stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "ready"
        found = MemoryReader(worker.pid, skip=0).sample()
        assert found["limit"] is None
        assert 150 * 10**6 <= found["used"] <= found["peak"] < 400 * 10**6, found
    finally:
        for child in descendants(worker.pid, 0)[::-1]:
            os.kill(child, signal.SIGKILL)
        worker.wait()
