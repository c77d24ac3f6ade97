"""The single hook into ``dagster-daemon run``: build our daemon for our daemon type."""

import functools

from dagster_run_monitor.constants import DAEMON_TYPE
from dagster_run_monitor.internals import DAEMON_CONTROLLER, DAEMON_FACTORY, daemon_controller

_MARK = "__dagster_run_monitor__"


def install() -> None:
    """Wrap ``dagster._daemon.controller.create_daemon_of_type`` once; other types pass through."""
    controller = daemon_controller()
    original = getattr(controller, DAEMON_FACTORY, None)
    if original is None:
        raise ImportError(
            "dagster-run-monitor cannot register its daemon: this Dagster version has no"
            f" {DAEMON_CONTROLLER}.{DAEMON_FACTORY}. Install a supported Dagster"
            " version (see dagster-run-monitor's setup.py)."
        )
    if _installed(original):
        return

    @functools.wraps(original)
    def create_daemon_of_type(daemon_type, instance):
        if daemon_type == DAEMON_TYPE:
            from dagster_run_monitor.daemon import RunMonitorDaemon

            return RunMonitorDaemon.from_instance(instance)
        return original(daemon_type, instance)

    setattr(create_daemon_of_type, _MARK, True)
    setattr(controller, DAEMON_FACTORY, create_daemon_of_type)


def _installed(func) -> bool:
    """True if our wrapper is anywhere in a chain of ``functools.wraps`` wrappers."""
    while func is not None:
        if getattr(func, _MARK, False):
            return True
        func = getattr(func, "__wrapped__", None)
    return False
