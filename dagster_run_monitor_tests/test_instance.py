"""The instance class, the mixin, the daemon hook and start-up validation."""

import textwrap

import dagster._daemon.controller as controller
import pytest
from dagster import DagsterInstance
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._core.test_utils import instance_for_test

import dagster_run_monitor
from dagster_run_monitor import RunMonitorInstance, RunMonitorInstanceMixin
from dagster_run_monitor.config.dagster_yaml import INSTANCE_CLASS
from dagster_run_monitor.core import constants as c
from dagster_run_monitor.core.constants import DAEMON_TYPE
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor.integration import registration
from dagster_run_monitor_tests.support.home import SCRIPTED_LAUNCHER, monitor_instance
from dagster_run_monitor_tests.support.runs import T0, make_run, monitor_pass, status_of


def test_our_daemon_replaces_the_builtin_monitoring_daemon(instance):
    types = instance.get_required_daemon_types()
    assert DAEMON_TYPE in types and "MONITORING" not in types
    daemon = controller.create_daemon_of_type(DAEMON_TYPE, instance)
    assert isinstance(daemon, RunMonitorDaemon)
    assert daemon.interval_seconds == 120
    assert type(controller.create_daemon_of_type("SENSOR", instance)).__name__ == "SensorDaemon"


def test_monitoring_disabled_runs_no_monitor_daemon():
    with monitor_instance(run_monitoring={"enabled": False}) as instance:
        types = instance.get_required_daemon_types()
        assert DAEMON_TYPE not in types and "MONITORING" not in types


def test_hook_is_installed_once_and_chains_with_other_wrappers(instance, monkeypatch):
    def base(daemon_type, instance):
        return f"base:{daemon_type}"

    monkeypatch.setattr(controller, "create_daemon_of_type", base)
    registration.install()
    ours = controller.create_daemon_of_type
    registration.install()
    assert controller.create_daemon_of_type is ours  # idempotent

    def other_plugin(daemon_type, instance):  # another plugin wraps ours, without functools
        return "other" if daemon_type == "OTHER" else ours(daemon_type, instance)

    other_plugin.__wrapped__ = ours
    monkeypatch.setattr(controller, "create_daemon_of_type", other_plugin)
    registration.install()
    assert controller.create_daemon_of_type is other_plugin
    assert other_plugin("OTHER", instance) == "other"
    assert other_plugin("SENSOR", instance) == "base:SENSOR"
    assert isinstance(other_plugin(DAEMON_TYPE, instance), RunMonitorDaemon)


def test_hook_fails_loudly_on_an_unsupported_dagster(monkeypatch):
    """A Dagster without an internal the monitor relies on: start-up fails naming Dagster's
    version, what is missing and the supported range."""
    import dagster
    from dagster._core.storage.event_log import SqlEventLogStorage

    monkeypatch.delattr(controller, "create_daemon_of_type")
    monkeypatch.delattr(SqlEventLogStorage, "prepare_insert_event_batch")
    with pytest.raises(ImportError) as raised:
        registration.install()
    assert str(raised.value) == (
        f"dagster-run-monitor {dagster_run_monitor.__version__} cannot run with dagster"
        f" {dagster.__version__}, which has no dagster._daemon.controller.create_daemon_of_type"
        " (to run our daemon); no SqlEventLogStorage.prepare_insert_event_batch."
        " It supports dagster>=1.12,<1.14."
    )


class TheirInstance(DagsterInstance):
    """A user's own instance class with its own key."""

    def __init__(self, *args, team=None, **kwargs):
        self.team = team
        super().__init__(*args, **kwargs)

    @classmethod
    def config_schema(cls):
        return {"team": str}

    @staticmethod
    def config_defaults(base_dir):
        return InstanceRef.config_defaults(base_dir)


class TheirMonitoredInstance(RunMonitorInstanceMixin, TheirInstance):
    pass


def test_mixin_for_users_with_their_own_instance_class(workspace_context):
    overrides = {
        "instance_class": {"module": __name__, "class": "TheirMonitoredInstance"},
        "team": "data",
        "run_launcher": SCRIPTED_LAUNCHER,
        "run_monitoring": {"enabled": True, "start_timeout_seconds": 30},
    }
    with instance_for_test(overrides=overrides) as instance:
        assert isinstance(instance, TheirMonitoredInstance) and instance.team == "data"
        assert DAEMON_TYPE in instance.get_required_daemon_types()
        run = make_run(instance, S.STARTING, launched=T0 - 30)
        with workspace_context(instance) as ctx:
            monitor_pass(instance, ctx)
        assert status_of(instance, run.run_id) == S.FAILURE


