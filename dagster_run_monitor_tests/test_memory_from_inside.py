"""Memory seen from inside, end to end: the stock ``dagster-daemon run`` with Dagster's
``DefaultRunLauncher``, real run and step processes touching real memory, and (root) real
memory cgroups with limits."""

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus as S

from dagster_run_monitor.config.dagster_yaml import instance_config, write_dagster_yaml
from dagster_run_monitor.core import constants as c
from dagster_run_monitor_tests.support import cgroups
from dagster_run_monitor_tests.support.home import close_pools, load_instance
from dagster_run_monitor_tests.support.runs import messages, status_of
from dagster_run_monitor_tests.support.subprocesses import wait_until
from dagster_run_monitor_tests.support.workspace import (
    create_run,
    workspace_daemon,
    write_workspace,
)

pytestmark = pytest.mark.slow

JOBS = Path(__file__).with_name("memory_jobs.py")
LOCATION = "memory"
MB, MIB = 10**6, 2**20


def record_alert(alert) -> None:
    """The callable alert sink: one JSON line per alert in the daemon's home."""
    with open(Path(os.environ["DAGSTER_HOME"]) / "alerts.jsonl", "a") as out:
        out.write(json.dumps({"kind": alert.kind, "message": alert.message}) + "\n")


@contextmanager
def memory_daemon(tmp_path: Path, warn_fraction: float = 0.9, launcher=None):
    home = tmp_path / "home"
    config = instance_config(
        {
            "poll_interval_seconds": 1,
            "max_resume_run_attempts": 0,
            "worker_heartbeats": {"interval_seconds": 1, "timeout_seconds": 30},
            "memory": {"warn_fraction": warn_fraction},
            "alerts": {"callable": {"module": __name__, "function": "record_alert"}},
        },
        launcher,
        None,
        run_coordinator={
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"dequeue_interval_seconds": 1},
        },
    )
    write_dagster_yaml(home, config)
    write_workspace(home, JOBS, LOCATION)
    instance = load_instance(home)
    try:
        with workspace_daemon(home, instance) as context:
            yield home, instance, context
    finally:
        close_pools(instance)
        instance.dispose()


def submit(instance, context, job: str, **touch):
    config = {"ops": {"touch": {"config": touch}}}
    run = create_run(instance, context, LOCATION, JOBS, job, config)
    instance.submit_run(run.run_id, context.create_request_context())
    return run


def tagged(instance, run_id: str):
    """The run once it ended and its memory was written on it."""
    run = instance.get_run_by_id(run_id)
    return run if run.is_finished and c.PEAK_MEMORY_TAG in run.tags else None


def peaks(run) -> dict[str, list]:
    return json.loads(run.tags[c.MEMORY_TAG])


def test_a_runs_peak_memory_is_its_workers_highest_within_ten_percent(tmp_path):
    """In-process (the run worker's own memory) and process_step_executor (a step worker's):
    a step touching 300 MB peaks 300 MB above the same step touching nothing."""
    with memory_daemon(tmp_path) as (home, instance, context):
        runs = {
            (job, mb): submit(instance, context, job, megabytes=mb, hold_seconds=2)
            for job in ("in_process_touch", "process_touch")
            for mb in (0, 300)
        }
        ended = {
            key: wait_until(lambda r=run: tagged(instance, r.run_id), 180, f"{key} to end")
            for key, run in runs.items()
        }
        assert all(run.status == S.SUCCESS for run in ended.values())
        for job, worker in (("in_process_touch", "run"), ("process_touch", "step:touch")):
            base, big = peaks(ended[(job, 0)])[worker][0], peaks(ended[(job, 300)])[worker][0]
            assert abs((big - base) - 300 * MB) <= 30 * MB, (job, base, big)
            tag = ended[(job, 300)].tags[c.PEAK_MEMORY_TAG]
            highest = max(peak for peak, _ in peaks(ended[(job, 300)]).values())
            assert tag == f"{math.ceil(highest / MIB)}Mi"
        summary = [m for m in messages(instance, ended[("process_touch", 300)].run_id)]
        summary = [m for m in summary if m.startswith("Memory: ")]
        assert len(summary) == 1 and "; step 'touch' " in summary[0], summary
        assert summary[0].startswith("Memory: run worker ") and "(no limit)" in summary[0]


@pytest.mark.parametrize("version", [1, 2])
def test_a_step_near_its_cgroup_limit_is_warned_and_one_past_it_is_oom_killed(tmp_path, version):
    """A step moved into a memory cgroup of 400 MB touching 360 MB: one warning event and one
    alert, and the limit in the run's memory; one past a 200 MB limit: killed by the kernel,
    its cause oom_killed."""
    why = cgroups.unavailable(version)
    if why:
        pytest.skip(why)
    near, small = f"run-monitor-near-{os.getpid()}", f"run-monitor-small-{os.getpid()}"
    with (
        cgroups.memory_cgroup(version, 400 * MB, near) as near_cgroup,
        cgroups.memory_cgroup(version, 200 * MB, small) as small_cgroup,
        memory_daemon(tmp_path, warn_fraction=0.85) as (home, instance, context),
    ):
        warned = submit(
            instance,
            context,
            "multiprocess_touch",
            megabytes=360,
            hold_seconds=6,
            cgroup=str(near_cgroup),
        )
        killed = submit(
            instance, context, "multiprocess_touch", megabytes=300, cgroup=str(small_cgroup)
        )
        run = wait_until(lambda: tagged(instance, warned.run_id), 180, "the warned run to end")
        assert run.status == S.SUCCESS
        warnings = [m for m in messages(instance, run.run_id) if " memory limit (" in m]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith("Step 'touch' is using "), warnings
        assert " of its 381 MiB memory limit (" in warnings[0], warnings
        assert 400 * MB - peaks(run)["step:touch"][1] < 4096  # the kernel rounds to pages
        alerts = [json.loads(line) for line in (home / "alerts.jsonl").read_text().splitlines()]
        assert [a["kind"] for a in alerts if " memory limit (" in a["message"]] == ["warning"]

        wait_until(lambda: status_of(instance, killed.run_id) == S.FAILURE, 120, "the kill")
        died = wait_until(
            lambda: [m for m in messages(instance, killed.run_id) if "worker died" in m],
            60,
            "the dead step's event",
        )
        assert died[0].startswith("Step 'touch' worker died (cause: oom_killed, "), died


@pytest.mark.parametrize("version", [1, 2])
def test_a_run_worker_oom_killed_in_its_cgroup_under_process_run_launcher_is_oom_killed(
    tmp_path, version
):
    why = cgroups.unavailable(version)
    if why:
        pytest.skip(why)
    launcher = {"module": "dagster_run_monitor", "class": "ProcessRunLauncher"}
    name = f"run-monitor-run-worker-{os.getpid()}-{version}"
    with (
        cgroups.memory_cgroup(version, 200 * MB, name) as cgroup,
        memory_daemon(tmp_path, launcher=launcher) as (home, instance, context),
    ):
        run = submit(instance, context, "in_process_touch", megabytes=300, cgroup=str(cgroup))
        wait_until(lambda: status_of(instance, run.run_id) == S.FAILURE, 120, "the kill")
        failed = [m for m in messages(instance, run.run_id) if "Detected run worker status" in m]
        assert len(failed) == 1 and "(cause: oom_killed, " in failed[0], failed
        assert instance.get_run_by_id(run.run_id).tags[c.CRASH_CAUSE_TAG] == "oom_killed"
