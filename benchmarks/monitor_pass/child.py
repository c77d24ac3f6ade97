"""A pass in a fresh process (cold start, peak RSS)."""

import json
import os
import subprocess
import sys

from dagster import DagsterInstance
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from benchmarks.monitor_pass.constants import REPO_ROOT
from benchmarks.monitor_pass.measure import MB, SqlCounter, peak_rss_bytes, rss_bytes
from benchmarks.monitor_pass.passes import one_pass
from benchmarks.monitor_pass.storage import daemon_context, pool_connections


def run_child(kind: str, home: str, pool_size: int = 0) -> dict:
    env = {**os.environ, "DAGSTER_HOME": home}
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.monitor_pass", "--child", kind, "--home", home]
        + (["--pool-size", str(pool_size)] if pool_size else []),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(kind: str, home: str, pool_size: int = 0) -> None:
    counter = SqlCounter()
    instance = DagsterInstance.from_config(home)
    if pool_size and not isinstance(instance.event_log_storage, SqliteEventLogStorage):
        pool_connections(instance, pool_size)
    counter.name_engines(instance)
    with daemon_context(instance, os.path.join(home, "daemon.log")) as context:
        instance.run_launcher  # noqa: B018 -- loaded before the baseline, as a daemon would
        if type(instance.run_launcher).__module__ == "benchmarks.k8s_launcher":
            from benchmarks.k8s_launcher import register_workers

            register_workers(instance)  # the fake cluster of this process lists the workers
        rss_ready = rss_bytes()
        result = one_pass(kind, "steady", instance, context, counter)
    peak = peak_rss_bytes()
    print(
        json.dumps(
            {
                "rss_ready_mb": round(rss_ready / MB, 1),
                "peak_rss_mb": round(peak / MB, 1),
                "first_pass_s": round(result.seconds, 2),
                "first_pass_sql": result.sql,
                "errors": len(result.errors),
            }
        )
    )
    instance.dispose()
