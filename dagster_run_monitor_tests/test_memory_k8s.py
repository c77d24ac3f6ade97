"""Memory seen from inside a pod, on Kubernetes for real (the cluster, launcher and daemon of
test_k8s_cluster): a run worker whose pod has a 512Mi memory limit touches most of it. Its
watcher, in the pod, reads the container's memory cgroup: the daemon warns once that it is
near its limit, and when the run ends writes the worker's peak and limit on the run. Asserted
as an operator sees them: the run's status, its events, its alert and its tags."""

import json
import math
import re

import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.core import constants as c
from dagster_run_monitor_tests import test_k8s_cluster as k8s_tests
from dagster_run_monitor_tests.support.subprocesses import daemon, wait_until
from dagster_run_monitor_tests.test_k8s_cluster import assert_ends, k8s_config, launch, log, story

pytestmark = [pytest.mark.k8s_cluster, pytest.mark.slow, pytest.mark.postgres]
cluster = k8s_tests.cluster  # the fixtures: the namespace, and a home per test
k8s_home = k8s_tests.k8s_home

MB, MIB = 10**6, 2**20
LIMIT = 512 * MIB  # the pod's limit, as its container's cgroup has it (memory.limit_in_bytes)
LIMITED = {"resources": {"limits": {"memory": "512Mi"}, "requests": {"memory": "512Mi"}}}
# Before its op touches anything the run worker (`dagster api execute_run`, in-process
# executor) and its watcher take about 150 MiB of the container's cgroup (146-153 MiB measured,
# page cache included). 350 MB (334 MiB) more take it to about 485 MiB: past the warning at
# 90% of 512 MiB (461 MiB) by about 20 MiB, under the limit by about 27 MiB (400 MB more were
# OOM-killed).
TOUCH_MB = 350
HOLD_SECONDS = 8  # the watcher beats every second, the daemon passes every 2
WARNING = re.compile(r"The run worker is using (\d+) MiB of its 512 MiB memory limit \((\d+)%\)\.")
TOUCH = {"ops": {"touch_memory": {"config": {"megabytes": TOUCH_MB, "hold_seconds": HOLD_SECONDS}}}}
# test_memory_from_inside's callable sink: one JSON line per alert in the daemon's home
ALERT_SINK = {
    "module": "dagster_run_monitor_tests.test_memory_from_inside",
    "function": "record_alert",
}


def memory_tagged(instance, run_id: str):
    """The run once its workers' memory is written on it."""
    run = instance.get_run_by_id(run_id)
    return run if c.PEAK_MEMORY_TAG in run.tags else None


def test_a_run_worker_near_its_pod_limit_is_warned_once_and_its_peak_is_kept(k8s_home, cluster):
    home, instance = k8s_home(
        max_resume_run_attempts=0,
        worker_heartbeats={"interval_seconds": 1, "timeout_seconds": 60},
        memory={"warn_fraction": 0.9},
        alerts={"callable": ALERT_SINK},
    )
    with daemon(home):
        run = launch(instance, "k8s_touch", k8s_config(container_config=LIMITED), TOUCH)
        assert_ends(instance, run.run_id, S.SUCCESS)
        ended = wait_until(lambda: memory_tagged(instance, run.run_id), 60, "the run's memory tags")
    messages = log(instance, run.run_id)
    touched = next(m for m in messages if m.startswith("touched "))
    warnings = [m for m in messages if " memory limit (" in m]
    assert len(warnings) == 1, f"{warnings}; {touched}; its events: {story(instance, run.run_id)}"
    warning = warnings[0].splitlines()[0]  # then where the worker was (its stack)
    warned = WARNING.fullmatch(warning)
    assert warned, warnings[0]
    used, percent = (int(g) for g in warned.groups())
    assert percent >= 90 and used * MIB >= 0.9 * LIMIT - MIB

    alerts = [json.loads(line) for line in (home / "alerts.jsonl").read_text().splitlines()]
    assert [a["kind"] for a in alerts if a["message"].startswith(warning)] == ["warning"], alerts

    peaks = json.loads(ended.tags[c.MEMORY_TAG])
    assert list(peaks) == ["run"]  # in-process: the run worker only
    peak, limit = peaks["run"]
    assert limit == LIMIT  # read in the pod, from its container's cgroup
    assert TOUCH_MB * MB <= peak <= LIMIT
    assert ended.tags[c.PEAK_MEMORY_TAG] == f"{math.ceil(peak / MIB)}Mi"
    summary = [m for m in messages if m.startswith("Memory: ")]
    assert len(summary) == 1 and summary[0].startswith("Memory: run worker "), summary
    assert " of 512Mi (" in summary[0], summary
    print(f"\n{touched}\n{warning}\n{summary[0]}\npeak {peak} bytes, limit {limit} bytes")
