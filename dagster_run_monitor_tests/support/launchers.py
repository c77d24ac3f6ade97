"""A run launcher for tests whose worker is described by run tags.

It stands in for a launcher's remote API: `check_run_worker_health` answers what the run's
`test/health` tag says, `resume_run` starts a "new worker" by rewriting that tag, and
`terminate` behaves as Dagster's launchers do (RUN_CANCELING first, no-op on finished runs).
Real worker processes are covered by the process launcher's tests.

`RecordingRunLauncher` also records each worker it launches; `RacingRunLauncher` lets another
daemon act during a health check (the reliability tests)."""

import time
from collections.abc import Callable

from dagster import Bool, Field
from dagster._core.launcher import (
    CheckRunHealthResult,
    LaunchRunContext,
    ResumeRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.storage.dagster_run import DagsterRun, RunsFilter
from dagster._serdes import ConfigurableClass, ConfigurableClassData

HEALTH_TAG = "test/health"  # RUNNING, SUCCESS, FAILED, NOT_FOUND, UNKNOWN


TRANSIENT_TAG = "test/health_transient"  # "true"


HEALTH_SLEEP_TAG = "test/health_sleep"  # seconds the health check takes


HEALTH_RAISE_TAG = "test/health_raise"  # any value: the health check raises


RESUME_RAISE_TAG = "test/resume_raise"  # any value: resume_run raises


AFTER_RESUME_TAG = "test/health_after_resume"  # health of a resumed worker (default RUNNING)


TERMINATE_TAG = "test/terminate"  # ok (default), false, raise


TERMINATED_TAG = "test/terminated"  # written when terminate stopped the worker


class ScriptedRunLauncher(RunLauncher, ConfigurableClass):
    def __init__(self, inst_data: ConfigurableClassData | None = None, can_resume: bool = True):
        self._inst_data = inst_data
        self._can_resume = can_resume
        super().__init__()

    @property
    def inst_data(self):
        return self._inst_data

    @classmethod
    def config_type(cls):
        return {"can_resume": Field(Bool, is_required=False, default_value=True)}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context: LaunchRunContext) -> None:
        pass

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        return scripted_health(self._instance.get_run_by_id(run.run_id) or run)

    @property
    def supports_resume_run(self) -> bool:
        return self._can_resume

    def resume_run(self, context: ResumeRunContext) -> None:
        run = context.dagster_run
        if RESUME_RAISE_TAG in run.tags:
            raise RuntimeError("could not start a new worker")
        after = run.tags.get(AFTER_RESUME_TAG, WorkerStatus.RUNNING.value)
        self._instance.add_run_tags(run.run_id, {HEALTH_TAG: after})

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        behaviour = run.tags.get(TERMINATE_TAG, "ok")
        if behaviour == "raise":
            raise RuntimeError("terminate failed")
        if behaviour == "false":
            return False
        self._instance.add_run_tags(
            run_id, {HEALTH_TAG: WorkerStatus.NOT_FOUND.value, TERMINATED_TAG: "true"}
        )
        return True

    def get_run_worker_debug_info(self, run: DagsterRun, include_container_logs=True) -> str:
        return f"scripted worker debug info (container logs: {include_container_logs})"


def scripted_health(run: DagsterRun) -> CheckRunHealthResult:
    """What the run's tags say about its worker (see the module docstring)."""
    if HEALTH_SLEEP_TAG in run.tags:
        time.sleep(float(run.tags[HEALTH_SLEEP_TAG]))
    if HEALTH_RAISE_TAG in run.tags:
        raise ConnectionError("launcher API unavailable")
    status = WorkerStatus(run.tags.get(HEALTH_TAG, WorkerStatus.RUNNING.value))
    return CheckRunHealthResult(
        status, msg=f"worker is {status.value.lower()}", transient=TRANSIENT_TAG in run.tags
    )


LAUNCHED_TAG = "test/launched_attempts"  # attempt numbers whose new worker was launched: "1,2"


RESUME_SLEEP_TAG = "test/resume_sleep"  # seconds resume_run takes before the worker is launched


RACE_TAG = "test/race"  # RacingRunLauncher: another daemon acts during this run's health check


RECORDING_LAUNCHER = {
    "module": "dagster_run_monitor_tests.support.launchers",
    "class": "RecordingRunLauncher",
}


RACING_LAUNCHER = {
    "module": "dagster_run_monitor_tests.support.launchers",
    "class": "RacingRunLauncher",
}


class RecordingRunLauncher(ScriptedRunLauncher):
    """ScriptedRunLauncher whose resume records the attempt it launched, in the same tag write
    that starts the "new worker": a resume event without its launch is a resume cut short."""

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """ScriptedRunLauncher's answer, read in one query instead of two (``get_run_by_id``
        also checks the schema): three daemons check hundreds of runs a second."""
        fresh = self._instance.get_runs(RunsFilter(run_ids=[run.run_id]))
        return scripted_health(fresh[0] if fresh else run)

    def resume_run(self, context: ResumeRunContext) -> None:
        run = self._instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
        if RESUME_SLEEP_TAG in run.tags:  # a launcher's API call takes time
            time.sleep(float(run.tags[RESUME_SLEEP_TAG]))
        launched = [a for a in run.tags.get(LAUNCHED_TAG, "").split(",") if a]
        launched.append(str(context.resume_attempt_number))
        after = run.tags.get(AFTER_RESUME_TAG, WorkerStatus.RUNNING.value)
        tags = {HEALTH_TAG: after, LAUNCHED_TAG: ",".join(launched)}
        self._instance.add_run_tags(run.run_id, tags)


def launched_attempts(run: DagsterRun) -> list[int]:
    return [int(a) for a in run.tags.get(LAUNCHED_TAG, "").split(",") if a]


class RacingRunLauncher(RecordingRunLauncher):
    """RecordingRunLauncher that runs ``race`` (once per run carrying ``RACE_TAG``) inside a
    health check, after reading the worker's health: another daemon acting at that moment."""

    race: Callable[[DagsterRun], None] | None = None
    _raced: set[str] = set()

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        result = super().check_run_worker_health(run)
        race = type(self).race
        if race is not None and RACE_TAG in run.tags and run.run_id not in self._raced:
            self._raced.add(run.run_id)
            race(run)
        return result
