"""Names users and tools see: daemon type, tags and event-log messages, in one place."""

DAEMON_TYPE = "RUN_MONITOR"

# Run tags we read.
MAX_RUNTIME_TAG = "dagster/max_runtime"  # == dagster.MAX_RUNTIME_SECONDS_TAG
MAX_RUNTIME_ALIAS_TAG = "dagster/max_runtime_seconds"

QUEUE_TIMEOUT_TAG = "run_monitor/queue_timeout"
STALL_TIMEOUT_TAG = "run_monitor/stall_timeout"
MAX_STEP_RUNTIME_TAG = "run_monitor/max_step_runtime"
HANG_TIMEOUT_TAG = "run_monitor/hang_timeout"
LEARNED_LIMITS_TAG = "run_monitor/learned_limits"  # "off": no limit learned for this run

# Run tags we write.
TAG_PREFIX = "run_monitor/"
REASON_TAG = f"{TAG_PREFIX}reason"  # why the monitor ended or resumed the run
# Set with RUN_CANCELING when the monitor terminates a run to fail it (its reason): the worker,
# stopped, writes no RUN_CANCELED (``integration.instance``); the monitor writes the one end.
FAILING_TAG = f"{TAG_PREFIX}failing"
WARNED_TAG_PREFIX = f"{TAG_PREFIX}warned/"  # one warning per cause: warned/<cause> = value
STEP_WORKER_LOST_TAG_PREFIX = f"{WARNED_TAG_PREFIX}step_worker_lost/"  # + step worker = token
CRASH_CAUSE_TAG = f"{TAG_PREFIX}crash_cause"  # the latest crash's cause (crash_cause.CAUSES)
UNCOUNTED_RESUMES_TAG = f"{TAG_PREFIX}uncounted_resumes"  # "2,3": attempts that did not count
PAGERDUTY_TAG = f"{TAG_PREFIX}pagerduty"  # the run's open incidents (Alert.subject, by spaces)
RESUMED_TAG = f"{TAG_PREFIX}resumed"  # the latest resume's attempt number (kept out of history)
LIMIT_SOURCE_TAG = f"{TAG_PREFIX}limit_source"  # "learned": the limit that ended it was learned
SLOWER_THAN_USUAL = "slower_than_usual"  # the warning's WARNED_TAG_PREFIX key and alert limit
MEMORY_WARNED_TAG_PREFIX = f"{WARNED_TAG_PREFIX}memory/"  # + worker = its percent of its limit
PEAK_MEMORY_TAG = f"{TAG_PREFIX}peak_memory"  # at the run's end: its workers' highest, "312Mi"
MEMORY_TAG = f"{TAG_PREFIX}memory"  # at the run's end: {worker: [peak, limit]} in bytes (JSON)

STEP_RETRY_TAG = f"{TAG_PREFIX}step_retry"  # on a failed run: "retry N" or "none", once decided
STEP_CAUSES_TAG = f"{TAG_PREFIX}step_causes"  # "written": the dead step workers' events are in
UNCOUNTED_STEP_RETRY_TAG = (
    f"{TAG_PREFIX}uncounted_step_retry"  # "true" on a retry that did not count
)
# Dagster's run-group tags (dagster._core.storage.tags), which step retries write like its own.
ROOT_RUN_TAG = "dagster/root_run_id"
PARENT_RUN_TAG = "dagster/parent_run_id"
RETRY_NUMBER_TAG = "dagster/retry_number"
AUTO_RETRY_RUN_ID_TAG = "dagster/auto_retry_run_id"

# Written by ProcessRunLauncher: where the run's current worker process is.
WORKER_PID_TAG = f"{TAG_PREFIX}worker_pid"
WORKER_HOST_TAG = f"{TAG_PREFIX}worker_host"
WORKER_START_TAG = f"{TAG_PREFIX}worker_start_ticks"  # /proc start time, tells pid reuse apart
WORKER_LOG_TAG = f"{TAG_PREFIX}worker_log"
WORKER_EXIT_TAG = f"{TAG_PREFIX}worker_exit"  # "<pid>:<returncode>:<oom kills>", at its end
WORKER_OOM_KILLS_TAG = f"{TAG_PREFIX}worker_oom_kills"  # "<pid>:<oom kills>", at its start

