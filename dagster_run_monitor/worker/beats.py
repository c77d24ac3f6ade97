"""The heartbeat of the run or step worker this process is: its watcher process
(``watcher.py``) and a thread that samples where the worker's threads are.

Started by the instance (``integration.instance``) when it reports this process as a run's
worker ("Started process for run", with this pid: ``dagster api execute_run`` and
``resume_run``, and the code server's run subprocess) or as a step's (STEP_WORKER_STARTED with
this pid: the multiprocess executor's children, ``dagster api execute_step``); stopped when
that instance is disposed. One per process; inert unless ``worker_heartbeats`` is on, and
nothing here ever raises into the run.

A worker stopped for a while (a partition, a frozen node: SIGSTOP) may have had its run taken
over or ended meanwhile; when it runs again, it may write an event before its watcher's next
beat stops it (a pending SIGTERM runs Dagster's handler at once). So once its sampling thread
is seen late, the worker reads its rows before it writes, and drops the event and stops (as
its watcher would) where its run is no longer its own: its row fenced or a new worker's; its
row gone and its run ended by another; for a ``multiprocess`` child, which is never adopted,
its run worker's row fenced or a new run worker's (the run worker's token is in the
environment its children inherit)."""

import functools
import hashlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster_run_monitor.config.parse import settings_from_config
from dagster_run_monitor.core.heartbeats import (
    RUN_WORKER,
    STEP_WORKER_PREFIX,
    beat_key,
    memory_key,
    stack_key,
)
from dagster_run_monitor.integration.internals import run_storage_database

WATCHER = str(Path(__file__).with_name("watcher.py"))
LINES = 30  # of stacks in a beat
FRAMES_PER_THREAD = 12
FIRST_SAMPLE_SECONDS = 1.0
STEP_ENDS = frozenset({"STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED", "STEP_UP_FOR_RETRY"})
RUN_ENDS = frozenset({"PIPELINE_SUCCESS", "PIPELINE_FAILURE", "PIPELINE_CANCELED"})
RUN_WORKER_TOKEN = "DAGSTER_RUN_MONITOR_RUN_WORKER_TOKEN"  # for its multiprocess children
_STDLIB = tuple(
    p for p in {sysconfig.get_paths().get("stdlib"), sysconfig.get_paths().get("platstdlib")} if p
)


class Heartbeat:
    """One worker's watcher and sampling thread."""

    def __init__(self, instance: Any, run_id: str, worker: str, interval: float) -> None:
        self.pid = os.getpid()
        self.owner = id(instance)  # the instance whose dispose stops it
        self.steps: set[str] = set()
        self.interval = interval
        self.due = time.monotonic() + min(FIRST_SAMPLE_SECONDS, interval)  # the next sample
        self.suspect = False  # a sample came late: the worker may have been stopped
        self.fenced = False
        self.ended_run = False  # this process wrote its run's end
        self.run_id, self.run_key = run_id, beat_key(run_id)
        self.parent_token: str | None = None  # a multiprocess child's run worker's
        self._stop = threading.Event()
        database, target = run_storage_database(instance)  # type: ignore[misc]
        self.process = subprocess.Popen(
            [sys.executable, WATCHER],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        token = os.urandom(8).hex()
        self.key, self.prefix = beat_key(run_id, worker), token + "|"
        settings = {
            "database": database,
            "target": target,
            "key": self.key,
            "stack_key": stack_key(run_id, worker),
            "memory_key": memory_key(run_id, worker, token),
            "token": token,
            "pid": self.pid,
            "host": socket.gethostname(),
            "interval": interval,
        }
        if worker == RUN_WORKER:
            os.environ[RUN_WORKER_TOKEN] = token
        else:
            settings["run_key"] = self.run_key  # read once, before its first beat
            if multiprocessing.parent_process() is not None:
                settings["parent"] = os.getppid()  # a multiprocess child: useless orphaned
                self.parent_token = os.environ.get(RUN_WORKER_TOKEN)
        self._send(json.dumps(settings))
        self._thread = threading.Thread(target=self._sample, name="run_monitor_heartbeat")
        self._thread.daemon = True
        self._thread.start()

    def _send(self, line: str) -> None:
        try:
            self.process.stdin.write((line + "\n").encode())  # type: ignore[union-attr]
            self.process.stdin.flush()  # type: ignore[union-attr]
        except Exception:  # the watcher is gone: nothing more to send
            self._stop.set()

    def _sample(self) -> None:
        wait = self.due - time.monotonic()  # once the worker is under way
        while not self._stop.wait(max(0.0, wait)):
            if self._late():
                self.suspect = True
            try:
                self._send(json.dumps(sample(threading.get_ident(), self.steps)))
            except Exception:
                pass
            wait = self.interval
            self.due = time.monotonic() + wait

    def _late(self) -> bool:
        """The sample is overdue by half an interval: the process may have been stopped (the
        monitor takes a run over after ``timeout_seconds``, at least two intervals)."""
        return time.monotonic() - self.due > self.interval / 2

    def taken_over(self, instance: Any) -> bool:
        """After a late sample: whether this worker's run is no longer its own (one read, two
        where its row is gone; then none until a sample is late again)."""
        if self._stop.is_set():  # no watcher, no sampling: nothing to go by
            return self.fenced
        if not self.fenced and (self.suspect or self._late()):
            self.suspect = False
            self.fenced = self._read_fence(instance)
        return self.fenced

    def _read_fence(self, instance: Any) -> bool:
        rows = instance.run_storage.get_cursor_values({self.key, self.run_key})
        own, run_worker = rows.get(self.key), rows.get(self.run_key)
        if own is not None and not own.startswith(self.prefix):
            return True  # fenced, or a new worker's
        if self.parent_token and run_worker and not run_worker.startswith(self.parent_token):
            return True  # a multiprocess child whose run worker's row is fenced, or a new one's
        if own is None and not self.ended_run:  # the run's rows go when it ends
            run = instance.get_run_by_id(self.run_id)
            return run is not None and run.is_finished
        return False

    def stop(self) -> None:
        self._stop.set()
        self._send("stop")
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
            self.process.wait(timeout=5)
        except Exception:
            pass


def sample(own_thread: int, steps: set[str]) -> dict[str, Any]:
    """Where the threads that run user code are (the main thread, and any other with a frame
    outside the standard library and Dagster): innermost frames, at most ``LINES`` lines."""
    frames = sys._current_frames()
    names = {t.ident: t.name for t in threading.enumerate()}
    main = threading.main_thread().ident
    lines: list[str] = []
    for ident in sorted(frames, key=lambda i: i != main):
        if ident == own_thread:
            continue
        walked = traceback.walk_stack(frames[ident])
        stack = traceback.StackSummary.extract(walked, limit=FRAMES_PER_THREAD, lookup_lines=False)
        if ident != main and not any(_users(f.filename) for f in stack):
            continue
        lines.append(f"Thread {names.get(ident, ident)}:")
        lines += [f'  File "{f.filename}", line {f.lineno}, in {f.name}' for f in reversed(stack)]
        if len(lines) >= LINES:
            break
    lines = lines[:LINES]
    digest = hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]
    return {"stacks": lines, "hash": digest, "steps": sorted(steps)}