def test_resume_default_follows_the_documentation_where_the_launcher_can_resume():
    with monitor_instance() as instance:
        assert instance.run_monitoring_max_resume_run_attempts == 3
    no_resume = {**SCRIPTED_LAUNCHER, "config": {"can_resume": False}}
    with monitor_instance(launcher=no_resume) as instance:
        assert instance.run_monitoring_max_resume_run_attempts == 0
    with monitor_instance(launcher=None) as instance:  # DefaultRunLauncher
        assert instance.run_monitoring_max_resume_run_attempts == 0
    with monitor_instance(run_monitoring={"max_resume_run_attempts": 1}) as instance:
        assert instance.run_monitoring_max_resume_run_attempts == 1


@pytest.mark.parametrize(
    "block, fragment",
    [
        ({"start_timeout_seconds": -5}, "run_monitoring.start_timeout_seconds"),
        ({"poll_interval_seconds": 0}, "run_monitoring.poll_interval_seconds"),
        ({"worker_unknown_grace_seconds": -1}, "run_monitoring.worker_unknown_grace_seconds"),
        ({"cancel_timeout_seconds": "soon"}, "cancel_timeout_seconds"),
        ({"max_resume_run_atempts": 3}, "max_resume_run_atempts"),
    ],
)
def test_invalid_settings_fail_at_start_up_naming_the_key(tmp_path, block, fragment):
    (tmp_path / "dagster.yaml").write_text(
        textwrap.dedent(
            f"""
            instance_class: {INSTANCE_CLASS}
            run_monitoring: {{enabled: true, {", ".join(f"{k}: {v}" for k, v in block.items())}}}
            """
        )
    )
    with pytest.raises(DagsterInvalidConfigError) as error:
        DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path)))
    assert fragment in str(error.value)


def test_instance_class_is_importable_from_the_package_root():
    assert RunMonitorInstance.__module__ == "dagster_run_monitor.integration.instance"


def test_stall_resume_needs_a_launcher_that_can_stop_a_hung_worker():
    with pytest.raises(DagsterInvalidConfigError, match="run_monitoring.stall_action"):
        with monitor_instance(run_monitoring={"stall_action": "resume"}):
            pass


@pytest.mark.parametrize(
    "status, will_resume",
    [(S.STARTED, True), (S.CANCELING, False), (S.CANCELED, False), (S.FAILURE, False)],
)
def test_a_run_worker_being_stopped_is_told_whether_its_run_will_resume(
    instance, status, will_resume
):
    """A worker told yes leaves its step workers running for the resumed worker: never for a
    run that is being terminated, nor for one the monitor already failed (max runtime marks
    the run FAILURE right after the terminate, before the worker asks)."""
    started = make_run(instance, S.STARTED)
    if status == S.CANCELING:
        instance.report_run_canceling(started)
    elif status == S.CANCELED:
        instance.report_run_canceled(started)
    elif status == S.FAILURE:
        instance.report_run_failed(started, "Exceeded maximum runtime of 20 seconds.")
    assert status_of(instance, started.run_id) == status
    assert instance.run_will_resume(started.run_id) is will_resume


def test_resumes_crash_policy_did_not_count_leave_the_attempts_to_a_stopping_worker():
    """A worker stopped by a preemption asks whether its run will resume: with one attempt
    allowed and the two resumes so far uncounted (run_monitor/uncounted_resumes "1,2"), yes;
    once the uncounted bound is used up and the attempt too, no."""
    policy = [{"causes": ["preempted"], "action": "resume_uncounted"}]
    config = {"max_resume_run_attempts": 1, "crash_policy": policy, "max_uncounted_resumes": 2}
    with monitor_instance(run_monitoring=config) as instance:
        run = make_run(instance, S.STARTED, tags={c.UNCOUNTED_RESUMES_TAG: "1,2"})
        for _ in range(2):
            instance.report_engine_event(c.RESUME_RUN_LOG_MESSAGE, run)
        assert instance.run_will_resume(run.run_id)  # 0 of 1 counted attempts used
        instance.report_engine_event(c.RESUME_RUN_LOG_MESSAGE, run)  # a counted one
        assert not instance.run_will_resume(run.run_id)  # 1 of 1; uncounted 2 of 2


WORKER_PID = 4242  # an event with a pid is a worker's; the daemon's and the UI's have none


