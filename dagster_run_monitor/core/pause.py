"""A pause of the monitor ("stand back during the migration"): while it lasts every daemon
observes (metrics, the log, its heartbeat) and acts on nothing; it ends by itself. Pure."""

import json
from dataclasses import asdict, dataclass

from dagster_run_monitor.core.durations import iso_time

PAUSE_KEY = "run_monitor/pause"  # the row in Dagster's key-value store


@dataclass(frozen=True)
class Pause:
    by: str  # user@host
    at: float  # when it was set (epoch seconds)
    until: float  # when it ends by itself
    reason: str = ""

    def active(self, now: float) -> bool:
        return now < self.until

    def describe(self, now: float) -> str:
        """``paused by alice@ops-1 at ... until ... (29 min left): db migration``"""
        left = max(0, round((self.until - now) / 60))
        reason = f": {self.reason}" if self.reason else ""
        return (
            f"paused by {self.by} at {iso_time(self.at)} until {iso_time(self.until)}"
            f" ({left} min left){reason}"
        )

    def holding(self, actions: int, now: float) -> str:
        """The line a paused pass logs and puts in the daemon's heartbeat."""
        return (
            f"Run monitor {self.describe(now)}. Observing only: {actions} action(s) held this"
            " pass; the first pass after the pause judges every run afresh."
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def parse_pause(value: str | None) -> Pause | None:
    """The stored pause; None for none, an ended one (``""``) or a value that is not one."""
    try:
        fields = json.loads(value or "null")
        return Pause(
            str(fields["by"]),
            float(fields["at"]),
            float(fields["until"]),
            str(fields.get("reason", "")),
        )
    except (ValueError, TypeError, KeyError):
        return None
