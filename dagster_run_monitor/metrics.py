"""Prometheus metrics of the monitor, served over HTTP when ``run_monitoring.metrics`` is set
(``pip install dagster-run-monitor[metrics]``)."""

from collections import Counter
from collections.abc import Mapping, Sequence

from dagster_run_monitor.core.constants import REASON_STEP_CRASH
from dagster_run_monitor.core.crash_cause import CAUSES
from dagster_run_monitor.core.model import (
    Action,
    CancelRun,
    FailRun,
    Notice,
    ResumeRun,
    RunFacts,
    TerminateAndFail,
)

PREFIX = "dagster_run_monitor"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
WORKER_KINDS = ("run", "step")


class NoMetrics:
    """What the daemon reports to when ``run_monitoring.metrics`` is not set: nothing."""

    enabled = False

    def observed(
        self, facts: Sequence[RunFacts], over_warning: int | None, slower: int | None = None
    ) -> None: ...

    def passed(self, kind: str, seconds: float) -> None: ...

    def applied(self, actions: Sequence[Action]) -> None: ...

    def retried(self, made: Mapping[str, int]) -> None: ...

    def breaker(self, is_open: bool) -> None: ...

    def paused(self, is_paused: bool) -> None: ...

    def resumed_ended(self, ended: Mapping[str, int]) -> None: ...

    def alerts(self, sent: Mapping[str, int], failed: Mapping[str, int]) -> None: ...

    def near_memory_limit(self, workers: Mapping[str, int]) -> None: ...


