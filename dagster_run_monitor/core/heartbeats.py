"""Workers' heartbeats as the daemon judges them: what a beat says, when it went stale by
this daemon's clock (never the worker's), when a run stopped making progress, and the health
of a run worker that is lost. Pure.

A beat is a row of Dagster's key-value store (``kvs``), written by the watcher process beside
each run and step worker (``worker.watcher``): key ``run_monitor/beat/<run id>/<worker>``
(worker ``run``, or ``step:<step key>``), value ``<token>|<json>``, the token naming the
worker process that owns the row. The JSON holds ``seq`` (counts the beats), ``host``, ``pid``,
``cpu`` (the process's CPU seconds), ``hash`` (of its stacks), ``steps`` (running in it),
``mem`` (its memory: used, peak, limit or null, in bytes), ``ended`` (the watcher saw the
process end) and ``oom`` (an OOM kill was counted in its memory cgroup as it ended). Its stacks
are in ``run_monitor/stack/<run id>/<worker>``, read only to show them. A row whose token is
``fenced`` was taken over by the monitor: its old worker stops itself when it sees it. When a
worker ends, its watcher keeps its peak in ``run_monitor/memory/<run id>/<worker>/<token>``
(``{"peak", "limit", "oom"}``), which outlives the beats until the daemon has written the
run's memory on it."""

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

BEAT_PREFIX = "run_monitor/beat/"
STACK_PREFIX = "run_monitor/stack/"
MEMORY_PREFIX = "run_monitor/memory/"
RUN_WORKER = "run"
STEP_WORKER_PREFIX = "step:"
FENCED = "fenced"
CPU_PROGRESS = 0.02  # a worker using this fraction of a core is making progress
FENCE_KEPT_SECONDS = 86400.0  # how long a taken-over row waits for its old worker to return


def fenced_value(now: float, ended: bool = False) -> str:
    """A taken-over row; ``ended``: the monitor ended the run (a step worker whose first beat
    comes after it stops)."""
    return f"{FENCED}|{json.dumps({'at': now, 'ended': True} if ended else {'at': now})}"


def beat_key(run_id: str, worker: str = RUN_WORKER) -> str:
    return f"{BEAT_PREFIX}{run_id}/{worker}"


def stack_key(run_id: str, worker: str = RUN_WORKER) -> str:
    return f"{STACK_PREFIX}{run_id}/{worker}"


def memory_key(run_id: str, worker: str, token: str) -> str:
    return f"{MEMORY_PREFIX}{run_id}/{worker}/{token}"


def key_range(prefix: str) -> tuple[str, str]:
    """Keys starting with ``prefix`` are ``>= low and < high``: a range on the unique index of
    ``kvs.key`` on SQLite and PostgreSQL alike (``LIKE`` scans)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True)
class WorkerMemory:
    """A worker's memory in bytes: now, its peak so far, its limit (None: none)."""

    used: int
    peak: int
    limit: int | None = None

    @property
    def fraction(self) -> float | None:
        """How much of its limit it uses (None: no limit)."""
        return self.used / self.limit if self.limit else None


@dataclass(frozen=True)
class Peak:
    """A worker's peak memory in bytes, as its watcher kept it when it ended (or as its latest
    beat said): its limit, and whether an OOM kill was counted in its cgroup as it ended."""

    worker: str
    peak: int
    limit: int | None = None
    oom: bool = False


@dataclass(frozen=True)
class Beat:
    """One worker's latest beat, as stored."""

    run_id: str
    worker: str  # RUN_WORKER or "step:<key>"
    token: str
    seq: int = 0
    host: str = ""
    pid: int = 0
    cpu: float = 0.0
    stack_hash: str = ""
    steps: tuple[str, ...] = ()
    ended: bool = False
    at: float = 0.0  # a fenced row's: when the monitor took the run over (the daemon's clock)
    memory: WorkerMemory | None = None
    oom: bool = False

    @property
    def peak(self) -> Peak | None:
        """What its latest beat says of its peak."""
        memory = self.memory
        return None if memory is None else Peak(self.worker, memory.peak, memory.limit, self.oom)

    @property
    def fenced(self) -> bool:
        return self.token == FENCED

    @property
    def name(self) -> str:
        """ "run worker" or "step worker of 'load'", for messages."""
        if self.worker == RUN_WORKER:
            return "run worker"
        return f"step worker of '{self.worker[len(STEP_WORKER_PREFIX) :]}'"


def parse_beat(key: str, value: str) -> Beat | None:
    """The beat of a ``kvs`` row, None for a row that is not one (or is damaged)."""
    if not key.startswith(BEAT_PREFIX) or "|" not in value:
        return None
    run_id, _, worker = key[len(BEAT_PREFIX) :].partition("/")
    token, _, body = value.partition("|")
    try:
        data = json.loads(body or "{}")
        return Beat(
            run_id,
            worker,
            token,
            int(data.get("seq", 0)),
            str(data.get("host", "")),
            int(data.get("pid", 0)),
            float(data.get("cpu", 0.0)),
            str(data.get("hash", "")),
            tuple(str(s) for s in data.get("steps", ())),
            bool(data.get("ended", False)),
            float(data.get("at", 0.0)),
            _memory(data.get("mem")),
            bool(data.get("oom", False)),
        )
    except (ValueError, TypeError, AttributeError):
        return None


