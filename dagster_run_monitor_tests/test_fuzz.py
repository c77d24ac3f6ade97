"""Fuzzing (issue 7): any `run_monitoring` value and any value of a tag the monitor reads either
works or gives a clear error (a DagsterInvalidConfigError naming the key; a warning on the run
for a tag), and never an unhandled exception from settings parsing, limits resolution or the
pure decision core."""

import importlib.util
import math
import subprocess
import sys
import tempfile
from typing import Any

import pytest
from dagster._config.config_type import ConfigScalarKind, ConfigTypeKind
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dagster_run_monitor.config.parse import settings_from_config
from dagster_run_monitor.config.schema import run_monitoring_config_field
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.crash_cause import CAUSES, CrashCause
from dagster_run_monitor.core.limit_table import TAGS as LIMIT_TAGS
from dagster_run_monitor.core.limits import resolve_limits
from dagster_run_monitor.core.model import MONITORED_STATUSES, Health, Notice, RunFacts
from dagster_run_monitor.core.policy import decide
from dagster_run_monitor.core.settings import MonitorSettings
from dagster_run_monitor.core.step_crashes import LOST_STEP, FailedRun, StepEnd, decide_failed_run

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_800_000_000.0
INSTANCE_CLASS = {"module": "dagster_run_monitor", "class": "RunMonitorInstance"}
KEYS = list(run_monitoring_config_field().config_type.fields)
HOME = tempfile.mkdtemp(prefix="run-monitor-fuzz-")  # no dagster.yaml: only the overrides count

# --- values -------------------------------------------------------------------------------

UNITS = ["ms", "s", "m", "h", "d", "w", "S", "H", "x", ""]
DURATION_WORDS = [
    *["0", "10", "1.5", "90s", "2h", "1h30m", "1h 30m", "PT1H30M", "P1D", "P1M", "PT", "P"],
    *["10 minutes", "-5", "-0", "nan", "inf", "-inf", "1e309", "1e-9", "0x10", "1_000", "٣"],
    *["5m5", "P-1D", "PT99999999999999999999H", "", " ", "\t", "\x00", "None", "true"],
]


def _joined(parts: list[tuple[int, str]], gap: str, tail: str) -> str:
    return gap.join(f"{n}{unit}" for n, unit in parts) + tail


# At most 4 parts: a longer run of parts ending in junk takes exponential time to reject
# (test_durations_with_many_parts_are_rejected_in_linear_time, a known bug).
duration_texts = st.one_of(
    st.sampled_from(DURATION_WORDS),
    st.builds(
        _joined,
        st.lists(st.tuples(st.integers(0, 10**7), st.sampled_from(UNITS)), max_size=4),
        st.sampled_from(["", " ", "  "]),
        st.sampled_from(["", " ", "x", "s"]),
    ),
    st.floats().map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.text(max_size=12),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 400),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    duration_texts,
)
anything = st.one_of(
    scalars,
    st.lists(scalars, max_size=2),
    st.dictionaries(st.text(max_size=6), scalars, max_size=2),
    st.just({"env": "RUN_MONITOR_FUZZ_UNSET"}),
)
ints = st.one_of(st.integers(-3, 400), st.integers(-(10**30), 10**30))
floats = st.one_of(st.floats(-1, 2), st.floats(allow_nan=True, allow_infinity=True))
SCALARS = {
    ConfigScalarKind.INT: ints,
    ConfigScalarKind.FLOAT: floats,
    ConfigScalarKind.BOOL: st.booleans(),
    ConfigScalarKind.STRING: st.text(max_size=8),
}
SPECIAL = {  # values with meaning where the schema says only "a string"
    "stall_action": st.sampled_from(["fail", "resume", "Fail", "", "kill"]),
    "alerts.webhook.url": st.sampled_from(["http://127.0.0.1:9/x", "https://a.b", "ftp://x", ""]),
    "rules[].match.job": st.sampled_from(["*", "etl_*", "[", "a?", ""]),
    # Any in the schema (validated by settings.py): mostly well-formed blocks
    "step_retries": st.fixed_dictionaries(
        {}, optional={"enabled": st.one_of(st.booleans(), scalars), "max_retries": ints}
    ),
}


def mostly(typed: st.SearchStrategy) -> st.SearchStrategy:
    """Values of the type the schema asks for, and one time in twenty anything at all: a block
    with one wrong type is rejected whole, so most values must be well typed to reach our code."""
    return st.integers(0, 19).flatmap(lambda n: anything if n == 0 else typed)