# Values of REASON_TAG.
REASON_START_TIMEOUT = "start_timeout"
REASON_START_FAILED = "worker_failed_to_start"
REASON_CANCEL_TIMEOUT = "cancel_timeout"
REASON_MAX_RUNTIME = "max_runtime"
REASON_WORKER_CRASH = "worker_crash"
REASON_QUEUE_TIMEOUT = "queue_timeout"
REASON_STALLED = "stalled"
REASON_STEP_TIMEOUT = "step_timeout"
REASON_WORKER_LOST = "worker_lost"
REASON_HUNG = "hung"
REASON_STEP_CRASH = "step_crash"  # on a run that retries a run whose step workers crashed
REASON_STEP_LOST = "step_lost"  # a step that never ended lost its worker
LOST_STEP_TAG = f"{TAG_PREFIX}lost_step"  # the step of a step_lost failure
LOG_TAIL_LINES = 25  # lines of a worker's output in failure messages
RESUME_SCHEDULED_TAG = f"{TAG_PREFIX}resume_scheduled"  # attempt number announced

# Event-log messages. The first group is Dagster's built-in monitor's, word for word.
RESUME_RUN_LOG_MESSAGE = "Launching a new run worker to resume run"  # written by resume_run


def start_timeout_message(seconds: float) -> str:
    return f"Run timed out due to taking longer than {_num(seconds)} seconds to start."


def cancel_timeout_message(seconds: float) -> str:
    return f"Run timed out due to taking longer than {_num(seconds)} seconds to cancel."


def max_runtime_canceling_message(seconds: float, note: str = "") -> str:
    return f"Canceling due to exceeding maximum runtime of {int(seconds)} seconds{note}."


def max_runtime_failed_message(seconds: float, note: str = "") -> str:
    return f"Exceeded maximum runtime of {int(seconds)} seconds{note}."


def slower_than_usual_message(
    elapsed: float, factor: float, percentile: float, value: float, runs: int
) -> str:
    return (
        f"Run is slower than usual: {_minutes(elapsed)} so far, past {factor:g} x"
        f" p{percentile:g} ({_minutes(value)}) of its job's last {runs} successful runs."
    )


def invalid_learning_tag_message(value: str) -> str:
    return (
        f"Invalid value {value!r} for tag {LEARNED_LIMITS_TAG}: expected on or off."
        " Learned limits apply."
    )


def _minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)} seconds"
    return f"{int(seconds // 60)} minutes"


TERMINATE_EXCEPTION_MESSAGE = (
    "Exception while attempting to terminate run. Run will still be marked as failed."
)


def stopped_for_failure_message(reason: str) -> str:
    return f"Execution stopped: the run monitor is failing this run ({reason}) and writes its end."


def ended_before_message(status: str, who: str, own: str) -> str:
    return f"The run had already ended ({status}) when {who} ended it: {own}"


def failing_left_message(reason: str, seconds: float) -> str:
    return (
        f"Run failed ({reason}): its worker was stopped, and the run was still canceling"
        f" {_num(seconds)} seconds later (the daemon failing it stopped before it could)."
    )


FORCE_FAILED_MESSAGE = (
    "This job is being forcibly marked as failed. The computational resources created by the"
    " run may not have been fully cleaned up."
)


def resuming_message(health: str, run_id: str, uncounted: str | None = None) -> str:
    """``uncounted``: the cause of a resume that does not use an attempt (``crash_policy``)."""
    if uncounted:
        return (
            f"Detected run worker status {health}. Resuming run {run_id} with a new worker,"
            f" not counted against max_resume_run_attempts ({uncounted})."
        )
    return f"Detected run worker status {health}. Resuming run {run_id} with a new worker."


def crash_failed_message(health: str, run_id: str, max_attempts: int, can_resume: bool) -> str:
    if can_resume and max_attempts > 0:
        return (
            f"Detected run worker status {health}. Marking run {run_id} as failed, because it"
            f" has surpassed the configured maximum attempts to resume the run: {max_attempts}."
        )
    return f"Detected run worker status {health}. Marking run {run_id} as failed."


# Messages of our own.
def crash_policy_failed_message(health: str, run_id: str, rule: str) -> str:
    return (
        f"Detected run worker status {health}. Marking run {run_id} as failed without resuming"
        f" it, as {rule} says."
    )


def start_failed_message(health: str, run_id: str, rule: str | None = None) -> str:
    """``rule``: the ``crash_policy`` entry that says fail."""
    return f"Detected run worker status {health} before the run started. Marking run {run_id}" + (
        f" as failed, as {rule} says." if rule else " as failed."
    )


