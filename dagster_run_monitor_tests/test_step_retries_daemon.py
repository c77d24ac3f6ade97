"""Step workers that die, end to end: the stock ``dagster-daemon run`` with Dagster's
``DefaultRunLauncher`` behind the ``QueuedRunCoordinator``, Dagster's run retries on, and our
step retries; real step processes killed with real signals."""

import logging
import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import WorkspaceFileTarget

from dagster_run_monitor.config.dagster_yaml import instance_config, write_dagster_yaml
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor.daemon.step_retries import create_retry
from dagster_run_monitor_tests.support import cgroups
from dagster_run_monitor_tests.support.home import close_pools, load_instance
from dagster_run_monitor_tests.support.postgres import pg_url
from dagster_run_monitor_tests.support.runs import first_lines, messages, status_of, tags_of
from dagster_run_monitor_tests.support.subprocesses import wait_until
from dagster_run_monitor_tests.support.workspace import (
    create_run,
    group,
    settled,
    workspace_daemon,
    write_workspace,
)

pytestmark = pytest.mark.slow

JOBS = Path(__file__).with_name("step_jobs.py")
LOCATION = "steps"


def write_step_home(home: Path, storage: str, retry_on_op_failure: bool) -> Path:
    config = instance_config(
        {
            "poll_interval_seconds": 1,
            "max_resume_run_attempts": 0,  # DefaultRunLauncher cannot resume
            "step_retries": {"enabled": True, "max_retries": 2},
            "oom_memory": {"multiplier": 2, "max": "4Gi"},
            "worker_heartbeats": {"interval_seconds": 1, "timeout_seconds": 30},
        },
        None,
        pg_url() if storage == "postgres" else None,
        run_coordinator={
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"dequeue_interval_seconds": 1},
        },
        run_retries={
            "enabled": True,
            "max_retries": 3,
            "retry_on_asset_or_op_failure": retry_on_op_failure,
        },
    )
    write_dagster_yaml(home, config)
    write_workspace(home, JOBS, LOCATION)
    return home


@contextmanager
def step_daemon(tmp_path: Path, storage: str, retry_on_op_failure: bool = False):
    """The home, its instance (wiped on PostgreSQL), a workspace to submit runs through, and
    the stock daemon running on it."""
    home = write_step_home(tmp_path / "home", storage, retry_on_op_failure)
    instance = load_instance(home)
    if storage == "postgres":
        instance.wipe()
        instance.wipe_daemon_heartbeats()
    try:
        with workspace_daemon(home, instance) as context:
            yield home, instance, context
    finally:
        close_pools(instance)
        instance.dispose()


def submit(instance: DagsterInstance, context, job_name: str, run_config=None) -> DagsterRun:
    """A run of ``job_name`` from the code location, submitted to the run queue."""
    run = create_run(instance, context, LOCATION, JOBS, job_name, run_config)
    instance.submit_run(run.run_id, context.create_request_context())
    return run


def markers(home: Path, root: DagsterRun) -> list[str]:
    path = home / "markers" / root.run_id
    return path.read_text().split() if path.exists() else []


DIES_ONCE = ("process_dies_once", "multiprocess_dies_once")


def all_settled(instance: DagsterInstance, expected: dict) -> dict[str, list[DagsterRun]] | None:
    """Each root run's group once ``settled`` (``expected``: run id -> (root, runs))."""
    found = {i: settled(instance, root, runs) for i, (root, runs) in expected.items()}
    return found if all(found.values()) else None