def _users(filename: str) -> bool:
    if filename.startswith(_STDLIB) or filename.startswith("<"):
        return False
    return not ("site-packages" in filename and f"{os.sep}dagster" in filename)


_BEATING: dict[int, Heartbeat] = {}  # pid -> this process's heartbeat


def guest(hook: Callable[..., None]) -> Callable[..., None]:
    """A hook the instance calls in a user's process: whatever goes wrong stays here."""

    @functools.wraps(hook)
    def never_raising(*args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            pass

    return never_raising


def _interval(instance: Any) -> float | None:
    """The beat interval, None where heartbeats are off or the storage has no watcher."""
    config = instance.get_settings("run_monitoring") or {}
    if not config.get("enabled"):
        return None
    beats = settings_from_config(config).heartbeats
    if not beats.enabled or run_storage_database(instance) is None:
        return None
    return beats.interval_seconds


def start(instance: Any, run_id: str, worker: str) -> None:
    """Beat for ``worker`` of ``run_id`` from this process, once."""
    if os.getpid() in _BEATING:
        return
    interval = _interval(instance)
    if interval is not None:
        _BEATING[os.getpid()] = Heartbeat(instance, run_id, worker, interval)


@guest
def run_worker_started(instance: Any, run_id: str, metadata: Any) -> None:
    """After an engine event: "Started process for run" with this process's pid."""
    pid = metadata.get("pid") if metadata else None
    if pid is not None and "step_keys" not in metadata:
        if str(getattr(pid, "value", pid)) == str(os.getpid()):
            start(instance, run_id, RUN_WORKER)


@guest
def event_handled(instance: Any, event: Any) -> None:
    """After each event this process stores: a step worker's start, a step's start or end."""
    dagster_event = getattr(event, "dagster_event", None)
    if dagster_event is None:
        return
    kind = dagster_event.event_type_value
    if kind == "STEP_WORKER_STARTED" and dagster_event.pid == os.getpid():
        start(instance, event.run_id, STEP_WORKER_PREFIX + (dagster_event.step_key or "steps"))
    beating = _BEATING.get(os.getpid())
    if beating is not None and kind in RUN_ENDS and dagster_event.pid == os.getpid():
        beating.ended_run = True
    if beating is None or not dagster_event.step_key:
        return
    if kind == "STEP_START":
        beating.steps.add(dagster_event.step_key)
    elif kind in STEP_ENDS:
        beating.steps.discard(dagster_event.step_key)


def fenced(instance: Any) -> bool:
    """Whether this worker must not write: its run was taken over or ended while it was
    stopped; then it stops (SIGKILL), as its watcher would at its next beat. False on any
    error (no evidence)."""
    beating = _BEATING.get(os.getpid())
    try:
        if beating is None or not beating.taken_over(instance):
            return False
    except Exception:
        return False
    os.kill(os.getpid(), signal.SIGKILL)
    return True


@guest
def disposed(instance: Any) -> None:
    """The instance is disposed: the heartbeat it started stops."""
    beating = _BEATING.get(os.getpid())
    if beating is not None and beating.owner == id(instance):
        del _BEATING[os.getpid()]
        beating.stop()
