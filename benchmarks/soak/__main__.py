"""The chaos soak: two stock ``dagster-daemon run`` processes with our monitor on a private
PostgreSQL, a steady stream of runs and random faults, every invariant checked on the whole
history at the end (exit status 1 if one broke).

    sudo .venv/bin/python -m benchmarks.soak --minutes 60 --seed 7 --launcher process|default|k8s

Needs root (a private PostgreSQL cluster run as ``postgres``, memory cgroups for the OOM
kills) and Debian's faketime (the skewed clock); ``k8s`` needs the one-node cluster of
scripts/k8s-cluster (run workers and steps in pods, in a namespace of the soak's own). Prints
a markdown section in the style of benchmarks/RESULTS.md and writes ``report.json`` and every
log into ``--out``.
"""

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from benchmarks.soak import system
from benchmarks.soak.driver import Cgroups, Driver
from benchmarks.soak.history import dump, read_history
from benchmarks.soak.invariants import check
from benchmarks.soak.report import markdown, summary
from dagster_run_monitor_tests.support import cgroups
from dagster_run_monitor_tests.support.home import load_instance


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--launcher", choices=["process", "default", "k8s"], default="process")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="runs at once (20; 6 on the cluster)"
    )
    parser.add_argument("--faults-per-minute", type=float, default=5)
    parser.add_argument("--drain-seconds", type=float, default=600)
    parser.add_argument("--out", type=Path, default=None, help="default: a new temp dir")
    args = parser.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = 6 if args.launcher == "k8s" else 20
    return args


def soak(args: argparse.Namespace) -> dict:
    out = args.out or Path(tempfile.mkdtemp(prefix="soak-"))
    soak_dir = out.resolve()
    for sub in ("live", "markers", "once"):
        (soak_dir / sub).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    rng = random.Random(args.seed)
    database = system.start_database(soak_dir)
    memory_cgroups = Cgroups(f"soak-{os.getpid()}") if cgroups.unavailable(1) is None else None
    daemons: list[system.Daemon] = []
    skewed = None
    cluster = None
    try:
        home_a, home_b = system.write_homes(soak_dir, args.launcher, database.url)
        if args.launcher == "k8s":
            cluster = system.Namespace(home_a)
        instance = load_instance(home_a)
        target = WorkspaceFileTarget(paths=[str(home_a / "workspace.yaml")])
        with WorkspaceProcessContext(instance, target) as context:
            daemons = [system.Daemon("a", home_a, soak_dir), system.Daemon("b", home_b, soak_dir)]
            for daemon in daemons:
                daemon.start()
            if system.faketime() and cluster is None:  # a pod's clock cannot be skewed
                skewed = system.Skewed(home_b, soak_dir)
            driver = Driver(
                soak_dir,
                args.launcher,
                rng,
                instance,
                context,
                daemons,
                database,
                skewed,
                memory_cgroups,
                args.concurrency,
                args.faults_per_minute,
                cluster,
            )
            started = time.time()
            print(f"soak: {args.minutes} min in {soak_dir}", file=sys.stderr)
            ended = driver.run(args.minutes, args.drain_seconds)
            system.stop_everything(soak_dir, daemons, skewed)
            if not database.running():
                database.start()
            history = read_history(instance, soak_dir, driver.memory, started, ended)
        dump(history, soak_dir / "history.json")
        findings = check(history)
        settings = {**vars(args), "out": str(soak_dir), "skipped": driver.skipped}
        settings["cpu"] = driver.cpu
        result = summary(history, findings, settings)
        (soak_dir / "report.json").write_text(json.dumps(result, indent=2, default=str))
        return result
    finally:
        system.stop_everything(soak_dir, daemons, skewed)
        if cluster is not None:
            cluster.delete()
        database.destroy()
        if memory_cgroups is not None:
            memory_cgroups.remove()


def main() -> None:
    result = soak(parse())
    print(markdown(result))
    sys.exit(1 if result["failed"] else 0)


if __name__ == "__main__":
    main()
