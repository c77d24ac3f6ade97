"""The daemon's sight of workers' heartbeats, kept from pass to pass: each beat's clock runs
on this daemon's time only (``core.heartbeats.watch``), and starts again whenever the daemon's
own sight was interrupted (it started, a pass failed, or it did not pass for a long while), so
a storage outage or a paused daemon never makes beats look stale. When a run has ended, its
workers' peaks are written on it (``core.memory_use``), once, and its rows go."""

import logging
from collections.abc import Iterable, Mapping

from dagster import DagsterInstance

from dagster_run_monitor.core.constants import PEAK_MEMORY_TAG
from dagster_run_monitor.core.heartbeats import (
    FENCE_KEPT_SECONDS,
    Peak,
    Sight,
    by_run,
    watch,
    where_text,
)
from dagster_run_monitor.core.memory_use import peak_message, peak_tags, run_peaks
from dagster_run_monitor.core.settings import MonitorSettings
from dagster_run_monitor.storage.claims import claims
from dagster_run_monitor.storage.heartbeats import ended_runs, forget, read_rows, read_stacks

LOGGER = logging.getLogger(__name__)


class HeartbeatSight:
    def __init__(self) -> None:
        self.sights: dict[str, Sight] = {}
        self.interrupted = True  # nothing seen yet: every clock starts at the first read
        self._last_read: float | None = None
        self._runs: set[str] = set()  # runs with rows (fenced ones too)
        self._fences: dict[str, float] = {}  # run id -> when the monitor took it over
        self.peaks: dict[str, list[Peak]] = {}  # run id -> its ended workers' peaks

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
        found, peaks = read_rows(instance) or ([], [])
        self.sights = watch(self.sights, found, now, fresh)
        self.peaks = {}
        for run_id, peak in peaks:
            self.peaks.setdefault(run_id, []).append(peak)
        self._runs = {beat.run_id for beat in found} | set(self.peaks)
        self._fences = {b.run_id: b.at for b in found if b.fenced}
        self.interrupted, self._last_read = False, now
        return by_run(self.sights)

    def forget_ended(
        self,
        instance: DagsterInstance,
        in_progress: set[str],
        now: float,
        timeout: float,
        write: bool = True,
    ) -> None:
        """For the runs that ended: their workers' peaks written on them (``write``: not a dry
        run; once every worker has ended, or ``timeout`` seconds after the run), then their
        rows removed, but fences younger than ``FENCE_KEPT_SECONDS``. A failure is logged;
        the next pass tries again."""
        kept = {i for i, at in self._fences.items() if now - at < FENCE_KEPT_SECONDS}
        stray = self._runs - in_progress
        if not stray:
            return
        try:
            ended = ended_runs(instance, stray)
            due, waiting = {}, set()
            workers = by_run(self.sights)
            for run_id, record in ended.items():
                peaks = self.run_peaks(run_id, workers.get(run_id, ()))
                if not write or record is None or not peaks:
                    continue
                if PEAK_MEMORY_TAG in record.dagster_run.tags:
                    continue
                live = any(not s.beat.ended for s in workers.get(run_id, ()))
                end = record.end_time or now
                if live and now - end < timeout:
                    waiting.add(run_id)  # a worker still ending: its last peak to come
                else:
                    due[run_id] = peaks
            done = write_peaks(instance, due)
            # a fenced run keeps its fence (and so its other rows: it has none but peaks)
            forget(instance, set(ended) - waiting - (set(due) - done) - kept)
        except Exception:
            LOGGER.warning("Could not write ended runs' memory or remove their heartbeats")

    def run_peaks(self, run_id: str, workers: Iterable[Sight]) -> dict[str, Peak]:
        """The run's workers' peaks: those kept as they ended, and their latest beats'."""
        beats = [s.beat.peak for s in workers]
        return run_peaks([*self.peaks.get(run_id, ()), *filter(None, beats)])


def write_peaks(instance: DagsterInstance, due: Mapping[str, Mapping[str, Peak]]) -> set[str]:
    """Under each run's claim, unless another daemon wrote them: its peaks in its tags, then
    one event. The runs done (written here or before, or gone); one run's failure is logged and
    leaves it to the next pass, never the others."""
    done = set()
    with claims(instance, sorted(due)) as held:
        for run_id, record in ended_runs(instance, held).items():
            try:
                run = record.dagster_run if record is not None else None
                if run is not None and PEAK_MEMORY_TAG not in run.tags:
                    instance.add_run_tags(run_id, peak_tags(due[run_id]))
                    instance.report_engine_event(peak_message(due[run_id]), run)
            except Exception:
                LOGGER.warning("Could not write the memory of run %s", run_id, exc_info=True)
                continue
            done.add(run_id)
    return done


def where_workers_were(
    instance: DagsterInstance, workers: Mapping[str, tuple[Sight, ...]], now: float
) -> dict[str, str]:
    """run id -> where its workers were last seen (their stacks: one read for all runs)."""
    stacks = read_stacks(instance, list(workers))
    found = {i: where_text(sights, stacks.get(i, {}), now) for i, sights in workers.items()}
    return {i: text for i, text in found.items() if text}
