"""ProcessRunLauncher and process_step_executor: real worker processes, real signals."""

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.events import DagsterEventType
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._time import get_current_timestamp

from dagster_run_monitor.config.parse import read_settings
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.policy import decide
from dagster_run_monitor.core.report import new_worker_delays
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor.daemon.observe import observe
from dagster_run_monitor.launchers.process.executor import recorded_step_processes
from dagster_run_monitor.launchers.process.processes import is_alive
from dagster_run_monitor.storage.report import acted_runs
from dagster_run_monitor_tests.support.home import monitor_instance
from dagster_run_monitor_tests.support.runs import first_lines, messages, status_of, tags_of
from dagster_run_monitor_tests.support.subprocesses import wait_until

# Real processes on a 2-core machine, with no retry: a failure here is a race to find.
pytestmark = pytest.mark.slow

JOBS_FILE = str(Path(__file__).with_name("jobs.py"))
PROCESS_LAUNCHER = {"module": "dagster_run_monitor", "class": "ProcessRunLauncher"}
FAST = {"worker_unknown_grace_seconds": 0, "poll_interval_seconds": 1}


@pytest.fixture
def process_instance(storage):
    def factory(**run_monitoring):
        launcher = {**PROCESS_LAUNCHER, "config": {"terminate_grace_seconds": 5}}
        return monitor_instance(storage, {**FAST, **run_monitoring}, launcher)

    return factory


def launch(instance: DagsterInstance, job_name: str, file: str = JOBS_FILE, **kwargs) -> DagsterRun:
    """Create and launch a run of ``job_name`` from ``file`` through the instance's launcher."""
    recon = ReconstructableRepository.for_file(file, "defs").get_reconstructable_job(job_name)
    run = instance.create_run_for_job(
        job_def=recon.get_definition(), job_code_origin=recon.get_python_origin(), **kwargs
    )
    instance.launch_run(run.run_id, workspace=None)  # type: ignore[arg-type]
    return instance.get_run_by_id(run.run_id)


def watch(instance, context, run_id, until, timeout=90, what="the run to finish"):
    """Run monitor passes every 0.3 s, as the daemon's crash checks do, until ``until()``."""
    daemon = RunMonitorDaemon.from_instance(instance)

    def one_pass():
        errors = [e for e in daemon.monitor_runs(context) if e is not None]
        assert errors == [], errors
        return until()

    try:
        return wait_until(one_pass, timeout=timeout, what=what, interval=0.3)
    except AssertionError as timed_out:  # say what the run went through, and what we see
        last = "\n".join(messages(instance, run_id)[-12:])
        raise AssertionError(
            f"{timed_out}; the run's last events:\n{last}\n{monitor_view(instance, run_id)}"
        ) from None


def monitor_view(instance: DagsterInstance, run_id: str) -> str:
    """What the monitor observes for the run now and what it would decide (for failures)."""
    settings = read_settings(instance)
    now = get_current_timestamp()
    facts = observe(instance, settings, now, {})
    return (
        "\n".join(f"monitor sees {f}\nand decides {decide(f, settings, now)}" for f in facts)
        or f"monitor sees no in-progress runs; {run_id} is {status_of(instance, run_id)}"
    )


def step_starts(instance, run_id) -> Counter:
    return Counter(
        e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
    )


def has_event(instance, run_id, event_type, step_key=None) -> bool:
    return any(
        step_key is None or e.step_key == step_key
        for e in instance.all_logs(run_id, of_type=event_type)
    )


RUN_ENDS = {
    DagsterEventType.RUN_SUCCESS,
    DagsterEventType.RUN_FAILURE,
    DagsterEventType.RUN_CANCELED,
}


def run_ends(instance, run_id) -> list[DagsterEventType]:
    """The run's terminal events, in order."""
    return [
        e.dagster_event.event_type
        for e in instance.all_logs(run_id)
        if e.dagster_event and e.dagster_event.event_type in RUN_ENDS
    ]


