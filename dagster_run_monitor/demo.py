"""The main job: a run worker killed with SIGKILL mid-run, detected, resumed, finished.

``python -m dagster_run_monitor.demo`` (``./dev demo``) makes a temporary DAGSTER_HOME on
SQLite, starts the stock ``dagster-daemon run`` with our monitor and ProcessRunLauncher,
launches a four-step job, kills its worker's process group while the third step runs, and
prints what happens. Exits 0 only if the run ends SUCCESS, resumed once, with every step
executed exactly once.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml
from dagster import DagsterInstance
from dagster._core.events import DagsterEventType
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.dagster_run import FINISHED_STATUSES, DagsterRunStatus

from dagster_run_monitor.config.dagster_yaml import instance_config, write_dagster_yaml
from dagster_run_monitor.core import constants as c

BIN = Path(sys.executable).parent
MODULE = "dagster_run_monitor.demo_job"
STEPS = ("extract", "transform", "load", "report")
KILL_WHILE = "load"  # the third step: two finished, one in flight, one to come
DEADLINE_SECONDS = 180
SHOWN = {
    DagsterEventType.RUN_ENQUEUED,
    DagsterEventType.RUN_STARTING,
    DagsterEventType.RUN_START,
    DagsterEventType.RUN_SUCCESS,
    DagsterEventType.RUN_FAILURE,
    DagsterEventType.RUN_CANCELED,
    DagsterEventType.STEP_START,
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_FAILURE,
    DagsterEventType.ENGINE_EVENT,
}
T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {text}", flush=True)


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="dagster-run-monitor-demo-"))
    config = instance_config(  # the monitor's documented defaults: a full pass every 120 s
        launcher={"module": "dagster_run_monitor", "class": "ProcessRunLauncher"},
        run_coordinator={
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"dequeue_interval_seconds": 1},
        },
    )
    write_dagster_yaml(home, config)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    say(f"DAGSTER_HOME={home} (SQLite). dagster.yaml:\n{yaml.safe_dump(config)}")

    daemon_log = open(home / "daemon.log", "w")
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-m", MODULE],
        env=env,
        cwd=home,
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        ok = story(instance, env, home)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(30)
    print()
    print("See it in the Dagster UI (the run page shows every step above):")
    cli = "dg" if (BIN / "dg").exists() else "dagster"  # dagster dev: deprecated, for dg dev
    print(f"  DAGSTER_HOME={home} {BIN / cli} dev -m {MODULE}")
    print("  then open http://127.0.0.1:3000/runs and click the run.")
    print(f"Daemon log: {home / 'daemon.log'}")
    return 0 if ok else 1


def story(instance: DagsterInstance, env: dict, home: Path) -> bool:
    wait_for(lambda: c.DAEMON_TYPE in instance.get_daemon_heartbeats(), 60, "the daemon")
    say(f"dagster-daemon run is up; its monitor daemon is {c.DAEMON_TYPE}.")
    launch = subprocess.run(
        [str(BIN / "dagster"), "job", "launch", "-m", MODULE, "-j", "crash_demo"],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
    )
    if launch.returncode != 0:  # say why, instead of a bare CalledProcessError
        say(f"dagster job launch failed (exit {launch.returncode}):\n{launch.stderr[-3000:]}")
        return False
    (run,) = instance.get_runs(limit=1)
    say(f"Submitted run {run.run_id} of job crash_demo: 4 steps, each its own process.")

    cursor, killed_at, resumed_at = None, None, None
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        connection = instance.get_records_for_run(run.run_id, cursor=cursor)
        cursor = connection.cursor
        for record in connection.records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None or event.event_type not in SHOWN:
                continue
            step = f" {event.step_key}" if event.step_key else ""
            say(f"  {event.event_type_value}{step}: {entry.message}".rstrip(": "))
            if entry.message == c.RESUME_RUN_LOG_MESSAGE and resumed_at is None:
                resumed_at = entry.timestamp
            if event.event_type == DagsterEventType.STEP_START and event.step_key == KILL_WHILE:
                if killed_at is None:
                    pid = int(instance.get_run_by_id(run.run_id).tags[c.WORKER_PID_TAG])
                    os.killpg(pid, signal.SIGKILL)
                    killed_at = time.time()
                    say(f">>> kill -9 of run worker process group {pid} while '{KILL_WHILE}' runs")
        status = instance.get_run_by_id(run.run_id).status
        if status in FINISHED_STATUSES:
            break
        time.sleep(0.2)

    status = instance.get_run_by_id(run.run_id).status
    starts = Counter(
        e.step_key for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START)
    )
    print()
    say(f"Run {run.run_id} ended {status.value}.")
    if killed_at and resumed_at:
        latency = resumed_at - killed_at
        say(f"Crash detected and a new worker launched {latency:.1f}s after SIGKILL.")
    say("Step executions: " + ", ".join(f"{s} {starts.get(s, 0)}" for s in STEPS))
    checks = {
        "the worker was killed": killed_at is not None,
        "the monitor resumed the run": resumed_at is not None,
        "the run ended SUCCESS": status == DagsterRunStatus.SUCCESS,
        "every step ran exactly once": all(starts.get(s) == 1 for s in STEPS),
    }
    for what, passed in checks.items():
        say(f"{'ok ' if passed else 'FAILED'} {what}")
    return all(checks.values())


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"Timed out after {timeout}s waiting for {what}.")
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
