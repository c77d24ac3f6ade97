"""The instance class named in dagster.yaml, and a mixin for users who have their own."""

from collections.abc import Sequence
from typing import Any

from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.dagster_run import DagsterRunStatus

from dagster_run_monitor.constants import DAEMON_TYPE
from dagster_run_monitor.settings import (
    MonitorSettings,
    invalid_setting,
    run_monitoring_config_field,
    settings_from_config,
)

BUILTIN_MONITORING_DAEMON = "MONITORING"


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
        """Asked by a run worker that is being stopped: a run the user is terminating will not
        be resumed, so its worker stops its steps instead of leaving them running."""
        run = self.get_run_by_id(run_id)  # type: ignore[attr-defined]
        if run is None or run.status in (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED):
            return False
        return super().run_will_resume(run_id)  # type: ignore[misc]

    def count_resume_run_attempts(self, run_id: str) -> int:
        """One query instead of Dagster's scan of every engine event of the run."""
        from dagster_run_monitor.eventlog import count_resume_attempts

        return count_resume_attempts(self.event_log_storage, [run_id])[run_id]  # type: ignore[attr-defined]

    def get_required_daemon_types(self) -> Sequence[str]:
        from dagster_run_monitor.registration import install

        install()
        types = list(super().get_required_daemon_types())  # type: ignore[misc]
        if BUILTIN_MONITORING_DAEMON in types:
            types[types.index(BUILTIN_MONITORING_DAEMON)] = DAEMON_TYPE
        return types


class RunMonitorInstance(RunMonitorInstanceMixin, DagsterInstance):
    """``instance_class: {module: dagster_run_monitor, class: RunMonitorInstance}``."""


def read_settings(instance: DagsterInstance) -> MonitorSettings:
    """Validated settings of any instance; the launcher's abilities are read only if enabled."""
    config = instance.get_settings("run_monitoring") or {}
    if not config.get("enabled"):
        return settings_from_config(config)
    launcher = instance.run_launcher
    settings = settings_from_config(
        config,
        can_check_health=launcher.supports_check_run_worker_health,
        can_resume=launcher.supports_resume_run,
    )
    if settings.stall_action == "resume" and not hasattr(launcher, "kill_worker"):
        raise invalid_setting(
            "stall_action",
            "resume",
            f"{type(launcher).__name__} cannot stop a hung worker without canceling its run;"
            " use fail, or ProcessRunLauncher",
        )
    return settings