class Metrics(NoMetrics):
    """The monitor's metrics, in a registry of their own."""

    enabled = True

    def __init__(self, poll_interval_seconds: float = 120) -> None:
        from prometheus_client import CollectorRegistry, Gauge, Histogram
        from prometheus_client import Counter as PromCounter

        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Gauge(
            f"{PREFIX}_runs", "Runs checked by the last pass, by status", ["status"], registry=r
        )
        self.actions = PromCounter(
            f"{PREFIX}_actions",
            "Actions taken, by kind, reason and (crashes) cause",
            ["action", "reason", "cause"],
            registry=r,
        )
        self.crashes = PromCounter(
            f"{PREFIX}_crashes",
            "Crashes acted on (a resume, a failure or a step retry with a cause), by cause;"
            " every cause's series from 0, so a rate counts a cause's first crash",
            ["cause"],
            registry=r,
        )
        for cause in CAUSES:
            self.crashes.labels(cause)
        self.pass_seconds = Histogram(
            f"{PREFIX}_pass_duration_seconds",
            "Duration of a pass (full: every poll interval; crashes: the checks in between)",
            ["kind"],
            registry=r,
        )
        self.health_check_seconds = Histogram(
            f"{PREFIX}_health_check_duration_seconds",
            "Duration of each worker health check",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.health_check_errors = PromCounter(
            f"{PREFIX}_health_check_errors", "Health checks that raised or timed out", registry=r
        )
        self.over_warning = Gauge(
            f"{PREFIX}_runs_over_warning_threshold",
            "Runs that have used warn_after_fraction of a limit (last full pass)",
            registry=r,
        )
        self.slower_than_usual = Gauge(
            f"{PREFIX}_runs_slower_than_usual",
            "Runs past their learned warning: warn_factor x their job's usual runtime (last full"
            " pass)",
            registry=r,
        )
        self.breaker_open = Gauge(
            f"{PREFIX}_breaker_open",
            "1 while the breaker is open (the last pass distrusted its own sight), else 0",
            registry=r,
        )
        self.workers_near_memory_limit = Gauge(
            f"{PREFIX}_workers_near_memory_limit",
            "Run and step workers whose memory is past run_monitoring.memory.warn_fraction of"
            " their limit, by kind of worker",
            ["worker"],
            registry=r,
        )
        self.near_memory_limit({})  # both kinds exposed, 0 until a full pass sets them

        self.paused_gauge = Gauge(
            f"{PREFIX}_paused",
            "1 while the monitor is paused (dagster-run-monitor pause): it observes, acts on"
            " nothing",
            registry=r,
        )

        self.poll_interval = Gauge(
            f"{PREFIX}_poll_interval_seconds",
            "The configured poll_interval_seconds (a full pass is due this often)",
            registry=r,
        )
        self.poll_interval.set(poll_interval_seconds)
        self.last_pass = Gauge(
            f"{PREFIX}_last_pass_timestamp_seconds",
            "When the last pass of each kind ended (Unix time)",
            ["kind"],
            registry=r,
        )
        self.ended_after_resume = PromCounter(
            f"{PREFIX}_resumed_runs_ended",
            "Runs the monitor resumed that have finished since, by final status",
            ["status"],
            registry=r,
        )
        self.alert_deliveries = PromCounter(
            f"{PREFIX}_alerts",
            "Alert deliveries by sink and outcome (sent, failed)",
            ["sink", "outcome"],
            registry=r,
        )

    def breaker(self, is_open: bool) -> None:
        self.breaker_open.set(1 if is_open else 0)

    def resumed_ended(self, ended: Mapping[str, int]) -> None:
        for status, count in ended.items():
            self.ended_after_resume.labels(status).inc(count)

    def alerts(self, sent: Mapping[str, int], failed: Mapping[str, int]) -> None:
        for outcome, counts in (("sent", sent), ("failed", failed)):
            for sink, count in counts.items():
                self.alert_deliveries.labels(sink, outcome).inc(count)

    def paused(self, is_paused: bool) -> None:
        self.paused_gauge.set(1 if is_paused else 0)

    def near_memory_limit(self, workers: Mapping[str, int]) -> None:
        """The workers near their memory limit at a full pass, by kind (``run``, ``step``):
        both kinds set, 0 when absent."""
        for worker in WORKER_KINDS:
            self.workers_near_memory_limit.labels(worker).set(workers.get(worker, 0))

    def serve(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.registry)

    def observed(
        self, facts: Sequence[RunFacts], over_warning: int | None, slower: int | None = None
    ) -> None:
        """Record what a pass saw: the runs by status and past their thresholds (full passes,
        ``over_warning`` given), the health checks."""
        if over_warning is not None:
            self.runs.clear()
            for status, count in Counter(f.status.value for f in facts).items():
                self.runs.labels(status).set(count)
            self.over_warning.set(over_warning)
            self.slower_than_usual.set(slower or 0)
        for f in facts:
            if f.health is not None:
                self.health_check_seconds.observe(f.health.seconds)
                if not f.health.answered:
                    self.health_check_errors.inc()

    def passed(self, kind: str, seconds: float) -> None:
        self.pass_seconds.labels(kind).observe(seconds)
        self.last_pass.labels(kind).set_to_current_time()

    def applied(self, actions: Sequence[Action]) -> None:
        for action in actions:
            labels = action_labels(action)
            self.actions.labels(*labels).inc()
            if labels[2]:  # a crash's cause
                self.crashes.labels(labels[2]).inc()

    def retried(self, made: Mapping[str, int]) -> None:
        """Step retries made, by cause (kind ``retry``, reason ``step_crash``)."""
        for cause, count in made.items():
            self.actions.labels("retry", REASON_STEP_CRASH, cause).inc(count)
            self.crashes.labels(cause).inc(count)


KINDS = {
    FailRun: "fail",
    CancelRun: "cancel",
    TerminateAndFail: "terminate_and_fail",
    ResumeRun: "resume",
    Notice: "notice",
}


def action_labels(action: Action) -> tuple[str, str, str]:
    """(kind, reason, cause) of an action, as logs and metrics name them (cause: a crash's,
    "" for other actions)."""
    reason = action.tag if isinstance(action, Notice) else action.reason
    return KINDS[type(action)], reason, getattr(action, "cause", None) or ""
