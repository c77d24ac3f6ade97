"""The daemon's sight of workers' heartbeats, kept from pass to pass: each beat's clock runs
on this daemon's time only (``core.heartbeats.watch``), and starts again whenever the daemon's
own sight was interrupted (it started, a pass failed, or it did not pass for a long while), so
a storage outage or a paused daemon never makes beats look stale."""

import logging
from collections.abc import Mapping

from dagster import DagsterInstance

from dagster_run_monitor.core.heartbeats import (
    FENCE_KEPT_SECONDS,
    Sight,
    by_run,
    watch,
    where_text,
)
from dagster_run_monitor.core.settings import MonitorSettings
from dagster_run_monitor.storage.heartbeats import forget_finished, read_beats, read_stacks


class HeartbeatSight:
    def __init__(self) -> None:
        self.sights: dict[str, Sight] = {}
        self.interrupted = True  # nothing seen yet: every clock starts at the first read
        self._last_read: float | None = None
        self._runs: set[str] = set()  # runs with rows (fenced ones too)
        self._fences: dict[str, float] = {}  # run id -> when the monitor took it over

    def read(
        self, instance: DagsterInstance, settings: MonitorSettings, now: float
    ) -> dict[str, tuple[Sight, ...]]:
        """run id -> its workers' sights (run worker first), after one read of every beat."""
        beats = settings.heartbeats
        if not settings.enabled or not beats.enabled:
            return {}
        long_gap = 2 * settings.poll_interval_seconds + beats.interval_seconds
        fresh = self.interrupted or (
            self._last_read is not None and now - self._last_read > long_gap
        )
        self.interrupted = True  # until this read succeeds
        found = read_beats(instance) or []
        self.sights = watch(self.sights, found, now, fresh)
        self._runs = {beat.run_id for beat in found}
        self._fences = {b.run_id: b.at for b in found if b.fenced}
        self.interrupted, self._last_read = False, now
        return by_run(self.sights)

    def forget_ended(self, instance: DagsterInstance, in_progress: set[str], now: float) -> None:
        """Remove the rows of runs that ended, but fences younger than ``FENCE_KEPT_SECONDS``
        (a saving: a failure is only logged)."""
        kept = {i for i, at in self._fences.items() if now - at < FENCE_KEPT_SECONDS}
        stray = self._runs - in_progress - kept  # a fenced run has no other row
        if not stray:
            return
        try:
            forget_finished(instance, stray)
        except Exception:
            logging.getLogger(__name__).warning("Could not remove ended runs' heartbeats")


def where_workers_were(
    instance: DagsterInstance, workers: Mapping[str, tuple[Sight, ...]], now: float
) -> dict[str, str]:
    """run id -> where its workers were last seen (their stacks: one read for all runs)."""
    stacks = read_stacks(instance, list(workers))
    found = {i: where_text(sights, stacks.get(i, {}), now) for i, sights in workers.items()}
    return {i: text for i, text in found.items() if text}