def from_schema(config_type: Any, path: str = "") -> st.SearchStrategy:
    """Values for a Dagster config type, read from the schema itself (keys added later are
    fuzzed too): well typed, but any value of that type (negative, NaN, huge, empty)."""
    kind = config_type.kind
    if path in SPECIAL:
        typed = SPECIAL[path]
    elif kind in (ConfigTypeKind.STRICT_SHAPE, ConfigTypeKind.PERMISSIVE_SHAPE):
        fields = {
            k: (f, from_schema(f.config_type, f"{path}.{k}".strip(".")))
            for k, f in config_type.fields.items()
        }
        typed = st.fixed_dictionaries(
            {k: v for k, (f, v) in fields.items() if f.is_required},
            optional={k: v for k, (f, v) in fields.items() if not f.is_required},
        )
        if kind == ConfigTypeKind.PERMISSIVE_SHAPE:
            typed = st.one_of(typed, st.dictionaries(st.text(max_size=6), scalars, max_size=2))
    elif kind == ConfigTypeKind.ARRAY:
        typed = st.lists(from_schema(config_type.inner_type, f"{path}[]"), max_size=3)
    elif kind == ConfigTypeKind.NONEABLE:
        typed = st.one_of(st.none(), from_schema(config_type.inner_type, path))
    elif kind == ConfigTypeKind.SCALAR_UNION:  # IntSource: a number or {env: NAME}
        env = st.just({"env": "RUN_MONITOR_FUZZ_UNSET"})
        typed = st.one_of(from_schema(config_type.scalar_type, path), env)
    elif kind == ConfigTypeKind.SCALAR:
        typed = SCALARS[config_type.scalar_kind]
    else:  # Any (the rules' limits: seconds or durations), and kinds the block does not use
        typed = anything
    return mostly(typed)


run_monitoring_blocks = st.builds(
    lambda block, typo, key, value: (
        {**block, key: value} if typo == 0 and isinstance(block, dict) else block
    ),
    from_schema(run_monitoring_config_field().config_type),
    st.integers(0, 7),
    st.sampled_from(["start_timeout_secs", "Enabled", "poll_interval"]),  # misspelt, 1 in 8
    scalars,
)


def load(run_monitoring: Any) -> MonitorSettings:
    """What `dagster-daemon run` does with the block: Dagster's schema, then our settings."""
    overrides = {"instance_class": INSTANCE_CLASS, "run_monitoring": run_monitoring}
    config, _ = dagster_instance_config(HOME, overrides=overrides)
    return settings_from_config(
        config.get("run_monitoring"), can_check_health=True, can_resume=True
    )


def names_a_key(error: DagsterInvalidConfigError, keys: list[str]) -> bool:
    """Ours: ``run_monitoring.<key>``; Dagster's schema: ``root:run_monitoring:<key>``, or
    ``Received unexpected config entry "<key>"`` (``"['<key>', ...]"``, reprs, for several)."""
    text = str(error)
    return any(
        f"run_monitoring.{k}" in text
        or f"run_monitoring:{k}" in text
        or f'"{k}"' in text
        or repr(k) in text
        for k in keys
    )


# --- facts --------------------------------------------------------------------------------

monitor_tags = st.dictionaries(
    st.sampled_from(
        [
            *(tag for tags in LIMIT_TAGS.values() for tag in tags),
            c.RESUME_SCHEDULED_TAG,
            c.REASON_TAG,
            f"{c.WARNED_TAG_PREFIX}{c.MAX_RUNTIME_TAG}",
            f"{c.WARNED_TAG_PREFIX}max_runtime_seconds",
            "team",
        ]
    ),
    duration_texts,
    max_size=5,
)
times = st.one_of(st.none(), st.floats(NOW - 10**7, NOW + 100))  # also a little in the future
healths = st.one_of(
    st.none(),
    st.builds(
        Health,
        status=st.sampled_from([s.value for s in WorkerStatus]),
        message=st.text(max_size=8),
        transient=st.booleans(),
    ),
)


@st.composite
def run_facts(draw, tags=monitor_tags) -> RunFacts:
    steps = st.dictionaries(st.sampled_from(["a", "b", "load"]), st.floats(NOW - 10**6, NOW))
    return RunFacts(
        run_id=draw(st.uuids()).hex,
        job_name=draw(st.sampled_from(["etl_daily", "job", ""])),
        status=draw(st.sampled_from(MONITORED_STATUSES)),
        created_at=draw(st.floats(NOW - 10**7, NOW + 100)),
        updated_at=draw(st.floats(NOW - 10**7, NOW + 100)),
        tags=draw(tags),
        location=draw(st.one_of(st.none(), st.sampled_from(["prod", "dev"]))),
        enqueued_at=draw(times),
        last_event_at=draw(times),
        running_steps=draw(steps),
        step_limits=draw(st.dictionaries(st.sampled_from(["a", "b"]), duration_texts)),
        started_at=draw(times),
        launched_at=draw(times),
        canceling_at=draw(times),
        health=draw(healths),
        unhealthy_since=draw(times),
        resume_attempts=draw(st.integers(0, 6)),
    )