def worker_pid(instance, run_id) -> int:
    return int(instance.get_run_by_id(run_id).tags[c.WORKER_PID_TAG])


KILL_POINTS = {
    "while the first step runs": (DagsterEventType.STEP_START, "extract"),
    "after the second step succeeded": (DagsterEventType.STEP_SUCCESS, "transform"),
    "while the last step runs": (DagsterEventType.STEP_START, "report"),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_worker_group_is_resumed_and_finished_steps_do_not_run_again(
    process_instance, workspace_context, point
):
    event_type, step = KILL_POINTS[point]
    with process_instance() as instance, workspace_context(instance) as ctx:
        run = launch(instance, "crash_demo")
        wait_until(lambda: has_event(instance, run.run_id, event_type, step), 60, point)
        pid = worker_pid(instance, run.run_id)
        os.killpg(pid, signal.SIGKILL)
        watch(
            instance,
            ctx,
            run.run_id,
            lambda: status_of(instance, run.run_id).value in ("SUCCESS", "FAILURE", "CANCELED"),
        )

        assert status_of(instance, run.run_id) == S.SUCCESS
        assert step_starts(instance, run.run_id) == {
            "extract": 1,
            "transform": 1,
            "load": 1,
            "report": 1,
        }
        log = messages(instance, run.run_id)
        assert log.count(c.RESUME_RUN_LOG_MESSAGE) == 1
        detected = [m for m in log if m.startswith("Detected")]
        assert [m.split("\n")[0] for m in detected] == [
            f"Detected run worker status FAILED: 'Run worker process {pid} was killed by signal"
            f" SIGKILL.' (cause: signal, SIGKILL). Resuming run {run.run_id} with a new worker."
        ], detected
        assert tags_of(instance, run.run_id)[c.CRASH_CAUSE_TAG] == "signal"
        assert not is_alive(pid)
        # The report times the new worker: `dagster api resume_run` says "Started process
        # for resuming job", not "... for run".
        (acted,) = acted_runs(instance, 0)[0]
        (delay,) = new_worker_delays(acted)
        assert 0 <= delay < 60


def test_a_run_read_before_its_workers_exit_was_recorded_still_gets_the_exits_cause(
    process_instance,
):
    """The reaper writes the worker's exit, then forgets the process: a pass that read the
    run before the write and checks it after must not report the exit as unrecorded (seen
    in a run of this suite as a crash with cause unknown instead of signal)."""
    with process_instance() as instance:
        run = launch(instance, "hangs")
        wait_until(lambda: has_event(instance, run.run_id, DagsterEventType.STEP_START), 60, "step")
        read_before = instance.get_run_by_id(run.run_id)
        pid = worker_pid(instance, run.run_id)
        os.killpg(pid, signal.SIGKILL)
        wait_until(
            lambda: c.WORKER_EXIT_TAG in tags_of(instance, run.run_id), 30, "the exit recorded"
        )
        launcher = instance.run_launcher
        wait_until(lambda: pid not in launcher._workers, 10, "the reaper to forget the worker")
        health = launcher.check_run_worker_health(read_before)
        assert health.status == WorkerStatus.FAILED
        assert health.msg == f"Run worker process {pid} was killed by signal SIGKILL."
        assert launcher.crash_cause(read_before).kind == "signal"


def test_a_worker_seen_gone_before_it_can_be_waited_for_gets_its_exit_status(process_instance):
    """/proc shows a worker's main thread a zombie before the process can be waited for (its
    other threads still exiting): the health check waits for the exit instead of reporting it
    unrecorded (seen in this suite as cause unknown after a SIGKILL)."""
    with process_instance() as instance:
        run = launch(instance, "main_thread_exits_first_job")
        pid = worker_pid(instance, run.run_id)

        def zombie_leader() -> bool:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] == "Z"

        wait_until(zombie_leader, 60, "the worker's main thread to exit")
        health = instance.run_launcher.check_run_worker_health(instance.get_run_by_id(run.run_id))
        assert health.msg == f"Run worker process {pid} exited with code 3."
        assert health.status == WorkerStatus.FAILED


