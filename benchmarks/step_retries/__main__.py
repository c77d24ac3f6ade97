"""Step retries at scale: one daemon pass that finds N runs whose ``train`` step pod
was OOM-killed (``k8s_job_executor``), reads the step pods' causes from the (faked) Kubernetes
API and creates a retry from failure with more memory for each, through a real workspace.

    .venv/bin/python -m benchmarks.step_retries --runs 1000 [--storage postgres|sqlite]

Dagster's real ``K8sRunLauncher`` with only its API objects faked
(``dagster_run_monitor_tests.support.fake_k8s``); that fake's ``list_namespaced_pod`` answers
``job-name=...`` selectors only, so this benchmark answers the step-cause read's set-based
selector (``dagster/run-id in (...)``) itself, from the step pods it registers. Prints a
markdown section in the style of benchmarks/RESULTS.md; progress goes to stderr.
"""

import argparse
import cProfile
import tempfile
import time
from pathlib import Path

from dagster import DagsterInstance
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import WorkspaceFileTarget

from benchmarks.monitor_pass.measure import (
    SqlCounter,
    say,
)
from benchmarks.step_retries.passes import Pass, one_pass, retry_passes, verify
from benchmarks.step_retries.population import (
    DATABASE,
    JOBS_SOURCE,
    Runs,
    database,
    fake_api,
    make_failures,
    quiet_loggers,
    write_home,
)
from benchmarks.step_retries.report import report
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon
from dagster_run_monitor.daemon.step_retries import CLOCK_MARGIN_SECONDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--storage", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--latency", type=float, default=0.02, help="per API call, seconds")
    parser.add_argument("--threads", type=int, default=4, help="set-up threads (PostgreSQL)")
    parser.add_argument("--steady-reps", type=int, default=3)
    parser.add_argument(
        "--profile-runs", type=int, default=100, help="failed runs of the profiled pass (0: none)"
    )
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    started = time.monotonic()
    fake_api(args.latency)
    counter = SqlCounter()
    threads = args.threads if args.storage == "postgres" else 1
    with (
        tempfile.TemporaryDirectory(prefix="bench-step-retries-") as tmp,
        database(args.storage, args.database) as url,
        open(Path(tmp) / "daemon.log", "a") as log_file,
    ):
        jobs_file = Path(tmp) / "train_jobs.py"
        jobs_file.write_text(JOBS_SOURCE)
        workspace = write_home(Path(tmp) / "home", jobs_file, url, step_retries=True)
        workspace_off = write_home(Path(tmp) / "home_off", jobs_file, url, step_retries=False)
        instance = DagsterInstance.from_config(str(Path(tmp) / "home"))
        counter.name_engines(instance)
        target = WorkspaceFileTarget(paths=[str(workspace)])
        with create_test_daemon_workspace_context(target, instance) as context:
            daemon = RunMonitorDaemon.from_instance(instance)
            quiet_loggers(log_file)
            one_pass("clock start", daemon, context, counter)
            counter.name_engines(instance)  # the engines the daemon pooled
            say(f"set-up: {args.runs} failed runs")
            began = time.monotonic()
            runs = Runs(instance, context, jobs_file)
            run_ids = make_failures(runs, args.runs, threads)
            setup_seconds = time.monotonic() - began
            say(f"set-up took {setup_seconds:.0f}s")
            retry = retry_passes("retry", daemon, context, counter, run_ids)
            time.sleep(CLOCK_MARGIN_SECONDS + 1)
            after = one_pass("after retries (reads the new runs)", daemon, context, counter)
            time.sleep(CLOCK_MARGIN_SECONDS + 1)
            steady_on = [
                one_pass(f"steady on {i + 1}", daemon, context, counter)
                for i in range(args.steady_reps)
            ]
            instance_off = DagsterInstance.from_config(str(Path(tmp) / "home_off"))
            counter.name_engines(instance_off)
            target_off = WorkspaceFileTarget(paths=[str(workspace_off)])
            with create_test_daemon_workspace_context(target_off, instance_off) as context_off:
                daemon_off = RunMonitorDaemon.from_instance(instance_off)
                quiet_loggers(log_file)
                one_pass("off warm-up", daemon_off, context_off, counter)
                counter.name_engines(instance_off)
                steady_off = [
                    one_pass(f"steady off {i + 1}", daemon_off, context_off, counter)
                    for i in range(args.steady_reps)
                ]
            instance_off.dispose()
            problems = verify(instance, run_ids)
            profiled: list[Pass] = []
            profile = None
            if args.profile_runs:
                say(f"set-up: {args.profile_runs} failed runs for the profiled pass")
                more = make_failures(runs, args.profile_runs, threads)
                profile = cProfile.Profile()
                profiled = retry_passes("profiled", daemon, context, counter, more, profile)
                problems += [f"profiled batch: {p}" for p in verify(instance, more)]
        instance.dispose()
    text = report(
        args,
        setup_seconds,
        retry,
        after,
        steady_on,
        steady_off,
        profiled,
        profile,
        problems,
        (time.monotonic() - started) / 60,
    )
    print(text, flush=True)


if __name__ == "__main__":
    main()


if __name__ == "__main__":
    main()
