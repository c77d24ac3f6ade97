"""Pause and unpause the monitor from Python (a sensor, a deploy script) or the CLI: the pause
is a row in the instance's key-value store, so every daemon on the instance obeys it."""

import getpass
import socket

from dagster import DagsterInstance
from dagster._time import get_current_timestamp

from dagster_run_monitor.core.durations import parse_duration
from dagster_run_monitor.core.pause import PAUSE_KEY, Pause, parse_pause


def pause(
    instance: DagsterInstance, duration: float | str, reason: str = "", by: str | None = None
) -> Pause:
    """Pause every daemon of ``instance`` for ``duration`` (seconds, or ``"30m"``, ``"2h"``):
    they observe and act on nothing until it ends or ``unpause``. Replaces a current pause."""
    seconds = parse_duration(duration)
    if seconds <= 0:
        raise ValueError(f"a pause needs a duration above 0, not {duration!r}")
    now = get_current_timestamp()
    who = by or f"{getpass.getuser()}@{socket.gethostname()}"
    paused = Pause(who, now, now + seconds, reason)
    instance.run_storage.set_cursor_values({PAUSE_KEY: paused.to_json()})
    return paused


def unpause(instance: DagsterInstance) -> Pause | None:
    """End the current pause now; returns it (None if there was none)."""
    current = current_pause(instance)
    instance.run_storage.set_cursor_values({PAUSE_KEY: ""})
    return current


def current_pause(instance: DagsterInstance, now: float | None = None) -> Pause | None:
    """The pause in force at ``now`` (default: the current time), if any (one statement)."""
    stored = parse_pause(instance.run_storage.get_cursor_values({PAUSE_KEY}).get(PAUSE_KEY))
    moment = get_current_timestamp() if now is None else now
    return stored if stored is not None and stored.active(moment) else None