step_ends = st.builds(
    StepEnd,
    step_key=st.sampled_from(["a", "b", "g.c[1]"]),
    retried=st.booleans(),
    message=st.sampled_from(
        [
            "Step a failed health check: Discovered failed Kubernetes job j for step a.",
            "Step a failed health check: x (cause: oom_killed, SIGKILL)",
            "boom",
            "(cause: ",
        ]
    ),
    cls_name=st.sampled_from([None, "ChildProcessCrashException", "Failure", LOST_STEP, "X"]),
    error_source=st.sampled_from([None, "INTERRUPT", "USER_CODE_ERROR", "FRAMEWORK_ERROR"]),
    user_failure=st.booleans(),
    canceling=st.booleans(),
    explanation=st.sampled_from(["", "terminated by signal 9 (SIGKILL)", "exited with code 3"]),
    worker=st.sampled_from(
        [
            {},
            {"pid": "1"},
            {"pid": "1", "start_ticks": "2"},
            {"Kubernetes Job name": "j"},
            {"Docker container id": "c"},
            {"Task ARN": "arn:aws:ecs:r:1:task/c/t"},
        ]
    ),
)
crash_causes = st.builds(
    CrashCause,
    kind=st.sampled_from(CAUSES),
    detail=st.text(max_size=6),
    exit_code=st.one_of(st.none(), st.integers(-64, 300)),
    memory=st.sampled_from(
        [
            {},
            {"limits": "2Gi", "requests": "1Gi"},
            {"limits": "bad"},
            {"limits": "1"},
            {"memory": "2048", "cpu": "256", "launch_type": "FARGATE"},
            {"memory": "x", "launch_type": "EC2"},
        ]
    ),
)


@st.composite
def failed_runs(draw) -> FailedRun:
    ends = tuple(draw(st.lists(step_ends, max_size=4)))
    return FailedRun(
        run_id="r",
        job_name="j",
        tags=draw(st.dictionaries(st.sampled_from([c.ROOT_RUN_TAG, "x"]), st.text(max_size=4))),
        failed_at=draw(st.floats(NOW - 10**6, NOW + 100)),
        failed_steps=tuple(draw(st.lists(st.sampled_from(["a", "b", "g.c[1]"]), max_size=3))),
        ends=ends,
        causes=draw(st.dictionaries(st.integers(0, 4), crash_causes, max_size=3)),
        retries=draw(st.integers(0, 5)),
        uncounted=draw(st.integers(0, 12)),
        group_size=draw(st.integers(1, 8)),
        run_config=draw(
            st.sampled_from(
                [
                    {},
                    {"execution": {"config": {}}},
                    {"execution": "x"},
                    {"execution": {"config": 3}},
                    {"execution": {"config": {"multiprocess": {}}}},
                ]
            )
        ),
    )


def known_backoff_bug(config: MonitorSettings) -> bool:
    """resume_backoff values whose wait is NaN or past year 9999 pass validation and make
    `decide` raise (test_a_backoff_that_cannot_be_a_date_is_rejected, a known bug)."""
    return any(
        not 0 <= config.resume_backoff.wait_seconds(attempt, "run") < 1e10 for attempt in range(8)
    )


# --- the properties -----------------------------------------------------------------------


@FUZZ
@given(block=run_monitoring_blocks, data=st.data())
def test_any_run_monitoring_block_works_or_names_the_bad_key(block, data):
    try:
        config = load(block)
    except DagsterInvalidConfigError as error:
        if isinstance(block, dict):
            assert names_a_key(error, list(block)), str(error)
        else:  # not a mapping at all: the error names the block
            assert "root:run_monitoring" in str(error), str(error)
        event("rejected by " + ("Dagster's schema" if "root:" in str(error) else "our settings"))
        return
    event("accepted")
    assert config.poll_interval_seconds >= 1 and config.health_check_timeout_seconds >= 1
    assert config.health_check_threads >= 1 and config.action_threads >= 1
    numbers = [
        config.start_timeout_seconds,
        config.cancel_timeout_seconds,
        config.max_runtime_seconds,
        config.max_resume_run_attempts,
        config.worker_unknown_grace_seconds,
        config.queue_timeout_seconds,
        config.stall_timeout_seconds,
        config.max_step_runtime_seconds,
        *(seconds for r in config.rules for seconds in r.limits.values()),
    ]
    assert all(n >= 0 and not math.isinf(n) for n in numbers), numbers
    assert 0 <= config.warn_after_fraction < 1
    if known_backoff_bug(config):
        event("decide skipped: known resume_backoff bug")
        return
    for run in data.draw(st.lists(run_facts(), min_size=1, max_size=3)):
        decide(run, config, NOW)  # any valid configuration: the pure core never raises
    assert config.step_retries.max_retries >= 0
    for run in data.draw(st.lists(failed_runs(), min_size=1, max_size=2)):
        verdict = decide_failed_run(run, config, NOW)  # nor does the step retries' decision
        assert verdict.retry is None or verdict.retry.retry_number == run.group_size