def invalid_tag_message(tag: str, value: str, default: float, source: str = "") -> str:
    applied = f"{_num(default)} seconds" if default else "no limit"
    where = source if source and source != "instance default" else "the instance default"
    return (
        f"Invalid value {value!r} for tag {tag}: expected seconds or a duration such as"
        f" '90s', '2h' or 'PT1H30M'. Using {where} instead ({applied})."
    )


def queue_timeout_message(seconds: float, source: str) -> str:
    return f"Canceled: the run was queued longer than {_num(seconds)} seconds ({source})."


def stall_message(seconds: float, idle: float, source: str) -> str:
    return (
        f"Run stalled: its worker is alive but the run has written no event for {_num(int(idle))}"
        f" seconds, more than the stall timeout of {_num(seconds)} seconds ({source})."
    )


def step_timeout_message(step: str, elapsed: float, limit: float, source: str) -> str:
    return (
        f"Step {step} has run for {_num(int(elapsed))} seconds, longer than its limit of"
        f" {_num(limit)} seconds ({source})."
    )


def step_worker_lost_message(why: str) -> str:
    return f"Step worker lost: {why}. The executor and the run's limits decide the run's fate."


def hang_message(seconds: float, quiet: float, source: str) -> str:
    return (
        f"Run hung: for {_num(int(quiet))} seconds its workers have written no event, their"
        f" stacks have not changed and their CPU time has not advanced, more than the hang"
        f" timeout of {_num(seconds)} seconds ({source})."
    )


def resume_scheduled_message(attempt: int, wait: float, at: str) -> str:
    return f"Resume attempt {attempt} scheduled in {_num(round(wait, 1))} seconds, at {at}."


def threshold_message(limit_name: str, fraction: float, elapsed: float, limit: float) -> str:
    return (
        f"Run has used {fraction:.0%} of its {limit_name} ({_num(int(elapsed))} of"
        f" {_num(limit)} seconds)."
    )


def _num(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def step_worker_died_message(step: str, cause: str) -> str:
    return f"Step '{step}' worker died ({cause})."


def step_retry_message(steps: str, cause: str, change: str, uncounted: bool) -> str:
    budget = ", not counted against step_retries.max_retries" if uncounted else ""
    return f"Retrying from failure{change}, as step {steps} died ({cause}{budget})."


def step_retry_mixed_message(steps: str) -> str:
    return (
        f"Not retrying for step crashes: step {steps} failed in its own code, and a retry"
        " would run it again."
    )


def step_retry_refused_message(step: str, cause: str, rule: str) -> str:
    return f"Not retrying: step '{step}' died ({cause}) and {rule} says fail."


# The monitor's verdicts on a run that a step retry would undo (the run ran all again).
LIMIT_REASONS = (REASON_MAX_RUNTIME, REASON_HUNG, REASON_STALLED, REASON_STEP_TIMEOUT)


def step_retry_after_limit_message(reason: str) -> str:
    return f"Not retrying: the monitor failed this run ({reason}); a retry would undo its verdict."


def step_retries_used_message(cause: str, budget: int) -> str:
    return (
        f"Not retrying: a step died ({cause}), but the run's group has used all"
        f" {budget} step retries (step_retries.max_retries)."
    )


def step_retry_scheduled_message(wait: float, at: str) -> str:
    return f"Retry from failure scheduled in {_num(round(wait, 1))} seconds, at {at}."


def step_lost_canceling_message(step: str, cause: str) -> str:
    return (
        f"Step '{step}' worker lost ({cause}), and the step never ended: canceling the run so"
        " that it does not hang."
    )


def step_lost_message(step: str, cause: str) -> str:
    return f"Step '{step}' worker lost ({cause}), and the step never ended."


def lost_step_end_message(step: str) -> str:
    return (
        f"Step {step} never ended (cause: worker_lost, its worker's heartbeats stopped and its"
        " worker was gone)."
    )


def step_retry_gave_up_message(tries: int, error: str) -> str:
    return f"Could not retry from failure ({tries} passes tried; the last error: {error[:500]})."


def unfinished_step_message(step: str) -> str:
    return f"Step {step} started and never ended, and its run failed (its worker is gone)."


def step_still_running_message(step: str, where: str) -> str:
    return (
        f"Not retrying: step '{step}' never ended and its worker still runs ({where}); a retry"
        " would run it a second time."
    )


def hang_shorter_than_beats_message(limit: float, interval: float) -> str:
    return (
        f"The hang timeout of {limit:g} seconds is shorter than the heartbeats' interval"
        f" ({interval:g} s): a hang is judged only on beats that show it, so it is seen at a"
        " beat at least that long after the run last made progress."
    )
