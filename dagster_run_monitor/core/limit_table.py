"""One row per limit the monitor enforces: its ``run_monitoring`` key, how messages name it,
the run status whose time it limits, when its clock starts, the run tags that set it, whether
a rule may set it, and whether threshold warnings watch it. Rule keys, tag lookups, message
labels and the CLI's clocks all derive from this table."""

from collections.abc import Mapping
from dataclasses import dataclass

from dagster import DagsterRunStatus as S

from dagster_run_monitor.core import constants as c


@dataclass(frozen=True)
class LimitKind:
    key: str  # the run_monitoring key (and a rule's key, where rules may set it)
    label: str  # in messages: "Run has used 80% of its max runtime ..."
    status: S  # the run status whose duration it limits
    clock: tuple[str, ...]  # RunFacts fields; the first one that is set starts the clock
    tags: tuple[str, ...] = ()  # run tags that set it, in order of precedence
    by_rule: bool = False
    warns: bool = False  # warn_after_fraction watches it for its status
    default: float = 0  # seconds; 0: no limit
    dagsters: bool = False  # one of Dagster's own keys (else ours)
    description: str = ""  # ours: shown in the config schema


MAX_RUNTIME = LimitKind(
    "max_runtime_seconds",
    "max runtime",
    S.STARTED,
    ("started_at",),
    (c.MAX_RUNTIME_TAG, c.MAX_RUNTIME_ALIAS_TAG),
    by_rule=True,
    warns=True,
    dagsters=True,
)
QUEUE_TIMEOUT = LimitKind(
    "queue_timeout_seconds",
    "queue timeout",
    S.QUEUED,
    ("enqueued_at", "created_at"),
    (c.QUEUE_TIMEOUT_TAG,),
    by_rule=True,
    warns=True,
    description="Cancel runs QUEUED longer than this (0: never).",
)
STALL_TIMEOUT = LimitKind(
    "stall_timeout_seconds",
    "stall timeout",
    S.STARTED,
    ("last_event_at",),
    (c.STALL_TIMEOUT_TAG,),
    by_rule=True,
    description="A STARTED run with a healthy worker but no new event for this long is stalled"
    " (0: off).",
)
STEP_RUNTIME = LimitKind(
    "max_step_runtime_seconds",
    "step runtime",
    S.STARTED,
    ("oldest_step_started_at",),
    (c.MAX_STEP_RUNTIME_TAG,),
    by_rule=True,
    description="Fail the run when one step runs longer (0: no limit).",
)
HANG_TIMEOUT = LimitKind(
    "hang_timeout_seconds",
    "hang timeout",
    S.STARTED,
    ("quiet_since",),
    (c.HANG_TIMEOUT_TAG,),
    by_rule=True,
    description="A STARTED run whose workers have written no event, kept the same stacks and"
    " used no CPU time for this long is hung (0: off; needs worker_heartbeats).",
)
START_TIMEOUT = LimitKind(
    "start_timeout_seconds",
    "start timeout",
    S.STARTING,
    ("launched_at", "updated_at"),
    warns=True,
    default=180,  # Dagster's documented default
    dagsters=True,
)
CANCEL_TIMEOUT = LimitKind(
    "cancel_timeout_seconds",
    "cancel timeout",
    S.CANCELING,
    ("canceling_at", "updated_at"),
    default=180,
    dagsters=True,
)

LIMITS = (
    MAX_RUNTIME,
    QUEUE_TIMEOUT,
    STALL_TIMEOUT,
    STEP_RUNTIME,
    HANG_TIMEOUT,
    START_TIMEOUT,
    CANCEL_TIMEOUT,
)
BY_KEY = {kind.key: kind for kind in LIMITS}
RULE_KEYS = tuple(kind.key for kind in LIMITS if kind.by_rule)
TAGS = {kind.key: kind.tags for kind in LIMITS if kind.tags}
WARNED = {kind.status: kind for kind in LIMITS if kind.warns}


def clock_start(kind: LimitKind, run: object) -> float | None:
    """When ``kind``'s clock started for ``run`` (a RunFacts), None if it has not."""
    return next(
        (value for name in kind.clock if (value := getattr(run, name, None)) is not None), None
    )


Seen = Mapping[str, tuple[str, float | None]]  # run id -> (status, entered it after)


def status_bounds(previous: Seen, last_read: float | None, statuses: Mapping[str, str]) -> Seen:
    """Each run's status and the earliest time it can have entered it by this daemon's own
    clock: the previous complete read, where that read saw the run in another status or not
    in progress (None: this daemon has not seen it enter its status). Timestamps written by
    another host (a launcher's, a worker's) can be minutes off; a limit's clock starts no
    earlier than this bound, so a skewed clock never makes a run look older than it is."""
    bounds = {}
    for run_id, status in statuses.items():
        seen = previous.get(run_id)
        bounds[run_id] = (status, seen[1] if seen and seen[0] == status else last_read)
    return bounds
