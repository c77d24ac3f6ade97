"""The instance class named in dagster.yaml, and a mixin for users who have their own."""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from dagster import DagsterInstance
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.instance.config import DAGSTER_CONFIG_YAML_FILENAME
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.storage.tags import WILL_RETRY_TAG

from dagster_run_monitor.config.parse import read_settings
from dagster_run_monitor.config.schema import run_monitoring_config_field
from dagster_run_monitor.core.constants import (
    DAEMON_TYPE,
    FAILING_TAG,
    ended_before_message,
    stopped_for_failure_message,
)

BUILTIN_MONITORING_DAEMON = "MONITORING"
RUN_ENDS = frozenset(
    {DagsterEventType.RUN_CANCELED, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS}
)


class RunMonitorInstanceMixin:
    """For users with their own instance class: ``class Mine(RunMonitorInstanceMixin, Theirs)``."""

    def __init__(self, *args: Any, run_monitoring: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        read_settings(self)  # fail at start-up, naming the key, on a bad value

    @classmethod
    def config_schema(cls) -> dict:
        parent = getattr(super(), "config_schema", None)
        return {**(parent() if parent else {}), "run_monitoring": run_monitoring_config_field()}

    @classmethod
    def config_defaults(cls, base_dir: str) -> dict:
        """Called whenever a process loads dagster.yaml from a directory (``DAGSTER_HOME``)."""
        refuse_duplicate_keys(os.path.join(base_dir, DAGSTER_CONFIG_YAML_FILENAME))
        parent = getattr(super(), "config_defaults", None)
        return parent(base_dir) if parent else InstanceRef.config_defaults(base_dir)

    @property
    def run_monitoring_max_resume_run_attempts(self) -> int:
        """The documented default (3) where the launcher can resume; read by run workers too."""
        configured = self.run_monitoring_settings.get("max_resume_run_attempts")  # type: ignore[attr-defined]
        if configured is not None or not self.run_monitoring_enabled:  # type: ignore[attr-defined]
            return configured or 0
        return read_settings(self).resume_attempts

    def run_will_resume(self, run_id: str) -> bool:
        """Asked by a run worker that is being stopped: a run that is being terminated (by the
        user, or by the monitor, which may already have marked it failed) will not be
        resumed, so its worker stops its steps instead of leaving them running. Resumes that
        ``crash_policy`` did not count do not use up the attempts."""
        run = self.get_run_by_id(run_id)  # type: ignore[attr-defined]
        if run is None or run.is_finished or run.status == DagsterRunStatus.CANCELING:
            return False
        if not self.run_monitoring_enabled:  # type: ignore[attr-defined]
            return False
        from dagster_run_monitor.core.crashes import uncounted_attempts

        resumes = self.count_resume_run_attempts(run_id)
        uncounted = uncounted_attempts(run.tags, resumes)
        counted = resumes - uncounted
        if counted < self.run_monitoring_max_resume_run_attempts:
            return True
        return uncounted < read_settings(self).uncounted_resumes  # preemptions, lost nodes

    def count_resume_run_attempts(self, run_id: str) -> int:
        """One query instead of Dagster's scan of every engine event of the run; none during a
        pass's health checks (``answers``)."""
        from dagster_run_monitor.storage.answers import resume_count
        from dagster_run_monitor.storage.eventlog import count_resume_attempts

        counted = resume_count(run_id)
        if counted is not None:
            return counted
        return count_resume_attempts(self.event_log_storage, [run_id])[run_id]  # type: ignore[attr-defined]

    def add_run_tags(self, run_id: str, new_tags: Mapping[str, str]) -> None:
        """Dagster's, but for a launcher resuming a run for the daemon that writes tags the run
        has already (``answers.resuming``): nothing to write."""
        from dagster_run_monitor.storage import answers

        if answers.already_tagged(run_id, new_tags):
            return
        super().add_run_tags(run_id, new_tags)  # type: ignore[misc]
        answers.tagged(run_id, new_tags)

    def report_engine_event(self, message: str, dagster_run: Any = None, *args: Any, **kwargs: Any):
        """Dagster's; a run worker starts its heartbeat at "Started process for run"."""
        event = super().report_engine_event(message, dagster_run, *args, **kwargs)  # type: ignore[misc]
        data = kwargs.get("engine_event_data", args[0] if args else None)
        if dagster_run is not None and data is not None and not kwargs.get("step_key"):
            from dagster_run_monitor.worker import beats

            beats.run_worker_started(self, dagster_run.run_id, data.metadata)
        return event

    def handle_new_event(self, event: Any, **kwargs: Any) -> None:
        """Dagster's; a run failure that step retries will decide is tagged
        ``dagster/will_retry: false`` before it is stored (Dagster's run-retry daemon reads a
        failure as soon as it is stored, and decides by itself if the tag is not there yet); a
        step worker starts its heartbeat at STEP_WORKER_STARTED; a worker whose run was taken
        over while it was stopped writes nothing (``beats.fenced``)."""
        from dagster_run_monitor.worker import beats

        if beats.fenced(self):
            return
        dagster_event = event.get_dagster_event() if event.is_dagster_event else None
        if dagster_event is not None and dagster_event.event_type in RUN_ENDS:
            event = self._one_end(event, dagster_event)
            dagster_event = event.get_dagster_event()
        if dagster_event is not None and dagster_event.is_run_failure:
            if self.run_retries_enabled and self._left_to_step_retries(event.run_id):  # type: ignore[attr-defined]
                self.add_run_tags(event.run_id, {WILL_RETRY_TAG: "false"})
        super().handle_new_event(event, **kwargs)  # type: ignore[misc]
        beats.event_handled(self, event)

    def _one_end(self, event: Any, dagster_event: DagsterEvent) -> Any:
        """An end of a run (RUN_CANCELED, RUN_FAILURE, RUN_SUCCESS) becomes an engine event
        where the run has ended already (whoever writes it: a worker, or a code server that saw
        its run's process die after the monitor failed it), and a worker's where the monitor is
        failing the run (CANCELING with ``FAILING_TAG``, a tag a step retry inherits from its
        parent: the monitor writes the one end, FAILURE; Dagster's sequence has both). Never
        raises."""
        try:
            run = self.get_run_by_id(event.run_id)  # type: ignore[attr-defined]
            if run is None:
                return event
            own, pid = dagster_event.message or "", dagster_event.pid
            canceling = run.status == DagsterRunStatus.CANCELING
            failing = run.tags.get(FAILING_TAG) if canceling and pid is not None else None
            if run.is_finished:
                who = "another process" if pid is None else f"its worker (pid {pid})"
                message = ended_before_message(run.status.value, who, own)
            elif failing:
                message = stopped_for_failure_message(failing)
                if dagster_event.event_type != DagsterEventType.RUN_CANCELED and own:
                    message += f" The worker's own end: {own}"
            else:
                return event
            engine = DagsterEvent(
                event_type_value=DagsterEventType.ENGINE_EVENT.value,
                job_name=dagster_event.job_name,
                message=message,
                event_specific_data=EngineEventData(),
                pid=dagster_event.pid,
            )
            return event._replace(dagster_event=engine, user_message=message)
        except Exception:
            return event

    def dispose(self) -> None:
        from dagster_run_monitor.worker import beats

        beats.disposed(self)
        super().dispose()  # type: ignore[misc]

    def _should_retry_run(self, run: Any, run_failure_reason: Any) -> bool:
        """Dagster's run retries' verdict, written as ``dagster/will_retry`` once a failure is
        stored; a run left to step retries (tagged before its failure was stored) keeps
        ``false``: the monitor retries it or hands it back to Dagster's retries (never both)."""
        if run.tags.get(WILL_RETRY_TAG) == "false" and self._left_to_step_retries(run.run_id):
            return False
        return super()._should_retry_run(run, run_failure_reason)  # type: ignore[misc]

    def _left_to_step_retries(self, run_id: str) -> bool:
        """With ``step_retries`` on, whether a failed step of the run died of a crash (one read
        of its step events). Never raises into the worker storing the failure: an error leaves
        the run to Dagster's retries."""
        try:
            if not (self.run_monitoring_enabled and read_settings(self).step_retries.enabled):  # type: ignore[attr-defined]
                return False
            from dagster_run_monitor.daemon.failed_runs import has_crashed_step

            return has_crashed_step(self, run_id)  # type: ignore[arg-type]
        except Exception:
            return False

    def get_required_daemon_types(self) -> Sequence[str]:
        from dagster_run_monitor.integration.registration import install

        install()
        types = list(super().get_required_daemon_types())  # type: ignore[misc]
        if BUILTIN_MONITORING_DAEMON in types:
            types[types.index(BUILTIN_MONITORING_DAEMON)] = DAEMON_TYPE
        return types


class RunMonitorInstance(RunMonitorInstanceMixin, DagsterInstance):
    """``instance_class: {module: dagster_run_monitor, class: RunMonitorInstance}``."""


def refuse_duplicate_keys(path: str) -> None:
    """Fail on a dagster.yaml that has a top-level key twice, which YAML loaders resolve
    silently (the last one wins). With Dagster's Helm chart this is ``run_monitoring:`` written
    both by ``dagsterDaemon.runMonitoring`` and by ``additionalInstanceConfig``."""
    try:
        with open(path) as file:
            root = yaml.compose(file, Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return  # no file here, or one Dagster itself reports
    if not isinstance(root, yaml.MappingNode):
        return
    first_line: dict[str, int] = {}
    for key, _ in root.value:
        name, line = str(key.value), key.start_mark.line + 1
        if name not in first_line:
            first_line[name] = line
            continue
        hint = (
            " With Dagster's Helm chart, set dagsterDaemon.runMonitoring.enabled: false and keep"
            " the block under additionalInstanceConfig."
            if name == "run_monitoring"
            else ""
        )
        raise DagsterInvalidConfigError(
            f"{path} has two `{name}:` keys (lines {first_line[name]} and {line}); only one"
            f" would take effect, silently.{hint}",
            [],
            name,
        )
