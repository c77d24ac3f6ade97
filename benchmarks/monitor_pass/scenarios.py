"""The scenarios for one N: steady passes alternating, the crash storm, profiles."""

import argparse
import contextlib
import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from dagster import DagsterInstance

from benchmarks.monitor_pass.child import run_child
from benchmarks.monitor_pass.docker_workers import docker_workers
from benchmarks.monitor_pass.measure import SqlCounter, say
from benchmarks.monitor_pass.passes import (
    DAEMONS,
    PassResult,
    count_resumed,
    fingerprint,
    mark_crashed,
    one_pass,
)
from benchmarks.monitor_pass.population import (
    WORKER_STATUSES,
    Population,
    build_population,
    status_counts,
    verify_population,
)
from benchmarks.monitor_pass.storage import daemon_context, pg_admin, pool_connections, write_home
from dagster_run_monitor.config.parse import read_settings
from dagster_run_monitor.daemon.monitor import RunMonitorDaemon


@dataclass
class Row:
    storage: str
    n: int
    steady: list[PassResult] = field(default_factory=list)
    crash: list[PassResult] = field(default_factory=list)
    crashed: int = 0
    child: dict[str, dict] = field(default_factory=dict)
    setup_seconds: float = 0.0
    events: int = 0
    health_check_threads: int = 0  # as our daemon read it from the instance


def builtin_reps_for(n: int, args: argparse.Namespace) -> int:
    return args.builtin_reps_large if n >= args.large_n else args.builtin_reps


