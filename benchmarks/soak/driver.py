"""The soak's driver: a steady stream of runs (about ``concurrency`` at once, each with a
random plan), faults at random times (an exponential gap, ``faults_per_minute`` on average),
the daemons' memory sampled; then a drain until every run has ended."""

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from benchmarks.soak import faults as f
from benchmarks.soak.cpu import CpuByKind, busy_core_seconds
from benchmarks.soak.jobs import IN_POD, job_name
from benchmarks.soak.system import (
    HANG_TIMEOUT,
    JOBS,
    LOCATION,
    Daemon,
    Namespace,
    Skewed,
    rss_bytes,
)
from dagster_run_monitor.core.constants import HANG_TIMEOUT_TAG, MAX_RUNTIME_TAG
from dagster_run_monitor_tests.support.k8s import kubelet_pid
from dagster_run_monitor_tests.support.postgres import PrivateCluster
from dagster_run_monitor_tests.support.workspace import create_run

logger = logging.getLogger("soak")
UNFINISHED = [
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


CPU_SAMPLE_SECONDS = 2.0


@dataclass
class Plan:
    """What one run is asked to do."""

    run_id: str = ""
    executor: str = "process"
    seconds: list[float] = field(default_factory=list)
    fail: str = ""  # the step whose code raises
    max_runtime: float = 0.0
    hang: str = ""
    oom: str = ""  # the memory cgroup the OOM-killed step joins
    oom_step: str = ""
    skew: bool = False
    created: float = 0.0

    @property
    def limit_crossed(self) -> bool:
        return bool(self.max_runtime) and self.max_runtime < sum(self.seconds)

    def run_config(self) -> dict[str, Any]:
        ops = {}
        for index, seconds in enumerate(self.seconds, start=1):
            step = f"s{index}"
            config: dict[str, Any] = {"seconds": seconds}
            if step == self.fail:
                config["fail"] = True
            if step == self.hang:
                config["hang"] = True
            if step == self.oom_step:
                config["oom_cgroup"] = self.oom
            ops[step] = {"config": config}
        if self.executor == "k8s" and self.oom_step:  # the step pod's own memory limit
            limits = {"limits": {"memory": OOM_POD_MEMORY}, "requests": {"memory": OOM_POD_MEMORY}}
            per_step = {self.oom_step: {"container_config": {"resources": limits}}}
            return {"ops": ops, "execution": {"config": {"per_step_k8s_config": per_step}}}
        return {"ops": ops}

    def tags(self) -> dict[str, str]:
        tags = {"soak/executor": self.executor}
        if self.max_runtime:
            tags[MAX_RUNTIME_TAG] = str(int(self.max_runtime))
        if self.hang:
            tags[HANG_TIMEOUT_TAG] = str(HANG_TIMEOUT)
        return tags


EXECUTORS = {"k8s": ["k8s", "multiprocess"]}  # else process_step_executor and multiprocess
OOM_POD_MEMORY = "256Mi"  # a step pod's limit when its step is to be OOM-killed


def random_plan(rng: random.Random, executors: list[str]) -> Plan:
    """1 to 6 steps lasting 2 to 60 s in all, under one of ``executors``; one run in ten fails
    in its own code, one in ten has a max runtime (half of them crossed)."""
    steps = rng.randint(1, 6)
    total = rng.uniform(2, 60)
    plan = Plan(
        executor=rng.choice(executors),
        seconds=[round(total / steps, 2)] * steps,
    )
    if rng.random() < 0.1:
        plan.fail = f"s{rng.randint(1, steps)}"
    if rng.random() < 0.1:
        plan.max_runtime = max(5.0, total / 2) if rng.random() < 0.5 else total * 2 + 60
    return plan


@dataclass
class Timer:
    due: float
    action: Callable[[], None]
    what: str


class Driver:
    def __init__(
        self,
        soak_dir: Path,
        launcher: str,
        rng: random.Random,
        instance: DagsterInstance,
        context: Any,
        daemons: list[Daemon],
        database: PrivateCluster,
        skewed: Skewed | None,
        cgroups: "Cgroups | None",
        concurrency: int,
        faults_per_minute: float,
        cluster: Namespace | None = None,
    ) -> None:
        self.soak_dir = soak_dir
        self.cluster = cluster
        self.executors = EXECUTORS.get(launcher, ["process", "multiprocess"])
        self.rng = rng
        self.instance = instance
        self.context = context
        self.daemons = daemons
        self.database = database
        self.skewed = skewed
        self.cgroups = cgroups
        self.concurrency = concurrency
        self.mean_gap = 60 / faults_per_minute
        kinds = f.kinds_for(launcher, cgroups is not None)
        if skewed is None:
            kinds.pop("skew", None)
        self.kinds, self.weights = list(kinds), list(kinds.values())
        self.log = f.FaultLog(soak_dir / "faults.jsonl")
        self.timers: list[Timer] = []
        self.pending: list[str] = []  # planned faults for the next runs
        self.busy: set[str] = set()  # a daemon down, the database down
        self.unfinished = 0
        self.memory: list[dict[str, Any]] = []
        self.skipped: dict[str, int] = {}
        self.cpu: dict[str, Any] = {}
        self.cpu_by_kind = CpuByKind()

    # --- runs ---------------------------------------------------------------------------

    def submit(self) -> None:
        plan = random_plan(self.rng, self.executors)
        planned = self.pending.pop(0) if self.pending else ""
        if planned == "hang":  # its other steps well within the hang timeout
            plan.seconds = [min(s, HANG_TIMEOUT / 4) for s in plan.seconds]
            plan.hang = f"s{self.rng.randint(1, len(plan.seconds))}"
            plan.max_runtime = 0.0
            plan.fail = ""
        elif planned == "oom" and self.cluster is not None:
            plan.executor = "k8s"  # a step pod with its own limit
            plan.oom_step = f"s{self.rng.randint(1, len(plan.seconds))}"
            plan.oom = IN_POD
        elif planned == "oom" and self.cgroups is not None:
            plan.oom_step = f"s{self.rng.randint(1, len(plan.seconds))}"
            plan.oom = self.cgroups.new()
        elif planned == "skew":
            plan.skew = True
        name = job_name(plan.executor, len(plan.seconds))
        run = create_run(
            self.instance, self.context, LOCATION, JOBS, name, plan.run_config(), plan.tags()
        )
        plan.run_id, plan.created = run.run_id, time.time()
        with open(self.soak_dir / "plans.jsonl", "a") as plans:
            plans.write(json.dumps(asdict(plan)) + "\n")
        if planned:
            self.log.add(f.Fault(planned, plan.created, run.run_id, plan.hang or plan.oom_step))
        if plan.skew and self.skewed is not None:
            self.skewed.launch(run.run_id)
        else:
            self.instance.submit_run(run.run_id, self.context.create_request_context())
        self.unfinished += 1

    def count_unfinished(self) -> None:
        self.unfinished = self.instance.get_runs_count(RunsFilter(statuses=UNFINISHED))

    # --- faults ---------------------------------------------------------------------------

    def inject(self) -> None:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind in f.PLANNED:
            self.pending.append(kind)
        elif kind == "daemon_restart":
            self.restart_daemon()
        elif kind == "pg_outage":
            self.database_outage()
        else:
            targets = f.live_steps(self.soak_dir)
            if not targets:
                self.skipped[kind] = self.skipped.get(kind, 0) + 1
                return
            try:
                fault = self.strike(kind, self.rng.choice(targets))
            except (OSError, ValueError):  # the step ended meanwhile
                self.skipped[kind] = self.skipped.get(kind, 0) + 1
                return
            self.log.add(fault)
            if fault.seconds:
                self.at(fault.time + fault.seconds, lambda: f.heal(fault), f"heal a {kind}")

    def strike(self, kind: str, target: f.LiveStep) -> f.Fault:
        """An immediate fault; on the cluster a run worker is found by its container, a step
        pod is deleted through the API, and one lost node at a time."""
        if self.cluster is None:
            return f.strike(kind, target)
        if kind == "delete_pod":
            fault = f.Fault(kind, time.time(), target.run_id, target.step)
            fault.detail = self.cluster.delete_step_pod(target.run_id, target.step)
            return fault
        if kind == "node_loss" and "kubelet" in self.busy:
            raise ValueError("a node is lost already")
        worker = target.worker or self.cluster.worker_pid(target.run_id)
        fault = f.strike(kind, replace(target, worker=worker), kubelet=kubelet_pid())
        if kind == "node_loss":
            self.busy.add("kubelet")
            self.at(fault.time + fault.seconds, lambda: self.busy.discard("kubelet"), "a node")
        return fault

    def restart_daemon(self) -> None:
        if "daemon" in self.busy:
            self.skipped["daemon_restart"] = self.skipped.get("daemon_restart", 0) + 1
            return
        daemon = self.rng.choice(self.daemons)
        down = self.rng.uniform(10, 60)
        pid = daemon.pid
        daemon.kill()
        self.busy.add("daemon")
        self.log.add(
            f.Fault(
                "daemon_restart", time.time(), pids=[pid or 0], seconds=down, detail=daemon.name
            )
        )

        def restart() -> None:
            daemon.start()
            self.busy.discard("daemon")

        self.at(time.time() + down, restart, f"restart daemon {daemon.name}")

    def database_outage(self) -> None:
        if "database" in self.busy:
            self.skipped["pg_outage"] = self.skipped.get("pg_outage", 0) + 1
            return
        down = self.rng.uniform(5, 20)
        self.busy.add("database")
        stopped = time.time()
        self.database.stop()
        self.log.add(f.Fault("pg_outage", stopped, seconds=down))

        def start() -> None:
            self.database.start()
            self.busy.discard("database")

        self.at(stopped + down, start, "start PostgreSQL")

    def at(self, due: float, action: Callable[[], None], what: str) -> None:
        self.timers.append(Timer(due, action, what))

    def run_timers(self, everything: bool = False) -> None:
        now = time.time()
        for timer in [t for t in self.timers if everything or t.due <= now]:
            self.timers.remove(timer)
            try:
                timer.action()
            except Exception:
                logger.exception("could not %s", timer.what)

    def sample_memory(self) -> None:
        now = time.time()
        for daemon in self.daemons:
            if daemon.pid:
                self.memory.append(
                    {
                        "time": now,
                        "daemon": daemon.name,
                        "pid": daemon.pid,
                        "rss": rss_bytes(daemon.pid),
                    }
                )

    # --- the loop ---------------------------------------------------------------------------

    def run(self, minutes: float, drain_seconds: float) -> float:
        """Runs and faults for ``minutes``, then no new fault and no new run until every run
        has ended (or ``drain_seconds``); returns when the drain ended."""
        start = time.time()
        end = start + minutes * 60
        next_fault = start + self.rng.expovariate(1 / self.mean_gap)
        next_sample = start
        busy = busy_core_seconds()
        next_cpu_sample = start
        while time.time() < end:
            self.step(self.keep_running)
            if time.time() >= next_fault:
                self.step(self.inject)
                next_fault += self.rng.expovariate(1 / self.mean_gap)
            if time.time() >= next_sample:
                self.sample_memory()
                next_sample += 30
            if time.time() >= next_cpu_sample:
                self.cpu_by_kind.sample()
                next_cpu_sample = time.time() + CPU_SAMPLE_SECONDS
            time.sleep(0.5)
        self.cpu = {
            "busy": busy_core_seconds() - busy,
            "available": (time.time() - start) * os.cpu_count(),
            "by_kind": self.cpu_by_kind.totals(),
        }
        deadline = time.time() + drain_seconds
        while time.time() < deadline:
            self.run_timers()
            if not self.timers and "database" not in self.busy:
                try:
                    self.count_unfinished()
                    if self.unfinished == 0:
                        break
                except Exception:
                    pass
            time.sleep(1)
        self.run_timers(everything=True)
        self.sample_memory()
        return time.time()

    def keep_running(self) -> None:
        self.count_unfinished()
        while self.unfinished < self.concurrency:
            self.submit()

    def step(self, action: Callable[[], None]) -> None:
        """One action of the loop; storage errors (the database is down) wait for the next."""
        self.run_timers()
        if "database" in self.busy and action != self.inject:
            return
        try:
            action()
        except Exception as error:
            logger.warning("soak driver: %s", str(error).splitlines()[0] if str(error) else error)


class Cgroups:
    """Memory cgroups (cgroup v1, root) with a 256 MiB limit: a step that joins one and
    allocates 512 MiB is OOM-killed by the kernel."""

    LIMIT = 256 * 2**20

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.made: list[Path] = []

    def new(self) -> str:
        from dagster_run_monitor_tests.support.cgroups import V1

        path = V1 / f"{self.prefix}-{len(self.made)}"
        path.mkdir()
        (path / "memory.limit_in_bytes").write_text(str(self.LIMIT))
        swap = path / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(self.LIMIT))
        self.made.append(path)
        return str(path)

    def remove(self) -> None:
        for path in self.made:
            try:
                path.rmdir()
            except OSError:
                pass
