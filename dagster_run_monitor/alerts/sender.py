"""Alert delivery: the daemon's logger at once, every other sink on a thread of its own.

A sink that is down or slow holds up neither the other sinks nor the pass: the pass waits for
the deliveries it started at most as long as the slowest sink may take for one, and what
failed is reported (the daemon's heartbeat shows it), without a secret in it. Each alert goes
out once: the actions happen once per run and cause (claims), warnings once per value (tags);
a daemon stopped between an action and its alert does not send it.

PagerDuty incidents close themselves: the run's open ones (of warnings and resumes) are kept
in its ``run_monitor/pagerduty`` tag, and resolved when the run ends, or when its worker is
healthy again after a resume (``incidents``).
"""

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from dagster_run_monitor.alerts import sinks as sink_calls
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.alert_settings import (
    BREAKER,
    RESUMED,
    SINKS,
    WARNING,
    AlertSettings,
    Secret,
)
from dagster_run_monitor.core.model import Alert

QUEUE_SIZE = 10_000  # alerts waiting for one sink; more are dropped (and reported)
RESOLVED_BY_THE_RUN = (WARNING, RESUMED)  # incidents that close themselves


class AlertSender:
    """Sends alerts to the sinks of ``settings``; the run's open PagerDuty incidents are kept
    in a tag of the run in ``instance``."""

    def __init__(
        self, settings: AlertSettings, logger: logging.Logger, instance: Any = None
    ) -> None:
        self.settings = settings
        self._logger = logger
        self._instance = instance
        self._failures: list[str] = []
        self._sent: Counter[str] = Counter()  # sink -> deliveries since counts()
        self._failed_by_sink: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._secrets = [v.value for v in _secrets(settings)]
        self._sinks: dict[str, tuple[Callable, float, queue.Queue]] = {}
        for name, (deliver, timeout) in sink_calls.sinks(settings).items():
            work: queue.Queue = queue.Queue(QUEUE_SIZE)
            self._sinks[name] = (deliver, timeout, work)
            thread = threading.Thread(
                target=self._work, args=(name, deliver, work), daemon=True, name=f"alert_{name}"
            )
            thread.start()

    def send(self, alert: Alert) -> None:
        """Deliver ``alert`` if it is one of ``alerts.on`` (or the breaker's)."""
        if alert.event not in self.settings.on and alert.event != BREAKER:
            return
        if self.settings.log:
            self._logger.warning("Run monitor alert for run %s: %s", alert.run_id, alert.message)
        for name, (_, _, work) in self._sinks.items():
            self._put(name, work, ("send", alert))

    def resolve(self, run_id: str, subjects: list[str]) -> None:
        """Resolve the PagerDuty incidents ``subjects`` of the run."""
        if "pagerduty" in self._sinks:
            self._put("pagerduty", self._sinks["pagerduty"][2], ("resolve", (run_id, subjects)))

    def flush(self) -> list[str]:
        """Wait for the deliveries started (at most the slowest sink's time for one); what
        failed since the last flush, each a line without secrets."""
        deadline = time.monotonic() + max((t for _, t, _ in self._sinks.values()), default=0)
        for _, _, work in self._sinks.values():
            with work.all_tasks_done:
                while work.unfinished_tasks and time.monotonic() < deadline:
                    work.all_tasks_done.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            failures, self._failures = self._failures, []
        return failures

    def _put(self, name: str, work: queue.Queue, item: tuple) -> None:
        try:
            work.put_nowait(item)
        except queue.Full:
            self._failed(name, item, "too many alerts waiting; this one was dropped")

    def _work(self, name: str, deliver: Callable, work: queue.Queue) -> None:
        while True:
            item = work.get()
            try:
                if item[0] == "send":
                    deliver(item[1])
                    with self._lock:
                        self._sent[name] += 1
                    if name == "pagerduty" and item[1].event in RESOLVED_BY_THE_RUN:
                        self._open(item[1].run_id, [item[1].subject], add=True)
                else:
                    run_id, subjects = item[1]
                    for subject in subjects:
                        sink_calls.pagerduty_resolve(subject, self.settings.pagerduty)  # type: ignore[arg-type]
                    self._open(run_id, subjects, add=False)
            except Exception as error:
                self._failed(name, item, f"{type(error).__name__}: {error}")
            finally:
                work.task_done()

    def _open(self, run_id: str, subjects: list[str], add: bool) -> None:
        """Record the run's open incidents in its tag (in a daemon, only this thread writes
        it)."""
        run = self._instance.get_run_by_id(run_id) if self._instance is not None else None
        if run is None:
            return
        now = open_incidents(run.tags)
        new = (
            now + [s for s in subjects if s not in now]
            if add
            else [s for s in now if s not in subjects]
        )
        if new != now:
            self._instance.add_run_tags(run_id, {c.PAGERDUTY_TAG: " ".join(new)})

    def _failed(self, name: str, item: tuple, why: str) -> None:
        run_id = item[1].run_id if item[0] == "send" else item[1][0]
        for secret in self._secrets:
            why = why.replace(secret, "***")
        line = f"Alert sink {name} failed for run {run_id}: {why}"
        self._logger.warning(line)
        with self._lock:
            self._failures.append(line)
            self._failed_by_sink[name] += 1

    def counts(self) -> tuple[Counter[str], Counter[str]]:
        """Deliveries sent and failed per sink since the last call (for the metrics)."""
        with self._lock:
            sent, failed = self._sent, self._failed_by_sink
            self._sent, self._failed_by_sink = Counter(), Counter()
        return sent, failed


def _secrets(settings: AlertSettings) -> list[Secret]:
    found = []
    for name in SINKS:
        sink = getattr(settings, name)
        for value in vars(sink).values() if sink is not None else ():
            if isinstance(value, Secret):
                found.append(value)
            elif isinstance(value, dict):
                found += [v for v in value.values() if isinstance(v, Secret)]
    return found


def open_incidents(tags: Mapping[str, str]) -> list[str]:
    """The subjects of a run's open PagerDuty incidents, from its tags."""
    return (tags.get(c.PAGERDUTY_TAG) or "").split()
