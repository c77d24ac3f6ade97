"""process_step_executor: a step-delegating executor that runs each step as its own process.

Like ``k8s_job_executor`` and ``docker_executor``, and unlike ``in_process`` or
``multiprocess``, it lets a resumed run skip the steps that already finished: step processes
run in their own process groups, outlive a crashed run worker, and are found again by the
resumed worker through the pids recorded in their STEP_WORKER_STARTING events.
"""

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from dagster import Field, IntSource, executor
from dagster import _check as check
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.executor.base import Executor
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.step_delegating import StepDelegatingExecutor
from dagster._core.executor.step_delegating.step_handler.base import (
    CheckStepHealthResult,
    StepHandler,
    StepHandlerContext,
)
from dagster._core.instance import DagsterInstance
from dagster._serdes import serialize_value

from dagster_run_monitor.core.crash_cause import OOM_KILLED, CrashCause, process_cause
from dagster_run_monitor.launchers.process.processes import (
    describe_exit,
    hostname,
    is_alive,
    oom_kills,
    start_ticks,
    stop_group,
)
from dagster_run_monitor.worker.memory_reader import OomWatch

STEP_TERMINATE_GRACE_SECONDS = 10


@executor(
    name="process_step",
    config_schema={
        "retries": get_retries_config(),
        "max_concurrent": Field(
            IntSource, is_required=False, description="Step processes at once, per run."
        ),
        "health_check_interval_seconds": Field(
            IntSource,
            is_required=False,
            description="How often the run worker checks that its step processes live"
            " (Dagster's default: 20).",
        ),
    },
    requirements=multiple_process_executor_requirements(),
)
def process_step_executor(init_context: InitExecutorContext) -> Executor:
    """Runs each step in its own OS process (``python -m dagster api execute_step``)."""
    config = init_context.executor_config
    return StepDelegatingExecutor(
        ProcessStepHandler(),
        retries=check.not_none(RetryMode.from_config(config["retries"])),
        max_concurrent=config.get("max_concurrent"),
        check_step_health_interval_seconds=config.get("health_check_interval_seconds"),
    )


@dataclass(frozen=True)
class StepProcess:
    pid: int
    start_ticks: int | None
    host: str


def recorded_step_processes(instance: DagsterInstance, run_id: str) -> dict[str, StepProcess]:
    """The latest process of each step of the run, from its STEP_WORKER_STARTING events."""
    found: dict[str, StepProcess] = {}
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.STEP_WORKER_STARTING
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        metadata = getattr(event.event_specific_data, "metadata", None) if event else None
        if not event or not event.step_key or not metadata or "pid" not in metadata:
            continue
        ticks = metadata.get("start_ticks")
        found[event.step_key] = StepProcess(
            pid=int(metadata["pid"].value),
            start_ticks=int(ticks.value) if ticks is not None and ticks.value else None,
            host=str(metadata["host"].value) if "host" in metadata else "",
        )
    return found


