"""Step workers that died: tell a crash (infrastructure) from a failure of the step's own code,
and decide whether a failed run is re-executed from failure (``step_retries``). Pure."""

import datetime
import json
import logging
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.crash_cause import (
    EXIT_CODE,
    OOM_KILLED,
    RUNNING,
    SIGNAL,
    UNKNOWN,
    UNREPORTED,
    CrashCause,
)
from dagster_run_monitor.core.heartbeats import STEP_WORKER_PREFIX
from dagster_run_monitor.core.learned import Sample
from dagster_run_monitor.core.memory import (
    ECS_CPU_TAG,
    ECS_MEMORY_TAG,
    OomMemory,
    format_memory,
    mebibytes_up,
    parse_memory,
    raised_ecs_memory,
    raised_size,
)
from dagster_run_monitor.core.settings import FAIL, RESUME_UNCOUNTED, MonitorSettings

CODE, CRASH, INTERRUPT = "code", "crash", "interrupt"
CHILD_CRASH = "ChildProcessCrashException"  # multiprocess: the step's child process died
INTERRUPTED = "DagsterExecutionInterruptedError"
LOST_STEP = "StepWorkerLost"  # ours: a step that never ended, failed by the monitor (step_lost)
UNFINISHED = "StepNeverEnded"  # ours: a step that started and never ended in a failed run
HEALTH_CHECK = "failed health check"  # step-delegating executors: the step's worker is gone
# Where a step worker ran, from its STEP_WORKER_STARTING / STARTED metadata.
K8S_JOB, DOCKER_CONTAINER, ECS_TASK = "Kubernetes Job name", "Docker container id", "Task ARN"
PID, START_TICKS = "pid", "start_ticks"
K8S, DOCKER, ECS, PROCESS, MULTIPROCESS = "k8s", "docker", "ecs", "process", "multiprocess"
# A cause written into a message by our own step handler: "(cause: oom_killed, ...)".
_OUR_CAUSE = re.compile(r"\(cause: ([a-z_]+)(?:, (.*))?\)\.?$", re.S)
# Dagster's explanation of a dead child process (dagster._utils.get_run_crash_explanation).
_BY_SIGNAL = re.compile(r"terminated by signal (\d+)")
_BY_CODE = re.compile(r"exited with code (-?\d+)")
_BY_EXIT_CODE = re.compile(r"exit code (-?\d+)")


@dataclass(frozen=True)
class StepEnd:
    """One step attempt that ended in STEP_FAILURE (``retried`` False) or STEP_UP_FOR_RETRY."""

    step_key: str
    retried: bool
    message: str  # the error's message
    cls_name: str | None = None
    error_source: str | None = None  # ErrorSource's value, on failures
    user_failure: bool = False  # a dagster.Failure raised by the op
    explanation: str = ""  # multiprocess: the engine event that explained the child's death
    worker: Mapping[str, str] = field(default_factory=dict)  # the attempt's worker metadata
    at: float = 0.0
    canceling: bool = False  # it ended after its run's RUN_CANCELING: stopped, not crashed
    started_at: float | None = None  # the attempt's STEP_START (its pods were made before)


def kind_of(end: StepEnd) -> str:
    """``crash`` (the worker died: a child process crash, a failed health check), ``interrupt``
    (SIGTERM/SIGINT reached the step) or ``code`` (anything its code raised)."""
    if end.user_failure:
        return CODE
    if end.cls_name in (CHILD_CRASH, LOST_STEP, UNFINISHED) or (
        not end.cls_name and HEALTH_CHECK in end.message
    ):
        return CRASH
    if end.cls_name == INTERRUPTED or end.error_source == "INTERRUPT":
        return INTERRUPT
    return CODE


def delegated(worker: Mapping[str, str]) -> bool:
    """A step worker of a step-delegating executor (its own pod, container, task or process,
    which outlives its run worker), not a multiprocess child."""
    return executor_of(worker) != MULTIPROCESS


def executor_of(worker: Mapping[str, str]) -> str:
    """Which executor ran the step, from its worker's metadata."""
    for key, kind in ((K8S_JOB, K8S), (DOCKER_CONTAINER, DOCKER), (ECS_TASK, ECS)):
        if worker.get(key):
            return kind
    return PROCESS if START_TICKS in worker else MULTIPROCESS