def _memory(mem: object) -> WorkerMemory | None:
    if not isinstance(mem, list) or len(mem) != 3 or not mem[1]:
        return None
    used, peak, limit = mem
    return WorkerMemory(int(used), int(peak), int(limit) if limit else None)


def parse_peak(key: str, value: str) -> tuple[str, Peak] | None:
    """(run id, the peak) of a memory row, None for a row that is not one (or is damaged)."""
    if not key.startswith(MEMORY_PREFIX):
        return None
    run_id, _, rest = key[len(MEMORY_PREFIX) :].partition("/")
    worker = rest.rpartition("/")[0]
    try:
        data = json.loads(value)
        limit = data.get("limit")
        peak = Peak(worker, int(data["peak"]), int(limit) if limit else None, bool(data.get("oom")))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return (run_id, peak) if worker else None


@dataclass(frozen=True)
class Sight:
    """A worker's beat as this daemon has seen it: since when it has not changed, and since
    when the worker has made no progress (same stacks, CPU time not advancing)."""

    beat: Beat
    since: float  # first pass of this daemon that saw this beat (token and seq)
    quiet_since: float  # the last pass that saw its stacks change or its CPU time advance
    quiet_cpu: float  # its CPU time then

    def age(self, now: float) -> float:
        return now - self.since


def watch(
    previous: Mapping[str, Sight], beats: Iterable[Beat], now: float, fresh: bool = False
) -> dict[str, Sight]:
    """Each worker's sight after this pass read ``beats``. A beat never seen before, or one
    that changed, is seen from ``now``: workers' clocks are never compared with the
    daemon's. ``fresh``: this daemon's sight of the storage was interrupted (it has just
    started, or a pass could not read): every clock starts again."""
    sights = {}
    for beat in beats:
        if beat.fenced:
            continue
        key = f"{beat.run_id}/{beat.worker}"
        old = None if fresh else previous.get(key)
        if old is None or old.beat.token != beat.token:
            sights[key] = Sight(beat, now, now, beat.cpu)
            continue
        since = old.since if old.beat.seq == beat.seq else now
        busy = beat.cpu - old.quiet_cpu >= CPU_PROGRESS * (now - old.quiet_since)
        if beat.stack_hash != old.beat.stack_hash or (busy and beat.cpu > old.quiet_cpu):
            sights[key] = Sight(beat, since, now, beat.cpu)
        else:
            sights[key] = Sight(beat, since, old.quiet_since, old.quiet_cpu)
    return sights


def by_run(sights: Mapping[str, Sight]) -> dict[str, tuple[Sight, ...]]:
    """The sights of each run's workers, its run worker first."""
    runs: dict[str, list[Sight]] = {}
    for sight in sights.values():
        runs.setdefault(sight.beat.run_id, []).append(sight)
    return {
        run_id: tuple(sorted(found, key=lambda s: (s.beat.worker != RUN_WORKER, s.beat.worker)))
        for run_id, found in runs.items()
    }


def run_worker(sights: Iterable[Sight]) -> Sight | None:
    return next((s for s in sights if s.beat.worker == RUN_WORKER), None)


def lost(sight: Sight, now: float, timeout: float) -> str | None:
    """Why the worker is lost, None while it is not: the watcher saw its process end, or no
    beat has changed for ``timeout`` seconds as this daemon saw it."""
    beat = sight.beat
    where = f"the {beat.name} (host {beat.host}, pid {beat.pid})"
    if beat.ended:
        unfinished = "the run" if beat.worker == RUN_WORKER else "its step"
        return f"{where} ended without finishing {unfinished}"
    if sight.age(now) >= timeout:
        return f"no heartbeat from {where} for {int(sight.age(now))} seconds"
    return None


def steps_of(sights: Iterable[Sight]) -> list[str]:
    """The steps the run's workers said they were running."""
    steps: list[str] = []
    for sight in sights:
        steps += [s for s in sight.beat.steps if s not in steps]
    return steps


def lost_message(why: str, steps: list[str]) -> str:
    """``no heartbeat from the run worker (host h, pid p) for 183 seconds; last seen in step
    'load'``."""
    if not steps:
        return why
    names = ", ".join(f"'{s}'" for s in steps)
    return f"{why}; last seen in step{'s' if len(steps) > 1 else ''} {names}"


def quiet_since(sights: Iterable[Sight]) -> float | None:
    """Since when none of the run's workers has made progress (None: no beats)."""
    return max((s.quiet_since for s in sights), default=None)


def seen_until(sights: Iterable[Sight]) -> float | None:
    """Until when the run's workers' beats show what they did: the pass that first saw the
    oldest of their latest beats (None: no beats). No progress is proven up to here only,
    never by a beat that has not come yet."""
    return min((s.since for s in sights), default=None)


def where_text(workers: Iterable[Sight], stacks: Mapping[str, str], now: float) -> str:
    """Where each of the run's workers was last seen, for the event of an action."""
    parts = []
    for sight in workers:
        lines = stacks.get(sight.beat.worker)
        if lines:
            beat = sight.beat
            parts.append(
                f"The {beat.name} (host {beat.host}, pid {beat.pid}) was last seen"
                f" ({sight.age(now):.0f} s ago) in:\n{lines}"
            )
    return "\n".join(parts)