def test_a_worker_that_keeps_dying_is_resumed_max_times_then_failed(
    process_instance, workspace_context
):
    with (
        process_instance(max_resume_run_attempts=2) as instance,
        workspace_context(instance) as ctx,
    ):
        run = launch(instance, "always_dies")
        watch(instance, ctx, run.run_id, lambda: status_of(instance, run.run_id) == S.FAILURE)
        log = messages(instance, run.run_id)
        assert log.count(c.RESUME_RUN_LOG_MESSAGE) == 2
        assert "was killed by signal SIGKILL" in log[-1], "\n".join(log)
        assert "surpassed the configured maximum attempts to resume the run: 2" in log[-1]
        assert instance.get_run_by_id(run.run_id).tags[c.RESUMED_TAG] == "2"  # not in history


def test_terminate_cancels_the_run_stops_every_process_and_never_resumes(
    process_instance, workspace_context
):
    with process_instance() as instance, workspace_context(instance) as ctx:
        run = launch(instance, "sleeps")
        wait_until(
            lambda: has_event(instance, run.run_id, DagsterEventType.STEP_START), 60, "the step"
        )
        pid = worker_pid(instance, run.run_id)
        (step,) = recorded_step_processes(instance, run.run_id).values()
        assert instance.run_launcher.terminate(run.run_id)
        wait_until(lambda: status_of(instance, run.run_id) == S.CANCELED, 30, "CANCELED")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # a few monitor passes: nothing to resume
            assert [
                e for e in RunMonitorDaemon.from_instance(instance).monitor_runs(ctx) if e
            ] == []
        assert c.RESUME_RUN_LOG_MESSAGE not in messages(instance, run.run_id)
        assert status_of(instance, run.run_id) == S.CANCELED
        assert not is_alive(pid) and not is_alive(step.pid, step.start_ticks)


BROKEN = """
import os, sys
print("this deploy is broken: ImportError: no module named 'warehouse'", flush=True)
os._exit(3)
"""


def test_a_worker_that_never_starts_fails_the_run_long_before_the_start_timeout(
    process_instance, workspace_context, tmp_path
):
    code = tmp_path / "location.py"
    code.write_text(Path(JOBS_FILE).read_text())
    with (
        process_instance(start_timeout_seconds=180) as instance,
        workspace_context(instance) as ctx,
    ):
        recon = ReconstructableRepository.for_file(str(code), "defs").get_reconstructable_job(
            "crash_demo"
        )
        run = instance.create_run_for_job(
            job_def=recon.get_definition(), job_code_origin=recon.get_python_origin()
        )
        code.write_text(BROKEN)  # a broken deploy lands between submit and launch
        started = time.monotonic()
        instance.launch_run(run.run_id, workspace=None)
        watch(instance, ctx, run.run_id, lambda: status_of(instance, run.run_id) == S.FAILURE, 60)
        assert time.monotonic() - started < 60
        failure = messages(instance, run.run_id)[-1]
        assert "Run worker process" in failure and "exited with code 3" in failure
        assert "(cause: exit_code, exit code 3) before the run started" in failure
        assert "this deploy is broken" in failure
        tags = instance.get_run_by_id(run.run_id).tags
        assert tags[c.REASON_TAG] == c.REASON_START_FAILED
        assert tags[c.CRASH_CAUSE_TAG] == "exit_code"