def test_killed_steps_are_retried_by_the_monitor_a_bug_is_not_and_the_budget_holds(
    tmp_path, storage
):
    """One daemon session: steps SIGKILLed once under process_step_executor and multiprocess
    (one retry each, ours, SUCCESS, the finished step not run again), an op that raises (no
    retry), a step that always dies (exactly max_retries retries, then a note)."""
    with step_daemon(tmp_path, storage) as (home, instance, context):
        bug = submit(instance, context, "process_raises")
        roots = {name: submit(instance, context, name) for name in DIES_ONCE}
        always = submit(instance, context, "process_always_dies")
        groups = wait_until(
            lambda: all_settled(
                instance, {**{r.run_id: (r, 2) for r in roots.values()}, always.run_id: (always, 3)}
            ),
            timeout=240,
            what="the retries to end",
        )
        for name, root in roots.items():
            failed, retry = groups[root.run_id]
            assert failed.status == S.FAILURE and retry.status == S.SUCCESS, name
            assert failed.tags[c.STEP_RETRY_TAG] == "retry 1"
            assert failed.tags[c.AUTO_RETRY_RUN_ID_TAG] == retry.run_id
            assert failed.tags.get("dagster/will_retry") == "false"  # left to the monitor
            died = [m for m in messages(instance, failed.run_id) if "worker died" in m]
            assert len(died) == 1 and died[0].startswith(
                "Step 'dies_once' worker died (cause: signal, SIGKILL"
            ), died
            retrying = [
                m for m in messages(instance, failed.run_id) if m.startswith("Retrying from")
            ]
            assert retrying == ["Retrying from failure, as step 'dies_once' died (signal)."]
            assert retry.tags[c.REASON_TAG] == c.REASON_STEP_CRASH
            assert retry.tags[c.CRASH_CAUSE_TAG] == "signal"
            assert retry.tags[c.RETRY_NUMBER_TAG] == "1"
            assert retry.parent_run_id == failed.run_id
            assert markers(home, root) == ["first", "dies_once"]  # not run again

        runs = groups[always.run_id]
        assert [r.status for r in runs] == [S.FAILURE] * 3
        assert [r.tags.get(c.STEP_RETRY_TAG) for r in runs] == ["retry 1", "retry 2", "none"]
        assert (
            "Not retrying: a step died (signal), but the run's group has used all 2 step"
            " retries (step_retries.max_retries)." in messages(instance, runs[-1].run_id)
        )
        assert markers(home, always) == ["first"]

        # An op that raised is not retried (the monitor has passed over its failure long
        # since), and Dagster's run retries (max_retries 3) added no run behind ours.
        assert status_of(instance, bug.run_id) == S.FAILURE
        assert group(instance, bug) == [instance.get_run_by_id(bug.run_id)]
        assert c.STEP_RETRY_TAG not in tags_of(instance, bug.run_id)
        assert len(group(instance, always)) == 3


@pytest.mark.parametrize(
    "version, executor", [(1, "process"), (2, "process"), (1, "multiprocess"), (2, "multiprocess")]
)
def test_a_step_oom_killed_in_its_memory_cgroup_is_retried_with_one_step_at_a_time(
    tmp_path, version, executor
):
    """process_step_executor tells the cause in its health check; a multiprocess child's
    watcher sees its cgroup count the kill as the child ends (Dagster says only SIGKILL)."""
    why = cgroups.unavailable(version)
    if why:
        pytest.skip(why)
    name = f"run-monitor-test-{os.getpid()}-{version}"
    with cgroups.memory_cgroup(version, 200 * 2**20, name) as cgroup:
        with step_daemon(tmp_path, "sqlite") as (home, instance, context):
            (home / "oom_cgroup").write_text(str(cgroup))
            if executor == "process":
                config = {"execution": {"config": {"health_check_interval_seconds": 1}}}
            else:
                config = {"execution": {"config": {"max_concurrent": 2}}}
            root = submit(instance, context, f"{executor}_oom_once", config)
            failed, retry = wait_until(
                lambda: settled(instance, root, 2), timeout=150, what="the retry to end"
            )
            assert (failed.status, retry.status) == (S.FAILURE, S.SUCCESS)
            died = [m for m in messages(instance, failed.run_id) if "worker died" in m]
            assert len(died) == 1 and died[0].startswith(
                "Step 'oom_once' worker died (cause: oom_killed, SIGKILL while the kernel's OOM"
                " killer acted"
            ), died
            assert retry.tags[c.CRASH_CAUSE_TAG] == "oom_killed"
            expected = dict(config["execution"]["config"], max_concurrent=1)
            assert retry.run_config == {"execution": {"config": expected}}
            assert (
                "Retrying from failure with max_concurrent 1 (the executor sets no memory per"
                " step), as step 'oom_once' died (oom_killed)." in messages(instance, failed.run_id)
            )
            assert markers(home, root) == ["first", "oom_once"]


