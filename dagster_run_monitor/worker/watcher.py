"""The watcher: a small process beside one run or step worker that writes its heartbeats.

Run as a script (``python watcher.py``), not as a module of the package, so that it loads
nothing but the standard library and the database driver (``sqlite3``, or ``psycopg2``). It
beats while a C call holds its worker's GIL, and sees its worker end within a second.

Its worker (``worker.beats``) writes to its stdin: first one JSON line of settings (the
database, the keys, the token, the worker's pid, the interval; a password stays off the
command line), then whenever it samples, ``{"stacks": [...], "hash": ..., "steps": [...]}``,
and ``stop`` when it ends cleanly. The row format is ``core.heartbeats``'s. Each beat carries
the worker's memory (``memory_reader``, read here, outside the worker); when the worker ends,
cleanly or not, its peak goes to a row of its own (``run_monitor/memory/...``) that outlives
the beats, for the daemon to write on the run when it ends.

Each beat is one statement on a connection of its own, closed after it (like Dagster's own
processes outside the webserver, no connection is held, so 1,000 workers do not take 1,000 of
PostgreSQL's connections): an UPDATE of the worker's own row (its token), or at the first beat
an upsert; the stacks' row is written only when they change. A beat that cannot be
written is tried again at the next interval. A row found taken over (another token, or
``fenced``: the monitor gave the run to a new worker) stops the worker with SIGKILL, so a
worker cut off by a partition writes nothing more once it is back; a row found deleted (the run
ended) stops the watcher, and a ``multiprocess`` child (never adopted by a resumed worker). A
``multiprocess`` child (``parent`` in its settings) whose run worker died is stopped at once:
nothing takes its results, and a resume runs its step again. A step worker whose first beat
comes after the monitor ended its run (the run worker's row fenced ``ended``) stops too."""

import json
import os
import select
import signal
import sys
import time

try:
    from memory_reader import MemoryReader  # run as a script: its neighbour file
except ImportError:  # imported from the package (tests)
    from dagster_run_monitor.worker.memory_reader import MemoryReader

TICK = 1.0  # how often the worker's liveness is checked
FIRST_BEAT = 1.5  # seconds after the start (the worker samples its stacks first after 1 s)