def test_crash_policy_fails_a_worker_that_exits_3_without_resuming_it(
    process_instance, workspace_context
):
    """Exit code 3 is this team's "bad input, do not retry": crash_policy fails it at once."""
    policy = [{"causes": ["exit_code"], "exit_codes": [3], "action": "fail"}]
    with (
        process_instance(max_resume_run_attempts=2, crash_policy=policy) as instance,
        workspace_context(instance) as ctx,
    ):
        run = launch(instance, "exits_three")
        watch(instance, ctx, run.run_id, lambda: status_of(instance, run.run_id) == S.FAILURE)
        log = messages(instance, run.run_id)
        assert c.RESUME_RUN_LOG_MESSAGE not in log
        pid = worker_pid(instance, run.run_id)
        assert log[-1].startswith(
            f"Detected run worker status FAILED: 'Run worker process {pid} exited with code 3.'"
            f" (cause: exit_code, exit code 3). Marking run {run.run_id} as failed without"
            " resuming it, as crash_policy[1] (causes exit_code; exit codes 3: fail) says."
        )
        assert "run worker about to exit with code 3" in log[-1]  # the worker's output
        assert tags_of(instance, run.run_id)[c.CRASH_CAUSE_TAG] == "exit_code"


def test_max_runtime_stops_the_worker_and_its_steps(process_instance, workspace_context):
    with process_instance() as instance, workspace_context(instance) as ctx:
        run = launch(instance, "sleeps", tags={c.MAX_RUNTIME_TAG: "2"})
        wait_until(
            lambda: has_event(instance, run.run_id, DagsterEventType.STEP_START), 60, "the step"
        )
        pid = worker_pid(instance, run.run_id)
        (step,) = recorded_step_processes(instance, run.run_id).values()
        watch(instance, ctx, run.run_id, lambda: status_of(instance, run.run_id) == S.FAILURE, 60)
        log = first_lines(messages(instance, run.run_id))
        assert "Exceeded maximum runtime of 2 seconds." in log
        # one end: the worker, stopped while CANCELING, does not write RUN_CANCELED before
        # the monitor's RUN_FAILURE (Dagster's sequence writes both)
        assert run_ends(instance, run.run_id) == [DagsterEventType.RUN_FAILURE]
        assert not is_alive(pid), "run worker left behind"
        assert not is_alive(step.pid, step.start_ticks), "step process left behind"


def test_max_runtime_fails_a_worker_that_ignores_sigterm_with_one_end(
    process_instance, workspace_context
):
    """The worker ignores SIGTERM: killed after the grace, it is said in an engine event, and
    the run's one end is the monitor's FAILURE (not the launcher's RUN_CANCELED)."""
    with process_instance() as instance, workspace_context(instance) as ctx:
        run = launch(instance, "ignores_sigterm", tags={c.MAX_RUNTIME_TAG: "2"})
        wait_until(
            lambda: has_event(instance, run.run_id, DagsterEventType.STEP_START), 60, "the step"
        )
        watch(instance, ctx, run.run_id, lambda: status_of(instance, run.run_id) == S.FAILURE, 60)
        log = first_lines(messages(instance, run.run_id))
        pid = worker_pid(instance, run.run_id)
        killed = f"[ProcessRunLauncher] Run worker process {pid} did not stop within 5 seconds"
        assert any(m.startswith(killed) for m in log), "\n".join(log)
        assert "Exceeded maximum runtime of 2 seconds." in log
        assert run_ends(instance, run.run_id) == [DagsterEventType.RUN_FAILURE]


def test_a_stalled_run_is_resumed_by_killing_its_hung_worker(process_instance, workspace_context):
    config = {"stall_timeout_seconds": 4, "stall_action": "resume", "max_resume_run_attempts": 1}
    with process_instance(**config) as instance, workspace_context(instance) as ctx:
        run = launch(instance, "hangs")
        wait_until(
            lambda: has_event(instance, run.run_id, DagsterEventType.STEP_START), 60, "the step"
        )
        first = worker_pid(instance, run.run_id)
        watch(instance, ctx, run.run_id, lambda: status_of(instance, run.run_id) == S.FAILURE, 90)
        log = messages(instance, run.run_id)
        assert log.count(c.RESUME_RUN_LOG_MESSAGE) == 1  # resumed once, then out of attempts
        assert any(m.startswith("Run stalled:") and "Resuming run" in m for m in log)
        assert any(
            m.startswith(f"[ProcessRunLauncher] Stopped hung run worker process {first}")
            for m in log
        )
        assert log[-1].startswith("Run stalled:") or "Run stalled:" in "".join(log[-3:])
        assert instance.get_run_by_id(run.run_id).tags[c.REASON_TAG] == c.REASON_STALLED
        assert not is_alive(first) and not is_alive(worker_pid(instance, run.run_id))