def message_cause(end: StepEnd) -> CrashCause | None:
    """The cause a process's step worker shows in its messages: our step handler's
    ``(cause: ...)``, or Dagster's explanation of a dead multiprocess child."""
    found = _OUR_CAUSE.search(end.message)
    if found:
        detail = found.group(2) or ""
        code = _BY_EXIT_CODE.search(detail)
        signum = getattr(signal.Signals, detail.split(",")[0].strip(), None) if detail else None
        exit_code = int(code.group(1)) if code else (-int(signum) if signum else None)
        return CrashCause(found.group(1), detail, exit_code)
    text = end.explanation or end.message
    where = worker_name(end)
    by_signal = _BY_SIGNAL.search(text)
    if by_signal:
        number = int(by_signal.group(1))
        name = (
            signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"
        )
        return CrashCause(SIGNAL, ", ".join(filter(None, (name, where))), -number)
    by_code = _BY_CODE.search(text)
    if by_code:
        code = int(by_code.group(1))
        return CrashCause(EXIT_CODE, ", ".join(filter(None, (f"exit code {code}", where))), code)
    return None


def worker_name(end: StepEnd) -> str:
    """The step worker as people find it: its Job, container, task or process."""
    worker = end.worker
    if worker.get(K8S_JOB):
        return f"Kubernetes Job {worker[K8S_JOB]}"
    if worker.get(DOCKER_CONTAINER):
        return f"container {worker[DOCKER_CONTAINER][:12]}"
    if worker.get(ECS_TASK):
        return f"task {worker[ECS_TASK].rsplit('/', 1)[-1]}"
    return f"process {worker[PID]}" if worker.get(PID) else ""


@dataclass(frozen=True)
class StepCrash:
    """A step attempt whose worker died, with the cause the platform shows."""

    end: StepEnd
    cause: CrashCause

    @property
    def message(self) -> str:
        return c.step_worker_died_message(self.end.step_key, str(self.cause))


@dataclass(frozen=True)
class FailedRun:
    """What the decision needs to know of a run that ended FAILURE. Times are UNIX seconds."""

    run_id: str
    job_name: str
    tags: Mapping[str, str]
    failed_at: float
    failed_steps: tuple[str, ...]  # steps whose last attempt failed
    ends: tuple[StepEnd, ...]  # every failed or retried attempt, oldest first
    causes: Mapping[int, CrashCause] = field(default_factory=dict)  # index in ends -> cause
    retries: int = 0  # counted step retries in its run group so far
    uncounted: int = 0  # uncounted ones
    group_size: int = 1  # runs in its group (Dagster's retry_number for the next)
    run_config: Mapping[str, Any] = field(default_factory=dict)
    peaks: Mapping[str, Sample] = field(default_factory=dict)  # worker -> p95 of its job's peaks

    def crashes(self) -> list[StepCrash]:
        """Every attempt whose worker died or was interrupted (a pod deleted for a drain gets
        SIGTERM), but those that ended once their run was being canceled."""
        return [
            StepCrash(end, self.causes.get(i) or CrashCause(UNKNOWN, worker_name(end)))
            for i, end in enumerate(self.ends)
            if kind_of(end) in (CRASH, INTERRUPT) and not end.canceling
        ]

    def last_end(self, step_key: str) -> StepEnd | None:
        return next((e for e in reversed(self.ends) if e.step_key == step_key), None)


@dataclass(frozen=True)
class RetryFromFailure:
    """Re-execute the failed run from failure as a new run of its group."""

    retry_number: int
    cause: str
    uncounted: bool
    message: str  # the failed run's event naming the retry
    tags: Mapping[str, str]  # the new run's
    run_config: Mapping[str, Any] | None = None  # changed (more memory), else the parent's


@dataclass(frozen=True)
class StepVerdict:
    """What to do with a failed run: the cause events, then a retry, or a note saying why not;
    ``wait_until``: a retry that waits for its back-off (nothing is written before it)."""

    events: tuple[tuple[str, str], ...] = ()  # (step key, message)
    retry: RetryFromFailure | None = None
    note: str | None = None
    level: int = logging.INFO
    wait_until: float | None = None

    @property
    def decision(self) -> str:
        """The ``run_monitor/step_retry`` tag's value once it is applied."""
        return f"retry {self.retry.retry_number}" if self.retry else "none"