def test_with_dagster_retrying_op_failures_too_each_failure_gets_one_retry(tmp_path, storage):
    """Dagster's run retries on with retry_on_asset_or_op_failure true, and a second monitor
    (this process) passing as often as the daemon's: a crashed step's run gets one retry,
    ours; a bug's run gets Dagster's retries, never ours."""
    with step_daemon(tmp_path, storage, retry_on_op_failure=True) as (home, instance, context):
        second = RunMonitorDaemon.from_instance(instance)
        bug = submit(instance, context, "process_raises")
        crashed = [submit(instance, context, name) for name in DIES_ONCE]

        def settled_beside_a_second_monitor():
            errors = [e for e in second.monitor_runs(context) if e is not None]
            assert errors == [], errors
            groups = [settled(instance, root, 2) for root in crashed]
            bugs = group(instance, bug)
            return all(groups) and len(bugs) == 4 and bugs[-1].is_finished and groups

        groups = wait_until(settled_beside_a_second_monitor, timeout=240, what="the retries to end")
        for failed, retry in groups:
            said = "\n".join(first_lines(messages(instance, failed.run_id)))
            assert retry.status == S.SUCCESS, said
            assert retry.tags[c.REASON_TAG] == c.REASON_STEP_CRASH, said
            assert failed.tags[c.STEP_RETRY_TAG] == "retry 1", (dict(failed.tags), said)
        bugs = group(instance, bug)  # Dagster's max_retries: 3
        assert [r.status for r in bugs] == [S.FAILURE] * 4
        assert not any(c.REASON_TAG in r.tags or c.STEP_RETRY_TAG in r.tags for r in bugs)
        for _ in range(3):  # later passes of both daemons add nothing
            errors = [e for e in second.monitor_runs(context) if e is not None]
            assert errors == [], errors
        assert [len(group(instance, root)) for root in crashed] == [2, 2]


def test_a_retry_left_unsubmitted_by_a_killed_daemon_is_submitted_not_made_again(tmp_path):
    """A daemon killed between creating a retry and tagging the failed run: the next pass (here
    a monitor in this process, no daemon running) submits that retry and makes no other."""
    home = write_step_home(tmp_path / "home", "sqlite", retry_on_op_failure=False)
    instance = load_instance(home)
    target = WorkspaceFileTarget(paths=[str(home / "workspace.yaml")])
    try:
        with create_test_daemon_workspace_context(target, instance) as context:
            monitor = RunMonitorDaemon.from_instance(instance)
            for _ in monitor.monitor_runs(context):  # its step-retry clock starts
                pass
            run = create_run(instance, context, LOCATION, JOBS, "process_always_dies")
            instance.launch_run(run.run_id, context.create_request_context())
            wait_until(lambda: status_of(instance, run.run_id) == S.FAILURE, 90, "the failure")
            failed = instance.get_run_by_id(run.run_id)
            tags = {c.RETRY_NUMBER_TAG: "1", c.REASON_TAG: c.REASON_STEP_CRASH}
            half_done = create_retry(context, failed, tags, None, logging.getLogger("test"))
            assert half_done.status == S.NOT_STARTED
            for _ in range(3):
                errors = [e for e in monitor.monitor_runs(context) if e is not None]
                assert errors == [], errors
            children = group(instance, failed)[1:]
            assert [child.run_id for child in children] == [half_done.run_id]
            assert status_of(instance, half_done.run_id) != S.NOT_STARTED  # submitted
            assert tags_of(instance, failed.run_id)[c.STEP_RETRY_TAG] == "retry 1"  # its own
    finally:
        instance.dispose()


def test_a_retry_that_cannot_be_made_is_said_on_the_run_after_three_passes(
    tmp_path, workspace_context
):
    """A daemon whose workspace lacks the run's code location (``--empty-workspace``) cannot
    re-execute it: three passes try, then the run says why and is decided."""
    home = write_step_home(tmp_path / "home", "sqlite", retry_on_op_failure=False)
    instance = load_instance(home)
    target = WorkspaceFileTarget(paths=[str(home / "workspace.yaml")])
    try:
        with create_test_daemon_workspace_context(target, instance) as context:
            run = create_run(instance, context, LOCATION, JOBS, "process_always_dies")
            instance.launch_run(run.run_id, context.create_request_context())
            wait_until(lambda: status_of(instance, run.run_id) == S.FAILURE, 90, "the failure")
        with workspace_context(instance) as empty:
            monitor = RunMonitorDaemon.from_instance(instance)
            errors = [[e for e in monitor.monitor_runs(empty) if e is not None] for _ in range(4)]
        assert [len(found) for found in errors] == [1, 1, 1, 0], errors
        assert tags_of(instance, run.run_id)[c.STEP_RETRY_TAG] == "failed"
        [said] = [m for m in messages(instance, run.run_id) if m.startswith("Could not retry")]
        assert said.startswith("Could not retry from failure (3 passes tried; the last error:")
        assert group(instance, run) == [instance.get_run_by_id(run.run_id)]
    finally:
        instance.dispose()
