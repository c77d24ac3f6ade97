"""ProcessRunLauncher: each run worker is a local OS process group, with health and resume."""

import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import Field, IntSource, StringSource
from dagster import _check as check
from dagster._core.events import EngineEventData
from dagster._core.launcher import (
    CheckRunHealthResult,
    LaunchRunContext,
    ResumeRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.crash_cause import CrashCause, process_cause
from dagster_run_monitor.launchers.process.executor import recorded_step_processes
from dagster_run_monitor.launchers.process.processes import (
    describe_exit,
    hostname,
    is_alive,
    kill_group,
    oom_kills,
    start_ticks,
    stop_group,
)
from dagster_run_monitor.storage.bulk_writes import add_tags_while

EXITING_SECONDS = 2.0  # at most, for a killed worker's threads to exit (``_exit_of_exiting``)


class ProcessRunLauncher(RunLauncher, ConfigurableClass):
    """Launches every run worker as ``python -m dagster api execute_run`` in its own process
    group, records pid, host and process start time in run tags, checks its health from
    ``/proc``, resumes it with ``api resume_run``, and stops the whole group on terminate.

    ``run_launcher: {module: dagster_run_monitor, class: ProcessRunLauncher}``
    """

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        terminate_grace_seconds: int = 10,
        health_check_interval_seconds: int = 2,
        log_dir: str | None = None,
    ):
        self._inst_data = inst_data
        self.terminate_grace_seconds = terminate_grace_seconds
        self.health_check_interval_seconds = health_check_interval_seconds
        self._log_dir = log_dir
        # Workers started here, until their exit is recorded; their exits, read once.
        self._workers: dict[int, subprocess.Popen] = {}
        self._exits: dict[int, tuple[int, int | None]] = {}  # pid -> (returncode, OOM kills)
        self._exits_lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "terminate_grace_seconds": Field(
                IntSource,
                is_required=False,
                default_value=10,
                description="Seconds between SIGTERM and SIGKILL when a run is terminated.",
            ),
            "health_check_interval_seconds": Field(
                IntSource,
                is_required=False,
                default_value=2,
                description="How often the run monitor checks local workers for crashes,"
                " between its full passes.",
            ),
            "log_dir": Field(
                StringSource,
                is_required=False,
                description="Where worker output goes (default: $DAGSTER_HOME/run_monitor/workers)",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: dict) -> Any:
        return cls(inst_data=inst_data, **config_value)

    # --- launching ---------------------------------------------------------------------

    def launch_run(self, context: LaunchRunContext) -> None:
        self._start_worker(context.dagster_run, ExecuteRunArgs, "execute_run", attempt=0)

    @property
    def supports_resume_run(self) -> bool:
        return True

    def resume_run(self, context: ResumeRunContext) -> None:
        attempt = context.resume_attempt_number or 1
        self._start_worker(context.dagster_run, ResumeRunArgs, "resume_run", attempt)

    def _start_worker(
        self,
        run: DagsterRun,
        args_type: type[ExecuteRunArgs] | type[ResumeRunArgs],
        command: str,
        attempt: int,
    ) -> None:
        origin = check.not_none(run.job_code_origin, "run has no code origin")
        args = args_type(
            job_origin=origin,
            run_id=run.run_id,
            instance_ref=self._instance.get_ref(),
            set_exit_code_on_failure=True,
        )
        log_path = self.log_dir / (
            f"{run.run_id}.resume{attempt}.log" if attempt else f"{run.run_id}.log"
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        kills = oom_kills()
        kills_at_start = "" if kills is None else str(kills)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [origin.executable_path, "-m", "dagster", "api", command, serialize_value(args)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: terminate stops all of it
            )
        self._instance.add_run_tags(
            run.run_id,
            {
                c.WORKER_PID_TAG: str(process.pid),
                c.WORKER_HOST_TAG: hostname(),
                c.WORKER_START_TAG: str(start_ticks(process.pid) or ""),
                c.WORKER_LOG_TAG: str(log_path),
                c.WORKER_OOM_KILLS_TAG: f"{process.pid}:{kills_at_start}",
            },
        )
        self._instance.report_engine_event(
            f"Started run worker process {process.pid} on {hostname()}.",
            run,
            EngineEventData(metadata={"pid": str(process.pid), "log": str(log_path)}),
            cls=self.__class__,
        )
        self._workers[process.pid] = process
        threading.Thread(target=self._record_exit, args=(run.run_id, process), daemon=True).start()

    def _record_exit(self, run_id: str, process: subprocess.Popen) -> None:
        """Reap the worker (no zombies) and keep its exit status, and the kernel's OOM kill
        count then, in a tag for the health check and the crash's cause."""
        if hasattr(os, "waitid"):  # see the exit without reaping it: ``_exited`` may look too
            try:
                os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass
        returncode, kills = self._exited(process) or (process.wait(), oom_kills())
        process.wait()
        exit_status = f"{process.pid}:{returncode}:{'' if kills is None else kills}"
        try:  # only while it is the run's worker: never over a new worker's tags (a resume)
            add_tags_while(
                self._instance,
                run_id,
                {c.WORKER_EXIT_TAG: exit_status},
                lambda run: run.tags.get(c.WORKER_PID_TAG) == str(process.pid),
            )
        except Exception:
            pass  # the health check then reports the worker gone without its status
        self._workers.pop(process.pid, None)
        with self._exits_lock:
            self._exits.pop(process.pid, None)

    def _exited(self, process: subprocess.Popen) -> tuple[int, int | None] | None:
        """The exit of a worker started here, read once without reaping it (a health check
        may see it dead before the reaper has written its tag); None while it runs."""
        with self._exits_lock:
            if process.pid not in self._exits:
                returncode = process.returncode
                if returncode is None and hasattr(os, "waitid"):
                    try:
                        info = os.waitid(
                            os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT
                        )
                    except ChildProcessError:
                        info = None
                    if info is not None:
                        killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
                        returncode = -info.si_status if killed else info.si_status
                if returncode is None:
                    return None
                self._exits[process.pid] = (returncode, oom_kills())
            return self._exits[process.pid]

    def _exit_of_exiting(self, process: subprocess.Popen) -> tuple[int, int | None] | None:
        """``_exited`` of a worker /proc already shows gone: its main thread is a zombie, but
        a killed process becomes waitable only once all its threads have exited, a few
        milliseconds later (found as "exit status was not recorded" in test_process_launcher)."""
        deadline = time.monotonic() + EXITING_SECONDS
        while (exited := self._exited(process)) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return exited

    def _exit_status(self, run: DagsterRun) -> tuple[int, int | None] | None:
        """(returncode, OOM kill count at the exit) of the run's current worker, if ended:
        from the process if it was started here, else from its tag, read again if ``run``
        was read before it was written (the reaper writes it, then forgets the process)."""
        pid = run.tags.get(c.WORKER_PID_TAG)
        process = self._workers.get(int(pid)) if pid and pid.isdigit() else None
        if process is not None and (exited := self._exit_of_exiting(process)) is not None:
            return exited
        if (recorded := _recorded_exit(run.tags)) is not None:
            return recorded
        stored = self._instance.get_run_by_id(run.run_id)
        if stored is None or stored.tags.get(c.WORKER_PID_TAG) != pid:
            return None
        return _recorded_exit(stored.tags)

    @property
    def log_dir(self) -> Path:
        if self._log_dir:
            return Path(self._log_dir)
        return Path(self._instance.root_directory) / "run_monitor" / "workers"

    # --- health ------------------------------------------------------------------------

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        tags = run.tags
        if c.WORKER_PID_TAG not in tags:
            return CheckRunHealthResult(
                WorkerStatus.NOT_FOUND, "No run worker process has been recorded for this run."
            )
        pid = int(tags[c.WORKER_PID_TAG])
        host = tags.get(c.WORKER_HOST_TAG)
        if host != hostname():
            return CheckRunHealthResult(
                WorkerStatus.UNKNOWN,
                f"Run worker process {pid} runs on host {host}, not on {hostname()}.",
            )
        if is_alive(pid, _int(tags.get(c.WORKER_START_TAG))):
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"Run worker process {pid} is running."
            )
        exited = self._exit_status(run)
        if exited is not None:
            if exited[0] == 0:
                return CheckRunHealthResult(
                    WorkerStatus.SUCCESS, f"Run worker process {pid} exited with code 0."
                )
            return CheckRunHealthResult(
                WorkerStatus.FAILED, f"Run worker process {pid} {describe_exit(exited[0])}."
            )
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"Run worker process {pid} is no longer running; its exit status was not recorded.",
        )

    def crash_cause(self, run: DagsterRun) -> CrashCause:
        """Why the run's current worker process ended: its signal or exit code, recorded when
        it ended; ``oom_killed`` for a SIGKILL while the kernel's OOM kill count moved."""
        exited = self._exit_status(run)
        if exited is None:
            return process_cause(None)
        pid = run.tags.get(c.WORKER_PID_TAG)
        started_pid, _, kills_at_start = run.tags.get(c.WORKER_OOM_KILLS_TAG, "").partition(":")
        returncode, kills_at_exit = exited
        kills = None
        if started_pid == pid and kills_at_start.isdigit() and kills_at_exit is not None:
            kills = (int(kills_at_start), kills_at_exit)
        return process_cause(returncode, kills)

    def get_run_worker_debug_info(
        self, run: DagsterRun, include_container_logs: bool | None = True
    ) -> str | None:
        run = self._instance.get_run_by_id(run.run_id) or run
        if c.WORKER_PID_TAG not in run.tags:
            return None
        health = self.check_run_worker_health(run)
        lines = [f"Run worker: {health.msg} Host: {run.tags.get(c.WORKER_HOST_TAG)}."]
        log_path = run.tags.get(c.WORKER_LOG_TAG)
        if include_container_logs and log_path and os.path.exists(log_path):
            with open(log_path, errors="replace") as log:
                tail = "".join(deque(log, maxlen=c.LOG_TAIL_LINES)).rstrip()
            lines.append(f"Last lines of the worker's output ({log_path}):\n{tail}")
        return "\n".join(lines)

    # --- terminating -------------------------------------------------------------------

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid = _int(run.tags.get(c.WORKER_PID_TAG))
        if not pid or run.tags.get(c.WORKER_HOST_TAG) != hostname():
            self._instance.report_engine_event(
                "No local run worker process to send the termination request to.",
                run,
                cls=self.__class__,
            )
            return False
        outcome = stop_group(
            pid, _int(run.tags.get(c.WORKER_START_TAG)), self.terminate_grace_seconds
        )
        self._stop_step_processes(run)
        if outcome == "gone":
            self._instance.report_engine_event(
                f"Run worker process {pid} was not running.", run, cls=self.__class__
            )
            return False
        if outcome == "killed":
            current = self._instance.get_run_by_id(run_id)
            message = (
                f"Run worker process {pid} did not stop within {self.terminate_grace_seconds}"
                " seconds of SIGTERM and was killed with SIGKILL."
            )
            if current and c.FAILING_TAG in current.tags:  # the monitor writes its one end
                self._instance.report_engine_event(message, current, cls=self.__class__)
            elif current and not current.is_finished:
                self._instance.report_run_canceled(current, message)
        return True

    def kill_worker(self, run: DagsterRun) -> None:
        """SIGKILL a hung worker's process group without canceling its run, as a crash would
        (a SIGTERM lets the worker fail the run); its step processes are left to finish."""
        pid = _int(run.tags.get(c.WORKER_PID_TAG))
        if pid and run.tags.get(c.WORKER_HOST_TAG) == hostname():
            if kill_group(pid, _int(run.tags.get(c.WORKER_START_TAG))):
                self._instance.report_engine_event(
                    f"Stopped hung run worker process {pid} with SIGKILL.", run, cls=self.__class__
                )

    def _stop_step_processes(self, run: DagsterRun) -> None:
        """Step processes run in their own groups (they outlive a crashed worker); stop them."""
        for step in recorded_step_processes(self._instance, run.run_id).values():
            if step.host == hostname():
                stop_group(step.pid, step.start_ticks, self.terminate_grace_seconds)


def _recorded_exit(tags: Mapping[str, str]) -> tuple[int, int | None] | None:
    """The exit the reaper recorded for the worker the tags name (``WORKER_EXIT_TAG``)."""
    recorded_pid, _, status = tags.get(c.WORKER_EXIT_TAG, "").partition(":")
    returncode, _, kills = status.partition(":")
    if recorded_pid != tags.get(c.WORKER_PID_TAG) or not returncode:
        return None
    return int(returncode), int(kills) if kills.isdigit() else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