def decide_failed_run(run: FailedRun, settings: MonitorSettings, now: float) -> StepVerdict:
    """The cause event of every crashed step worker, and a retry from failure when every
    failed step crashed of a cause ``crash_policy`` resumes, within the budget, after the
    back-off."""
    if any(cause.kind == UNREPORTED for cause in run.causes.values()):
        if now - run.failed_at < settings.heartbeats.timeout_seconds:
            return StepVerdict(wait_until=now)  # its watcher's report is moments away
        run = replace(run, causes=_reported(run))  # it never came: what the messages say
    crashes = run.crashes()
    if not crashes:
        return StepVerdict()
    events = tuple(
        (crash.end.step_key, crash.message) for crash in crashes if crash.cause.kind != RUNNING
    )
    last = {key: run.last_end(key) for key in run.failed_steps}
    failed = [crash for crash in crashes if not crash.end.retried and crash.end in last.values()]
    if not settings.step_retries.enabled or not failed:
        return StepVerdict(events)
    verdict = run.tags.get(c.REASON_TAG, "")
    if verdict in c.LIMIT_REASONS:  # a step killed with its run for a limit, or just before
        return StepVerdict(events, note=c.step_retry_after_limit_message(verdict))
    by_code = [k for k, e in last.items() if e is not None and kind_of(e) == CODE]
    if by_code:  # (a step interrupted by a cancel is neither: it runs again in the retry)
        steps = ", ".join(f"'{key}'" for key in by_code)
        return StepVerdict(events, note=c.step_retry_mixed_message(steps), level=logging.WARNING)
    running = [crash for crash in failed if crash.cause.kind == RUNNING]
    if running:  # a step that never ended whose worker still runs: no retry beside it
        crash = running[0]
        note = c.step_still_running_message(crash.end.step_key, crash.cause.detail)
        return StepVerdict(events, note=note, level=logging.WARNING)
    rules = [(crash, settings.crash_rule(crash.cause)) for crash in failed]
    refused = [(crash, rule) for crash, rule in rules if rule is not None and rule.action == FAIL]
    if refused:
        crash, rule = refused[0]
        note = c.step_retry_refused_message(crash.end.step_key, crash.cause.kind, rule.describe())
        return StepVerdict(events, note=note, level=logging.WARNING)
    uncounted = all(rule is not None and rule.action == RESUME_UNCOUNTED for _, rule in rules)
    uncounted = uncounted and run.uncounted < settings.max_uncounted_resumes
    budget = settings.step_retries.max_retries
    if not uncounted and run.retries >= budget:
        note = c.step_retries_used_message(failed[0].cause.kind, budget)
        return StepVerdict(events, note=note, level=logging.WARNING)
    attempt = run.retries + run.uncounted + 1
    root = run.tags.get(c.ROOT_RUN_TAG, run.run_id)
    wait = settings.resume_backoff.wait_seconds(attempt, root)
    if now - run.failed_at < wait:
        return StepVerdict(events, wait_until=run.failed_at + wait)
    return StepVerdict(events, retry=_retry(run, failed, settings, uncounted))


def _reported(run: FailedRun) -> dict[int, CrashCause]:
    """The causes with those never reported by a watcher read from the messages alone."""
    return {
        i: (message_cause(run.ends[i]) or CrashCause(UNKNOWN))
        if cause.kind == UNREPORTED
        else cause
        for i, cause in run.causes.items()
    }


def _from_messages(end: StepEnd) -> CrashCause:
    return message_cause(end) or CrashCause(UNKNOWN, worker_name(end))


def _retry(
    run: FailedRun, crashes: Sequence[StepCrash], settings: MonitorSettings, uncounted: bool
) -> RetryFromFailure:
    cause = crashes[0].cause
    tags = {
        c.RETRY_NUMBER_TAG: str(run.group_size),
        c.REASON_TAG: c.REASON_STEP_CRASH,
        c.CRASH_CAUSE_TAG: cause.kind,
    }
    if uncounted:
        tags[c.UNCOUNTED_STEP_RETRY_TAG] = "true"
    config, change = None, ""
    oom = [crash for crash in crashes if crash.cause.kind == OOM_KILLED]
    if oom and settings.oom_memory is not None:
        config, change = raised_step_config(run.run_config, oom, settings.oom_memory, run.peaks)
    steps = ", ".join(f"'{crash.end.step_key}'" for crash in crashes)
    message = c.step_retry_message(steps, cause.kind, change, uncounted)
    return RetryFromFailure(run.group_size, cause.kind, uncounted, message, tags, config)


def raised_step_config(
    run_config: Mapping[str, Any],
    crashes: Sequence[StepCrash],
    oom: OomMemory,
    usual: Mapping[str, Sample] | None = None,
) -> tuple[Mapping[str, Any] | None, str]:
    """The retry's run config with more memory for the OOM-killed steps where their executor
    takes it (None: unchanged), and the words that say what changed or why nothing did.
    ``usual``: per worker (``step:<key>``), the p95 of its peaks over the job's last
    successful runs."""
    config = json.loads(json.dumps(dict(run_config)))  # a deep copy of plain data
    execution = config.setdefault("execution", {})
    if not isinstance(execution, dict) or not isinstance(execution.get("config", {}), dict):
        return None, " with the same memory (the run config's execution block is not a mapping)"
    settings = execution.setdefault("config", {})
    said: list[str] = []
    for crash in crashes:
        worker = f"{STEP_WORKER_PREFIX}{crash.end.step_key}"
        said.append(_raise(settings, crash, oom, (usual or {}).get(worker)))
    changed = any(text.startswith("memory") or text.startswith("max_") for text in said)
    return (config if changed else None), " with " + "; ".join(dict.fromkeys(said))


