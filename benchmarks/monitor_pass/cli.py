"""The command line."""

import argparse
import time
from collections.abc import Sequence

from benchmarks.monitor_pass.child import child_main
from benchmarks.monitor_pass.constants import DEFAULT_DATABASE, DOCKER_REAL_MAX_N
from benchmarks.monitor_pass.measure import SqlCounter
from benchmarks.monitor_pass.report import code_version, report
from benchmarks.monitor_pass.scenarios import bench_one
from benchmarks.monitor_pass.storage import check_database_name


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.monitor_pass",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, nargs="+", default=[100, 1000], help="values of N")
    p.add_argument("--storage", nargs="+", choices=("postgres", "sqlite"), default=["postgres"])
    p.add_argument("--reps", type=int, default=3, help="passes of ours per N (default 3)")
    p.add_argument("--builtin-reps", type=int, default=3, help="built-in passes per N")
    p.add_argument(
        "--builtin-reps-large",
        type=int,
        default=1,
        help="built-in passes at N >= --large-n (default 1: ~N x 0.8 x latency each)",
    )
    p.add_argument("--large-n", type=int, default=5000)
    p.add_argument("--latency", type=float, default=0.02, help="API call seconds (0.02)")
    p.add_argument(
        "--launcher",
        choices=("harness", "k8s", "docker", "ecs"),
        default="harness",
        help="harness: the test launcher; k8s: Dagster's K8sRunLauncher, its API faked;"
        " docker: Dagster's DockerRunLauncher, one real container per STARTED/STARTING run on"
        " the local engine (DOCKER_HOST, default scripts/docker-engine's) up to"
        " --docker-real-max-n, its docker client faked beyond; ecs: Dagster's EcsRunLauncher,"
        " its ECS and CloudWatch Logs clients faked",
    )
    p.add_argument(
        "--docker-real-max-n",
        type=int,
        default=DOCKER_REAL_MAX_N,
        help=f"--launcher docker: real containers up to this N (default {DOCKER_REAL_MAX_N:,}:"
        " 0.9 N containers, ~4 MB and ~12 tasks each, created at ~5/s on two cores)",
    )
    p.add_argument("--events-per-run", type=int, default=200)
    p.add_argument("--jobs", type=int, default=10, help="distinct jobs (execution plans)")
    p.add_argument("--health-check-threads", type=int, default=0, help="0: our default")
    p.add_argument(
        "--monitor",
        nargs="*",
        metavar="KEY=VALUE",
        help="run_monitoring settings of ours, e.g. action_threads=4 (values read as YAML)",
    )
    p.add_argument("--crashed", type=int, default=1000, help="workers crashing at once")
    p.add_argument(
        "--crash-at", type=int, nargs="*", default=None, help="N values (default: the largest)"
    )
    p.add_argument("--crash-reps", type=int, default=3)
    p.add_argument("--no-crash-builtin", action="store_true")
    p.add_argument(
        "--child-builtin-max-n",
        type=int,
        default=1000,
        help="measure the built-in in a fresh process only up to this N",
    )
    p.add_argument("--sqlite-max-n", type=int, default=2000)
    p.add_argument("--database", default=DEFAULT_DATABASE, help="Postgres database to create")
    p.add_argument("--keep-database", action="store_true")
    p.add_argument(
        "--profile-dir",
        default=None,
        help="write pyinstrument profiles of ours at the largest N (first storage) here",
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=0,
        help="experiment: pooled Postgres connections for both monitors (default 0: Dagster's"
        " NullPool, a new connection per statement group, as in dagster-daemon)",
    )
    p.add_argument(
        "--beats",
        action="store_true",
        help="a heartbeat (and its stacks) in the kvs table for every STARTED/STARTING run",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--show-statements", action="store_true", help="list each pass's SQL statements")
    p.add_argument("--output", default=None, help="also write the report to this file")
    p.add_argument("--child", choices=("ours", "builtin"), help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.home, args.pool_size)
        return
    check_database_name(args.database)
    if "sqlite" in args.storage and max(args.runs) > args.sqlite_max_n:
        raise SystemExit(
            f"SQLite is for small N (<= {args.sqlite_max_n}; --sqlite-max-n to change):"
            " one event-log file per run."
        )
    counter = SqlCounter()
    rows = []
    version = code_version()
    wall = time.perf_counter()
    for storage in args.storage:
        for n in args.runs:
            rows.append(bench_one(storage, n, args, counter))
    text = report(rows, args, time.perf_counter() - wall, version)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
