"""The single hook into ``dagster-daemon run``: build our daemon for our daemon type."""

import functools

import dagster

from dagster_run_monitor.core.constants import DAEMON_TYPE
from dagster_run_monitor.integration.internals import DAEMON_FACTORY, daemon_controller, missing
from dagster_run_monitor.version import SUPPORTED_DAGSTER, __version__

_MARK = "__dagster_run_monitor__"


def install() -> None:
    """Wrap ``dagster._daemon.controller.create_daemon_of_type`` once; other types pass through.
    Fails, naming the Dagster version and what it lacks, where a Dagster internal the monitor
    relies on is missing (``internals``)."""
    controller = daemon_controller()
    original = getattr(controller, DAEMON_FACTORY, None)
    if original is not None and _installed(original):
        return
    gaps = missing()
    if gaps:
        raise ImportError(
            f"dagster-run-monitor {__version__} cannot run with dagster {dagster.__version__},"
            f" which has no {'; no '.join(gaps)}. It supports {SUPPORTED_DAGSTER}."
        )

    @functools.wraps(original)
    def create_daemon_of_type(daemon_type, instance):
        if daemon_type == DAEMON_TYPE:
            from dagster_run_monitor.daemon.monitor import RunMonitorDaemon

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