class ProcessStepHandler(StepHandler):
    def __init__(self) -> None:
        super().__init__()
        self._processes: dict[str, subprocess.Popen] = {}
        self._oom_kills: dict[str, int | None] = {}  # the kernel's OOM kill count at launch
        self._oom_watches: dict[str, OomWatch] = {}  # the memory cgroups each step was seen in

    @property
    def name(self) -> str:
        return "ProcessStepHandler"

    def launch_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        args = step_handler_context.execute_step_args
        step_key = _step_key(step_handler_context)
        origin = check.not_none(args.job_origin)
        self._oom_kills[step_key] = oom_kills()
        process = subprocess.Popen(
            [origin.executable_path, "-m", "dagster", "api", "execute_step", serialize_value(args)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._processes[step_key] = process
        self._oom_watches[step_key] = OomWatch()
        self._oom_watches[step_key].look(process.pid)
        yield DagsterEvent.step_worker_starting(
            step_handler_context.get_step_context(step_key),
            message=f"Launching step in process {process.pid}.",
            metadata={
                "pid": str(process.pid),
                "start_ticks": str(start_ticks(process.pid) or ""),
                "host": hostname(),
            },
        )

    def check_step_health(self, step_handler_context: StepHandlerContext) -> CheckStepHealthResult:
        step_key = _step_key(step_handler_context)
        process = self._processes.get(step_key)
        if process is not None:  # launched by this worker
            watch = self._oom_watches.setdefault(step_key, OomWatch())
            returncode = process.poll()
            if returncode is None:
                watch.look(process.pid)
            if returncode in (None, 0):
                return CheckStepHealthResult.healthy()
            cause = step_process_cause(returncode, watch, self._oom_kills.get(step_key))
            return CheckStepHealthResult.unhealthy(
                f"Step process {process.pid} for step {step_key} {describe_exit(returncode)}"
                f" ({cause})."
            )
        run_id = step_handler_context.dagster_run.run_id
        recorded = recorded_step_processes(step_handler_context.instance, run_id).get(step_key)
        if recorded is None:
            # The previous worker may have died between starting the step's process and
            # recording it: look for that process before running the step a second time.
            pid = find_step_process(run_id, step_key)
            if pid is not None:
                return CheckStepHealthResult.healthy()
            return CheckStepHealthResult.unhealthy(f"No process was recorded for step {step_key}.")
        if recorded.host == hostname() and is_alive(recorded.pid, recorded.start_ticks):
            return CheckStepHealthResult.healthy()
        return CheckStepHealthResult.unhealthy(
            f"Step process {recorded.pid} for step {step_key} is no longer running."
        )

    def terminate_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        step_key = _step_key(step_handler_context)
        recorded = recorded_step_processes(
            step_handler_context.instance, step_handler_context.dagster_run.run_id
        ).get(step_key)
        if recorded is None or recorded.host != hostname():
            return
        yield DagsterEvent.engine_event(
            step_handler_context.get_step_context(step_key),
            message=f"Stopping process {recorded.pid} of step {step_key}.",
            event_specific_data=EngineEventData(),
        )
        stop_group(recorded.pid, recorded.start_ticks, STEP_TERMINATE_GRACE_SECONDS)


def step_process_cause(returncode: int, watch: OomWatch, kills_at_launch: int | None) -> CrashCause:
    """Why a step process ended: a SIGKILL while an OOM kill was counted in a memory cgroup it
    was seen in is ``oom_killed``; where no cgroup could be read, the machine-wide count
    (``/proc/vmstat``) decides, as for run workers."""
    try:
        killed = watch.killed()
    except LookupError:
        after = oom_kills()
        counts = (kills_at_launch, after) if None not in (kills_at_launch, after) else None
        return process_cause(returncode, counts)  # type: ignore[arg-type]
    if killed is None or returncode != -signal.SIGKILL:
        return process_cause(returncode)
    kills, where = killed
    detail = (
        f"SIGKILL while the kernel's OOM killer acted ({kills} kill(s) in memory cgroup {where})"
    )
    return CrashCause(OOM_KILLED, detail, returncode)


def find_step_process(run_id: str, step_key: str) -> int | None:
    """A live local ``dagster api execute_step`` process of this run and step, from /proc."""
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except OSError:
            continue
        if b"execute_step" not in argv or not is_alive(pid):
            continue
        args = argv[-2] if argv and not argv[-1] else argv[-1]
        wanted = json.dumps({"step_keys_to_execute": [step_key]})[1:-1].encode()
        if run_id.encode() in args and wanted in args:
            return pid
    return None


def _step_key(step_handler_context: StepHandlerContext) -> str:
    step_keys = check.not_none(step_handler_context.execute_step_args.step_keys_to_execute)
    check.invariant(len(step_keys) == 1, "Launching multiple steps is not supported")
    return step_keys[0]