def _raise(settings: dict[str, Any], crash: StepCrash, oom: OomMemory, usual: Sample | None) -> str:
    """Raise one OOM-killed step's memory in its executor's ``settings``; what was done."""
    kind, step, memory = executor_of(crash.end.worker), crash.end.step_key, crash.cause.memory
    worker = f"{STEP_WORKER_PREFIX}{step}"
    if kind == ECS:
        raised = raised_ecs_memory(memory, oom, usual, worker)
        if raised is None or not raised.tags:
            return "the same memory (" + (raised.note if raised else "the task's size is unknown)")
        settings["memory"] = int(raised.tags[ECS_MEMORY_TAG])  # IntSource: MiB
        if ECS_CPU_TAG in raised.tags:
            settings["cpu"] = int(raised.tags[ECS_CPU_TAG])  # IntSource: CPU units
        elif memory.get("launch_type") == "FARGATE" and memory.get("cpu"):
            # Fargate takes only some (cpu, memory) pairs and this config sizes every step's
            # task: the killed task's CPU admits the new memory, a step's other CPU (its
            # task definition's, where an op's ecs/cpu tag sized the killed one) may not.
            settings["cpu"] = int(memory["cpu"])
        return (
            f"memory {raised.tags[ECS_MEMORY_TAG]} MiB for every step's task"
            f" (was {memory.get('memory')} MiB)"
        )
    if kind in (PROCESS, MULTIPROCESS):  # no memory of their own to set: fewer at once
        if kind == MULTIPROCESS and set(settings) <= {"multiprocess", "in_process"}:
            settings.setdefault("multiprocess", {})["max_concurrent"] = 1
        else:
            settings["max_concurrent"] = 1
        return "max_concurrent 1 (the executor sets no memory per step)"
    old, new, why = _sizes(memory.get("limits"), oom, usual, worker)
    if old is None or new is None:
        why = f"{old} is at oom_memory.max {oom.max}" if old else "it had no memory limit"
        return f"the same memory for step '{step}' ({why})"
    if kind == DOCKER:
        kwargs = settings.setdefault("container_kwargs", {})
        kwargs["mem_limit"] = f"{parse_memory(new) // MIB}m"
        swap = _docker_bytes(kwargs.get("memswap_limit"))
        if swap is not None and swap > 0:  # memory + swap: keep the swap, or Docker refuses it
            kwargs["memswap_limit"] = f"{(swap - parse_memory(old) + parse_memory(new)) // MIB}m"
        return f"memory limit {new} for every step's container (was {old}: {why})"
    op = step.rsplit(".", 1)[-1].split("[", 1)[0]  # per_step_k8s_config is keyed by op name
    per_step = settings.setdefault("per_step_k8s_config", {}).setdefault(op, {})
    resources = per_step.setdefault("container_config", {}).setdefault("resources", {})
    resources.setdefault("limits", {})["memory"] = new
    if memory.get("requests"):  # in proportion, within the limit
        raised = parse_memory(new) * parse_memory(memory["requests"]) / parse_memory(old)
        requested = min(parse_memory(new), mebibytes_up(raised))
        resources.setdefault("requests", {})["memory"] = format_memory(requested)
    return f"memory limit {new} for step '{step}' (was {old}: {why})"


MIB = 2**20


def _docker_bytes(size: Any) -> int | None:
    """Bytes of a Docker size (``512m``, ``1g``, a number of bytes); None if it is not one."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    units = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
    text = str(size or "").strip().lower()
    if text[-1:] in units and text[:-1].isdigit():
        return int(text[:-1]) * units[text[-1]]
    return int(text) if text.isdigit() else None


def _sizes(
    limit: str | None, oom: OomMemory, usual: Sample | None, worker: str
) -> tuple[str | None, str | None, str]:
    """The killed limit, the raised one (None: no limit, or at the cap), and why."""
    if not limit:
        return None, None, ""
    try:
        old = parse_memory(limit)
    except ValueError:
        return None, None, ""
    sized = raised_size(old, oom, usual, worker)
    return limit, (format_memory(sized.size) if sized.size > old else None), sized.why


def retry_wait_message(at: float, now: float) -> str:
    when = datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat()
    return c.step_retry_scheduled_message(at - now, when)