def worker_end(instance: DagsterInstance, run, event_type: DagsterEventType, message: str) -> None:
    """What a run worker writes at its run's end, through the instance's event path."""
    event = DagsterEvent(
        event_type_value=event_type.value, job_name=run.job_name, message=message, pid=WORKER_PID
    )
    instance.report_dagster_event(event, run.run_id)


def ends(instance: DagsterInstance, run_id: str) -> list[str]:
    ended = (
        DagsterEventType.RUN_SUCCESS,
        DagsterEventType.RUN_FAILURE,
        DagsterEventType.RUN_CANCELED,
    )
    return [
        e.dagster_event.event_type_value
        for e in instance.all_logs(run_id)
        if e.dagster_event and e.dagster_event.event_type in ended
    ]


@pytest.mark.parametrize(
    "worker_ends", [DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS]
)
def test_a_worker_ending_a_run_the_monitor_already_ended_writes_an_engine_event(
    make_instance, worker_ends
):
    """The monitor failed a hung run and its worker, told to stop, wrote its own RUN_FAILURE
    after it (seen by the soak on Kubernetes: two terminal events): a worker's end of a run
    that has ended is an engine event; the run has one end, the monitor's."""
    with make_instance() as instance:
        run = make_run(instance, S.STARTED)
        instance.report_run_failed(run, "Run hung: ...")  # the daemon's: no pid
        worker_end(instance, run, worker_ends, "Execution of run failed.")
        assert status_of(instance, run.run_id) == S.FAILURE
        assert ends(instance, run.run_id) == ["PIPELINE_FAILURE"]
        last = instance.all_logs(run.run_id)[-1]
        assert last.dagster_event.event_type == DagsterEventType.ENGINE_EVENT
        assert last.message == (
            "The run had already ended (FAILURE) when its worker (pid 4242) ended it: Execution"
            " of run failed."
        )


def test_a_worker_failing_a_run_the_monitor_is_failing_leaves_the_end_to_the_monitor(
    make_instance,
):
    """A worker's RUN_FAILURE while the monitor is failing its run (tagged
    ``run_monitor/failing``, CANCELING) is an engine event, as its RUN_CANCELED is: the
    monitor writes the one end."""
    with make_instance() as instance:
        run = make_run(instance, S.STARTED)
        instance.add_run_tags(run.run_id, {c.FAILING_TAG: c.REASON_HUNG})
        instance.report_run_canceling(run, message="Run hung: ...")
        worker_end(instance, run, DagsterEventType.RUN_FAILURE, "Execution of run failed.")
        assert status_of(instance, run.run_id) == S.CANCELING
        assert ends(instance, run.run_id) == []
        assert instance.all_logs(run.run_id)[-1].message == (
            "Execution stopped: the run monitor is failing this run (hung) and writes its end."
            " The worker's own end: Execution of run failed."
        )


def test_a_second_end_from_outside_the_worker_is_an_engine_event(make_instance):
    """The monitor failed a run whose worker was SIGKILLed; the code server, which saw its run
    subprocess die, then marked the run failed too (seen in the soak's default-launcher hour:
    two PIPELINE_FAILURE): an end written after the run's end is an engine event, whoever
    writes it."""
    with make_instance() as instance:
        run = make_run(instance, S.STARTED)
        instance.report_run_failed(run, "Detected run worker status FAILED: ...")
        instance.report_run_failed(run, "This run has been marked as failed from outside ...")
        assert ends(instance, run.run_id) == ["PIPELINE_FAILURE"]
        assert instance.all_logs(run.run_id)[-1].message == (
            "The run had already ended (FAILURE) when another process ended it: This run has"
            " been marked as failed from outside ..."
        )


def test_a_step_retry_whose_parent_the_monitor_failed_ends_as_its_worker_says(make_instance):
    """A step retry inherits its parent's tags, ``run_monitor/failing`` among them (the
    monitor failed the parent): its worker's RUN_SUCCESS is its end (seen on the Kubernetes
    soak: three resumed workers exited 0 and the retry was failed, its ends made engine
    events). Only a run the monitor is failing (CANCELING) leaves its end to the monitor."""
    with make_instance() as instance:
        run = make_run(instance, S.STARTED, tags={c.FAILING_TAG: c.REASON_STEP_LOST})
        worker_end(instance, run, DagsterEventType.RUN_SUCCESS, "Finished execution of run.")
        assert status_of(instance, run.run_id) == S.SUCCESS
        assert ends(instance, run.run_id) == ["PIPELINE_SUCCESS"]