DEFAULTS = settings_from_config({"enabled": True}, can_check_health=True, can_resume=True)
WITH_RULES = settings_from_config(
    {
        "enabled": True,
        "max_runtime_seconds": 100,
        "queue_timeout_seconds": 60,
        "warn_after_fraction": 0.5,
        "rules": [
            {"match": {"job": "etl_*"}, "max_runtime_seconds": "2h", "stall_timeout_seconds": 30},
            {"match": {"tags": {"team": "ml"}}, "max_step_runtime_seconds": "10m"},
        ],
    },
    can_check_health=True,
    can_resume=True,
)


@settings(max_examples=200, deadline=None)
@given(run=run_facts(), config=st.sampled_from([DEFAULTS, WITH_RULES]), now=st.just(NOW))
def test_any_tag_value_works_or_warns_on_the_run(run, config, now):
    limits = resolve_limits(run.job_name, run.location, run.tags, config)
    bad = {b.tag: b for b in limits.bad_tags}
    for key, tags in LIMIT_TAGS.items():
        tag = next((t for t in tags if run.tags.get(t)), None)
        if tag is None:
            continue
        if tag in bad:  # unusable: the rule's or instance's limit applies, with a warning
            event("a bad tag value")
            assert limits[key] == bad[tag].fallback
        else:
            event("a tag value in use")
            assert limits[key].source == f"tag {tag}"
            assert 0 <= limits[key].seconds < math.inf
    actions = decide(run, config, now)
    warned = {a.tag: a for a in actions if isinstance(a, Notice)}
    for tag, b in bad.items():
        marker = f"{c.WARNED_TAG_PREFIX}{tag}"
        if run.tags.get(marker) == b.value:
            assert marker not in warned  # warned once already
            continue
        notice = warned[marker]
        assert notice.level >= 30 and notice.value == b.value
        assert notice.message.startswith(f"Invalid value {b.value!r} for tag {tag}:")


# --- bugs the fuzzing above found (fixed): kept as regression tests ---------------------


@pytest.mark.parametrize(
    "backoff",
    [
        {"initial_seconds": float("nan")},
        {"multiplier": float("inf")},
        {"initial_seconds": 1e12, "max_seconds": 1e12},
    ],
)
def test_a_backoff_that_cannot_be_a_date_is_rejected(backoff):
    try:
        config = load({"enabled": True, "resume_backoff": backoff})
    except DagsterInvalidConfigError as error:
        assert names_a_key(error, ["resume_backoff"])
        return
    crashed = RunFacts(
        run_id="r",
        job_name="job",
        status=S.STARTED,
        created_at=NOW - 100,
        updated_at=NOW - 100,
        started_at=NOW - 100,
        health=Health(WorkerStatus.FAILED.value, "worker is failed"),
        unhealthy_since=NOW - 10,
        resume_attempts=1,
    )
    decide(crashed, config, NOW)


DURATIONS_PY = importlib.util.find_spec("dagster_run_monitor.core.durations").origin


def test_durations_with_many_parts_are_rejected_in_linear_time():
    """``"1s " * 30 + "x"`` as a run's dagster/max_runtime tag: rejected at once, with the
    warning, not after minutes of regex backtracking inside the daemon's pass. Run in a
    subprocess (a regex cannot be interrupted) that loads only durations.py."""
    program = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('d', {DURATIONS_PY!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "try:\n    module.parse_duration('1s ' * 30 + 'x')\n"
        "except ValueError:\n    print('rejected')\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=5
        )
    except subprocess.TimeoutExpired:
        pytest.fail("parse_duration('1s ' * 30 + 'x') was still running after 5 seconds")
    assert result.stdout.strip() == "rejected", result.stderr