class Rows:
    """The ``kvs`` table of the run storage, by the bare driver, autocommitting."""

    def __init__(self, settings: dict) -> None:
        self.kind = settings["database"]
        self.target = settings["target"]
        self.conn = None

    def _connect(self):
        if self.conn is None:
            if self.kind == "sqlite":
                import sqlite3

                self.conn = sqlite3.connect(self.target, timeout=5, isolation_level=None)
            else:
                import psycopg2

                url = self.target.replace("+psycopg2", "", 1)
                self.conn = psycopg2.connect(
                    url, connect_timeout=5, options="-c statement_timeout=5000"
                )
                self.conn.autocommit = True
        return self.conn

    def run(self, sql: str, args: tuple):
        """Rows changed (or the first row read); the connection dropped on any error."""
        if self.kind != "sqlite":
            sql = sql.replace("?", "%s")
        try:
            cursor = self._connect().cursor()
            cursor.execute(sql, args)
            found = cursor.fetchone() if sql.startswith("SELECT") else cursor.rowcount
            cursor.close()
            return found
        except Exception:
            self.close()
            raise

    def upsert(self, key: str, value: str) -> None:
        self.run(
            "INSERT INTO kvs (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def close(self) -> None:
        try:
            if self.conn is not None:
                self.conn.close()
        except Exception:
            pass
        self.conn = None


def cpu_seconds(pid: int) -> float:
    """The process's user and system CPU time, from /proc (0 where there is none)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class Watcher:
    def __init__(self, settings: dict) -> None:
        self.s = settings
        self.rows = Rows(settings)
        self.prefix = settings["token"] + "|"
        self.seq = 0
        self.owned = False  # the first beat was written (an upsert)
        self.sample: dict = {"stacks": [], "hash": "", "steps": []}
        self.stacks_written = None
        self.memory = MemoryReader(int(settings["pid"]))
        self.memory.sample()  # its cgroup seen from the start (an OOM kill counted after)

    def value(self, ended: bool = False, oom: bool = False) -> str:
        s, sample = self.s, self.sample
        memory = self.memory.sample()
        body = {
            "seq": self.seq,
            "host": s["host"],
            "pid": s["pid"],
            "cpu": round(cpu_seconds(s["pid"]), 2),
            "hash": sample["hash"],
            "steps": sample["steps"],
            "mem": [memory["used"], memory["peak"], memory["limit"]],
        }
        if ended:
            body["ended"] = True
        if oom:
            body["oom"] = True
        return self.prefix + json.dumps(body, separators=(",", ":"))

    def beat(self, ended: bool = False) -> bool:
        """Write one beat; False when the worker must stop (its row is no longer its own)."""
        self.seq += 1
        key = self.s["key"]
        oom = ended and self.memory.oom_killed()
        try:
            if not self.owned and ended:  # dead before its first beat: never over a row
                self.rows.run(  # the monitor fenced, or a new worker's, when it acted first
                    "INSERT INTO kvs (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                    (key, self.value(ended, oom)),
                )
            elif not self.owned:
                if self.run_ended():
                    kill(self.s["pid"])
                    return False
                self.rows.upsert(key, self.value(ended, oom))
                self.owned = True
            elif not self.rows.run(
                "UPDATE kvs SET value = ? WHERE key = ? AND value LIKE ?",
                (self.value(ended, oom), key, self.prefix + "%"),
            ):
                return self.lost_row()
            if ended:
                self.keep_peak(oom)
            if self.sample["hash"] != self.stacks_written:
                self.rows.upsert(self.s["stack_key"], "\n".join(self.sample["stacks"]))
                self.stacks_written = self.sample["hash"]
        except Exception:
            pass  # storage down or locked: the next interval tries again
        finally:
            self.rows.close()  # no connection held between beats (PostgreSQL's are few)
        return True

    def lost_row(self) -> bool:
        row = self.rows.run("SELECT value FROM kvs WHERE key = ?", (self.s["key"],))
        if row is not None and not str(row[0]).startswith(self.prefix):
            kill(self.s["pid"])  # taken over: the run has another worker, or it ended
        elif row is None and self.s.get("parent") is not None:
            kill(self.s["pid"])  # a multiprocess child's row goes when its run is taken over
        return False

    def run_ended(self) -> bool:
        """A step worker starting to beat after the monitor ended its run (its run worker's
        row fenced ``ended``): its row was not there to be fenced."""
        if "run_key" not in self.s:
            return False
        row = self.rows.run("SELECT value FROM kvs WHERE key = ?", (self.s["run_key"],))
        return row is not None and str(row[0]).startswith("fenced|") and '"ended"' in str(row[0])

    def orphaned(self) -> bool:
        """A multiprocess child whose run worker died (``parent``: its parent then): nothing
        will take its results, a resume runs its step again, so it stops at once."""
        parent = self.s.get("parent")
        return parent is not None and parent_of(self.s["pid"]) not in (parent, None)

    def keep_peak(self, oom: bool = False) -> None:
        """The worker's memory row: its peak and limit (and an OOM kill seen), kept after its
        beats go until the daemon has written them on the run."""
        memory = self.memory.sample()
        if memory["peak"]:
            value = {"peak": memory["peak"], "limit": memory["limit"], "oom": oom}
            self.rows.upsert(self.s["memory_key"], json.dumps(value, separators=(",", ":")))

    def stop(self) -> None:
        """The worker ended cleanly: its peak is kept, its beat and stacks go (if its own)."""
        try:
            self.keep_peak()
            self.rows.run(
                "DELETE FROM kvs WHERE key = ? AND value LIKE ?", (self.s["key"], self.prefix + "%")
            )
            self.rows.run("DELETE FROM kvs WHERE key = ?", (self.s["stack_key"],))
        except Exception:
            pass

    def loop(self, stdin: int) -> None:
        interval, parent = float(self.s["interval"]), int(self.s["pid"])
        # the first beat once the worker's first sample (after a second) is in: its stacks
        next_beat, pending, open_pipe = time.monotonic() + min(FIRST_BEAT, interval), b"", True
        while True:
            if os.getppid() != parent:  # the worker's process is gone
                self.beat(ended=True)
                return
            if self.orphaned():  # its run worker died: the run is resumed or failed as such
                kill(parent)
                return  # no beat: an 'ended' step worker would read as lost in a resumed run
            if time.monotonic() >= next_beat:
                if not self.beat():
                    return
                next_beat = time.monotonic() + interval
            wait = max(0.0, min(TICK, next_beat - time.monotonic()))
            if not open_pipe:
                time.sleep(wait)
                continue
            if select.select([stdin], [], [], wait)[0]:
                data = os.read(stdin, 65536)
                if not data:  # the worker closed the pipe: gone (seen next tick), or done
                    open_pipe = False
                    continue
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip() == b"stop":
                        self.stop()
                        return
                    try:
                        self.sample = json.loads(line)
                    except ValueError:
                        pass


def main() -> None:
    stdin = sys.stdin.fileno()
    first = b""
    while not first.endswith(b"\n"):
        chunk = os.read(stdin, 1)
        if not chunk:
            return
        first += chunk
    watcher = Watcher(json.loads(first))
    try:
        watcher.loop(stdin)
    finally:
        watcher.rows.close()


if __name__ == "__main__":
    for ignored in (signal.SIGINT, signal.SIGTERM):  # it lives as long as its worker, no longer
        signal.signal(ignored, signal.SIG_IGN)
    main()
