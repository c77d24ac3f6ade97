"""Measuring: SQL statements and connections per pass, resident memory."""

import contextlib
import ctypes
import gc
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import sqlalchemy as db
from dagster import DagsterInstance


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class SqlCounter:
    """Counts statements sent to the database (SQLAlchemy ``before_cursor_execute`` on every
    Engine: the storages' pools on Postgres, the per-connection engines of SQLite storage)."""

    def __init__(self) -> None:
        self.enabled = False
        self.by_storage: Counter[str] = Counter()
        self.by_thread: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()
        self.connections = 0  # new database connections (Dagster's storages use NullPool)
        self.engines: dict[int, str] = {}
        db.event.listen(db.engine.Engine, "before_cursor_execute", self._on_execute)
        db.event.listen(db.pool.Pool, "connect", self._on_connect)

    def _on_connect(self, dbapi_connection, connection_record) -> None:
        if self.enabled:
            self.connections += 1

    def name_engines(self, instance: DagsterInstance) -> None:
        for name, storage in (
            ("runs", instance.run_storage),
            ("event_log", instance.event_log_storage),
            ("schedules", instance.schedule_storage),
        ):
            engine = getattr(storage, "_engine", None)
            if engine is not None:
                self.engines[id(engine)] = name

    def _on_execute(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if not self.enabled:
            return
        engine = conn.engine
        name = self.engines.get(id(engine))
        if name is None:  # SQLite: one engine per connection; name it by its file
            path = engine.url.database or ""
            base = os.path.basename(path)
            if base == "runs.db":
                name = "runs"
            elif base == "schedules.db":
                name = "schedules"
            elif base.endswith(".db"):
                name = "event_log"
            else:
                name = "other"
        self.by_storage[name] += 1
        self.by_thread[threading.current_thread().name] += 1
        self.statements[" ".join(statement.split())[:100]] += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator["SqlCounter"]:
        self.by_storage.clear()
        self.by_thread.clear()
        self.statements.clear()
        self.connections = 0
        self.enabled = True
        try:
            yield self
        finally:
            self.enabled = False

    @property
    def total(self) -> int:
        return sum(self.by_storage.values())


def peak_rss_bytes() -> int:
    """VmHWM: the peak RSS of this process's address space since exec (ru_maxrss would
    include the parent's peak, inherited through fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Peak RSS of this process while a pass runs, sampled every 5 ms from /proc/self/statm."""

    def __init__(self) -> None:
        self.start_rss = rss_bytes()
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss_sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return self.start_rss, self.peak


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so a pass's RSS growth is its own."""
    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


MB = 1024 * 1024


def cpu_seconds() -> tuple[float, float | None]:
    """CPU seconds used so far by this process (all threads) and by the PostgreSQL server's
    processes (None where /proc does not show them), for the pass's CPU split."""
    own = sum(os.times()[:2])
    tick = os.sysconf("SC_CLK_TCK")
    server, seen = 0.0, False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        if name.startswith("postgres"):
            seen = True
            server += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    return own, server if seen else None