def bench_one(storage: str, n: int, args: argparse.Namespace, counter: SqlCounter) -> Row:
    rng = random.Random(args.seed + n)
    row = Row(storage, n)
    home = tempfile.mkdtemp(prefix=f"run_monitor_bench_{storage}_{n}_")
    if storage == "postgres":
        pg_admin(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        pg_admin(f'CREATE DATABASE "{args.database}"')
    instance = builtin = None
    workers = contextlib.ExitStack()  # --launcher docker: the containers, removed at the end
    try:
        write_home(home, storage, args, n)
        instance = DagsterInstance.from_config(home)
        if args.pool_size and storage == "postgres":
            pool_connections(instance, args.pool_size)
        counter.name_engines(instance)
        row.health_check_threads = read_settings(instance).health_check_threads
        say(f"{storage} N={n}: building the runs (DAGSTER_HOME={home})")
        started = time.perf_counter()
        worker_count = sum(status_counts(n)[s] for s in WORKER_STATUSES)
        worker_tags = workers.enter_context(docker_workers(args, n, worker_count))
        if args.launcher == "k8s":
            from benchmarks.k8s_launcher import worker_tags
        elif args.launcher == "ecs":
            from benchmarks.ecs_launcher import worker_tags
        population = build_population(instance, n, args, rng, worker_tags)
        verify_population(instance, population)
        if args.launcher == "k8s":
            from benchmarks.k8s_launcher import register_workers

            register_workers(instance)
        row.setup_seconds = time.perf_counter() - started
        row.events = population.events
        say(f"{storage} N={n}: data ready and verified in {row.setup_seconds:.0f}s")
        # The built-in monitor gets an instance of its own on the same storage, with Dagster's
        # defaults (our daemon pools its instance's Postgres connections).
        builtin = DagsterInstance.from_config(home)
        if args.pool_size and storage == "postgres":
            pool_connections(builtin, args.pool_size)
        log = os.path.join(home, "daemon.log")
        with daemon_context(instance, log) as context, daemon_context(builtin, log) as b_context:
            envs = {"ours": (instance, context), "builtin": (builtin, b_context)}
            # Steady state: alternate ours and the built-in on the same data.
            reps, builtin_reps = args.reps, builtin_reps_for(n, args)
            before = fingerprint(instance)
            for rep in range(max(reps, builtin_reps)):
                kinds = [k for k, r in (("ours", reps), ("builtin", builtin_reps)) if rep < r]
                if rep % 2:
                    kinds.reverse()
                for kind in kinds:
                    result = one_pass(kind, "steady", *envs[kind], counter)
                    after = fingerprint(instance)
                    if after != before:
                        result.side_effects = f"{before} -> {after}"
                        before = after
                    row.steady.append(result)
                    say(
                        f"{storage} N={n} steady {kind}: {result.seconds:.2f}s,"
                        f" {result.sql} SQL, {result.health_checks} health checks,"
                        f" +{result.growth_mb:.0f} MB RSS, {len(result.errors)} errors"
                        + (" SIDE EFFECTS" if result.side_effects else "")
                    )
            # A fresh daemon process: peak RSS of start-up + one pass.
            for kind in ("ours", "builtin"):
                if kind == "builtin" and n > args.child_builtin_max_n:
                    continue
                row.child[kind] = run_child(kind, home, args.pool_size)
                say(f"{storage} N={n} fresh process {kind}: {row.child[kind]}")
            if n in crash_sizes(storage, args):
                crash_storm(envs, population, row, args, counter)
            if args.profile_dir and n == max(args.runs) and storage == args.storage[0]:
                profile_ours(instance, context, population, row, args)
    finally:
        workers.close()
        if instance is not None:
            instance.dispose()
        if builtin is not None:
            builtin.dispose()
        if storage == "postgres" and not args.keep_database:
            pg_admin(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)
    return row


def crash_sizes(storage: str, args: argparse.Namespace) -> set[int]:
    if args.crash_at:
        return set(args.crash_at)
    return {max(args.runs)}


def next_crash_set(population: Population, k: int) -> list[str]:
    pool = population.crash_candidates
    start = getattr(population, "_crash_cursor", 0)
    chosen = [pool[(start + i) % len(pool)] for i in range(min(k, len(pool)))]
    population._crash_cursor = start + len(chosen)  # type: ignore[attr-defined]
    return chosen


def crash_storm(envs, population, row: Row, args, counter: SqlCounter) -> None:
    instance = envs["ours"][0]
    from dagster_run_monitor.storage.eventlog import count_resume_attempts

    builtin_reps = 0 if args.no_crash_builtin else builtin_reps_for(row.n, args)
    # a fresh set of K healthy runs for every repetition (none resumed before)
    k = min(args.crashed, len(population.crash_candidates) // (args.crash_reps + builtin_reps + 1))
    row.crashed = k
    for rep in range(max(args.crash_reps, builtin_reps)):
        kinds = [k_ for k_, r in (("ours", args.crash_reps), ("builtin", builtin_reps)) if rep < r]
        if rep % 2:
            kinds.reverse()
        for kind in kinds:
            crashed = next_crash_set(population, k)
            mark_crashed(instance, crashed)
            before = count_resume_attempts(instance.event_log_storage, crashed)
            result = one_pass(kind, "crash", *envs[kind], counter)
            result.resumed, _ = count_resumed(instance, crashed, before)
            row.crash.append(result)
            say(
                f"{row.storage} N={row.n} crash of {k} workers, {kind}: {result.seconds:.2f}s,"
                f" {result.resumed}/{k} resumed, {result.sql} SQL,"
                f" +{result.growth_mb:.0f} MB RSS, {len(result.errors)} errors"
            )


def profile_ours(instance, context, population, row: Row, args) -> None:
    """Profiles of one more steady pass and one more crash-storm pass of ours (not timed in
    the tables): pyinstrument samples the pass's main thread; work the daemon hands to
    threads of its own (health checks, actions) shows there as waiting, so each call of
    run's actions (``actions._apply``) are also profiled with cProfile in whatever thread runs
    them, and the calls are summed."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        say("pyinstrument is not installed: no profile (pip install pyinstrument)")
        return
    import cProfile
    import pstats

    from dagster_run_monitor.daemon import actions as actions_module

    os.makedirs(args.profile_dir, exist_ok=True)
    for scenario in ("steady", "crash"):
        if scenario == "crash":
            crashed = next_crash_set(population, row.crashed or args.crashed)
            mark_crashed(instance, crashed)
        action_profiles: list[cProfile.Profile] = []
        lock = threading.Lock()
        apply_actions = actions_module._apply

        def profiled_apply_actions(
            *a, apply_actions=apply_actions, lock=lock, action_profiles=action_profiles, **k
        ):
            profile = cProfile.Profile()
            profile.enable()
            try:
                return apply_actions(*a, **k)
            finally:
                profile.disable()
                with lock:
                    action_profiles.append(profile)

        daemon = DAEMONS.setdefault(id(instance), RunMonitorDaemon.from_instance(instance))
        profiler = Profiler(interval=0.001 if scenario == "steady" else 0.005)
        actions_module._apply = profiled_apply_actions
        try:
            profiler.start()
            started = time.perf_counter()
            list(daemon.monitor_runs(context))
            seconds = time.perf_counter() - started
            session = profiler.stop()
        finally:
            actions_module._apply = apply_actions
        base = os.path.join(args.profile_dir, f"ours_{row.storage}_{row.n}_{scenario}")
        with open(base + ".txt", "w") as f:
            f.write(f"pass under the profilers: {seconds:.2f}s\n\n")
            f.write(profiler.output_text(unicode=False, color=False, show_all=False))
        session.save(base + ".pyisession")  # pyinstrument --load base.pyisession -r html
        with open(base + "_top.txt", "w") as f:
            f.write(top_functions(session))
        written = f"{base}.txt, {base}_top.txt, {base}.pyisession"
        if action_profiles:
            with open(base + "_actions.txt", "w") as f:
                stats = pstats.Stats(*action_profiles, stream=f)
                f.write(
                    f"{len(action_profiles)} runs' actions, cProfile summed over the"
                    " action threads (times are per-thread wall times, so they add up to more"
                    " than the pass)\n"
                )
                stats.sort_stats("cumulative").print_stats(40)
                stats.sort_stats("tottime").print_stats(25)
            written += f", {base}_actions.txt"
        say(f"profile of ours ({scenario}): {written}")


def top_functions(session, limit: int = 25) -> str:
    """Self and inclusive time per function of a pyinstrument session (main thread)."""
    root = session.root_frame()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()

    def walk(frame, ancestors: frozenset) -> None:
        name = f"{frame.function} ({frame.file_path_short}:{frame.line_no})"
        self_time[name] += frame.total_self_time
        if name not in ancestors:
            inclusive[name] += frame.time
        for child in frame.children:
            walk(child, ancestors | {name})

    if root is not None:
        walk(root, frozenset())
    total = root.time if root is not None else 0.0
    lines = [f"total {total:.3f}s", "", "self time:"]
    lines += [f"  {t:8.3f}s  {name}" for name, t in self_time.most_common(limit)]
    lines += ["", "inclusive time:"]
    lines += [f"  {t:8.3f}s  {name}" for name, t in inclusive.most_common(limit)]
    return "\n".join(lines) + "\n"