def test_explain_shows_the_cause_and_the_crash_policy_entry_that_applies(process_instance):
    from click.testing import CliRunner

    from dagster_run_monitor.cli import main as cli

    policy = [{"causes": ["exit_code"], "exit_codes": [3], "action": "fail"}]
    with process_instance(max_resume_run_attempts=2, crash_policy=policy) as instance:
        run = launch(instance, "exits_three")
        wait_until(
            lambda: c.WORKER_EXIT_TAG in instance.get_run_by_id(run.run_id).tags,
            60,
            "the worker to exit",
        )
        explained = CliRunner().invoke(cli, ["explain", run.run_id])  # no pass has run
        assert explained.exit_code == 0, explained.output
        pid = worker_pid(instance, run.run_id)
        lines = explained.output.splitlines()
        assert (
            f"  worker: FAILED: 'Run worker process {pid} exited with code 3.' (cause: exit_code,"
            " exit code 3)"
        ) in lines
        assert "  crash policy: crash_policy[1] (causes exit_code; exit codes 3: fail)" in lines
        assert "  resumes: 0 of 2 used" in lines
        assert any(
            line.startswith("Next pass: FailRun: Detected run worker status FAILED:")
            and "without resuming it, as crash_policy[1]" in line
            for line in lines
        )
        assert status_of(instance, run.run_id) == S.STARTED  # explain changes nothing


def test_a_multiprocess_child_whose_run_worker_died_stops_at_once(process_instance):
    """A SIGKILL of the run worker alone leaves its multiprocess child orphaned: its watcher
    stops it within seconds (a resume runs its step again; nothing takes its results), not
    at the end of its 300-second step."""
    with process_instance(max_resume_run_attempts=0) as instance:
        run = launch(instance, "sleeps_in_a_child")
        (start,) = wait_until(
            lambda: instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START),
            60,
            "the step to start in its child process",
        )
        child = start.dagster_event.pid
        os.kill(worker_pid(instance, run.run_id), signal.SIGKILL)
        wait_until(lambda: not is_alive(child), 15, "the orphaned child to stop")
        assert not has_event(instance, run.run_id, DagsterEventType.STEP_SUCCESS)


def test_a_run_failed_after_its_worker_died_stops_its_step_process(
    process_instance, workspace_context
):
    """No resume left: the monitor fails the run whose worker was SIGKILLed, and fences its
    workers' rows, so the step process that outlived the worker (its own process group) stops
    at its next beat instead of running on into a failed run."""
    beats = {"interval_seconds": 1, "timeout_seconds": 10}
    with (
        process_instance(max_resume_run_attempts=0, worker_heartbeats=beats) as instance,
        workspace_context(instance) as ctx,
    ):
        run = launch(instance, "sleeps")
        wait_until(
            lambda: has_event(instance, run.run_id, DagsterEventType.STEP_START), 60, "the step"
        )
        (step,) = recorded_step_processes(instance, run.run_id).values()
        os.kill(worker_pid(instance, run.run_id), signal.SIGKILL)
        watch(instance, ctx, run.run_id, lambda: status_of(instance, run.run_id) == S.FAILURE)
        wait_until(lambda: not is_alive(step.pid, step.start_ticks), 15, "the step to stop")
        assert not has_event(instance, run.run_id, DagsterEventType.STEP_SUCCESS)
