"""End to end: the stock `dagster-daemon run` and `dagster dev` run our monitor."""

import json
import subprocess
import urllib.request

import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus as S
from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG
from dagster._time import get_current_timestamp

from dagster_run_monitor.core import constants as c
from dagster_run_monitor_tests.support.home import SCRIPTED_LAUNCHER, load_instance, write_home
from dagster_run_monitor_tests.support.launchers import (
    AFTER_RESUME_TAG,
    HEALTH_TAG,
    RESUME_RAISE_TAG,
)
from dagster_run_monitor_tests.support.runs import make_run, messages, status_of, tags_of
from dagster_run_monitor_tests.support.subprocesses import (
    BIN,
    daemon,
    free_port,
    process_env,
    running,
    wait_until,
)

pytestmark = pytest.mark.slow

FAST = {
    "poll_interval_seconds": 1,
    "worker_unknown_grace_seconds": 0,
    "max_resume_run_attempts": 1,
    "start_timeout_seconds": 60,
    "cancel_timeout_seconds": 60,
}


def test_dagster_daemon_run_monitors_runs_and_reports_health(tmp_path, storage):
    home = write_home(tmp_path / "home", FAST, storage, SCRIPTED_LAUNCHER)
    instance = load_instance(home)
    if storage == "postgres":
        instance.wipe()
        instance.wipe_daemon_heartbeats()
    now = get_current_timestamp()
    stuck_start = make_run(instance, S.STARTING, created=now - 3600, launched=now - 3600)
    crashed = make_run(instance, S.STARTED, created=now - 60, tags={HEALTH_TAG: "FAILED"})
    dies_again = make_run(
        instance,
        S.STARTED,
        created=now - 60,
        tags={HEALTH_TAG: "FAILED", AFTER_RESUME_TAG: "FAILED"},
    )
    stuck_cancel = make_run(instance, S.CANCELING, created=now - 3600, canceling=now - 3600)
    too_long = make_run(
        instance, S.STARTED, created=now - 3600, started=now - 3600, tags={c.MAX_RUNTIME_TAG: "60"}
    )
    healthy = make_run(instance, S.STARTED, created=now - 60)
    broken = make_run(
        instance, S.STARTED, created=now - 60, tags={HEALTH_TAG: "FAILED", RESUME_RAISE_TAG: "1"}
    )

    with daemon(home) as proc:
        expected = {
            stuck_start.run_id: S.FAILURE,
            dies_again.run_id: S.FAILURE,
            stuck_cancel.run_id: S.CANCELED,
            too_long.run_id: S.FAILURE,
            broken.run_id: S.FAILURE,
        }
        wait_until(
            lambda: (
                all(status_of(instance, i) == s for i, s in expected.items())
                and c.RESUME_RUN_LOG_MESSAGE in messages(instance, crashed.run_id)
            ),
            timeout=60,
            what="the daemon to act on every stuck run",
        )
        assert tags_of(instance, stuck_start.run_id)[RUN_FAILURE_REASON_TAG] == "START_TIMEOUT"
        assert status_of(instance, crashed.run_id) == S.STARTED
        assert messages(instance, crashed.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1
        assert messages(instance, dies_again.run_id).count(c.RESUME_RUN_LOG_MESSAGE) == 1
        assert messages(instance, too_long.run_id)[-1] == "Exceeded maximum runtime of 60 seconds."
        assert status_of(instance, healthy.run_id) == S.STARTED

        # Heartbeats: ours, never the built-in one, carrying the error of the broken run
        # (the daemon writes a heartbeat every 30 seconds).
        heartbeat = wait_until(
            lambda: (
                (hb := instance.get_daemon_heartbeats().get(c.DAEMON_TYPE)) and hb.errors and hb
            ),
            timeout=45,
            what="a RUN_MONITOR heartbeat with the error",
        )
        assert "MONITORING" not in instance.get_daemon_heartbeats()
        assert any(
            broken.run_id in e.message or "could not start a new worker" in e.to_string()
            for e in heartbeat.errors
        )
        liveness = subprocess.run(
            [str(BIN / "dagster-daemon"), "liveness-check"],
            env=process_env(home),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert liveness.returncode == 0, liveness.stdout + liveness.stderr
        assert "Daemon live" in liveness.stdout
        assert proc.poll() is None  # the daemon kept running through the error
    instance.dispose()


DAEMON_HEALTH = """
query { instance { daemonHealth { allDaemonStatuses {
  daemonType required healthy lastHeartbeatTime lastHeartbeatErrors { message }
} } } }
"""


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


DEFS = """import dagster


@dagster.op
def step(): ...


@dagster.job
def a_job():
    step()


defs = dagster.Definitions(jobs=[a_job])
"""


@pytest.mark.parametrize("cli", ["dg", "dagster"])
def test_dg_dev_and_dagster_dev_run_our_daemon_and_the_ui_reports_it_healthy(tmp_path, cli):
    """``dg dev`` (Dagster's current CLI; ``dagster dev`` is deprecated in its favour) and
    ``dagster dev`` start the stock daemons with ours, offline, on 127.0.0.1."""
    settings = {k: v for k, v in FAST.items() if k != "max_resume_run_attempts"}
    home = write_home(tmp_path / "home", settings)  # DefaultRunLauncher: cannot resume
    instance = load_instance(home)
    now = get_current_timestamp()
    stuck = make_run(instance, S.STARTING, created=now - 3600, launched=now - 3600)
    port = free_port()
    defs = tmp_path / "defs.py"
    defs.write_text(DEFS)
    target = ["-f", str(defs)] if cli == "dg" else ["--empty-workspace"]
    args = [str(BIN / cli), "dev", *target, "--host", "127.0.0.1", "--port", str(port)]
    with running(args, home, f"{cli}-dev.log"):

        def monitor_status():
            try:
                statuses = graphql(port, DAEMON_HEALTH)["data"]["instance"]["daemonHealth"]
            except OSError:
                return None
            by_type = {s["daemonType"]: s for s in statuses["allDaemonStatuses"]}
            ours = by_type.get(c.DAEMON_TYPE)
            return ours if ours and ours["healthy"] else None

        ours = wait_until(monitor_status, timeout=90, what="the UI to report RUN_MONITOR healthy")
        assert ours["required"] is True and ours["lastHeartbeatErrors"] == []
        wait_until(
            lambda: status_of(instance, stuck.run_id) == S.FAILURE,
            timeout=30,
            what="the stuck run to fail",
        )
    instance.dispose()
