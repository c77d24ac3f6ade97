"""One monitoring pass of dagster-run-monitor against Dagster's built-in run monitoring.

From the root of a clone (the package installed, e.g. by ``./dev test`` or ``pip install -e .``):

    .venv/bin/python -m benchmarks.monitor_pass --runs 100 1000 10000 --storage postgres
    .venv/bin/python -m benchmarks.monitor_pass --runs 100 --storage sqlite

For each N it builds N in-progress runs on a real ``DagsterInstance`` (a Postgres database of its
own on 127.0.0.1:5432, created and dropped by the benchmark; or SQLite, Dagster's default
storage, in a temporary DAGSTER_HOME), then:

1. Steady state (the recurring cost of monitoring): every worker healthy, nothing past a
   limit, so neither monitor changes anything and the same data serves every repetition (the
   benchmark checks that the pass left runs and events untouched). Passes alternate: ours
   (``RunMonitorDaemon.monitor_runs``, consumed fully; one daemon object for all passes, as
   under ``dagster-daemon run``, so its first pass reads every run body and later passes only
   the changed ones; the cold first pass is the fresh-process figure below), Dagster's
   (``execute_run_monitoring_iteration``, on an instance of its own with Dagster's defaults:
   our daemon pools its instance's Postgres connections), ...; medians are reported.
2. Crash storm: K workers (default 1,000) of STARTED runs crash at once; one pass must resume
   them all (``instance.resume_run`` with the benchmark launcher, whose resume rewrites a tag).
   Before each repetition a fresh set of K healthy STARTED runs is marked crashed.
3. A fresh daemon process: one pass in a new Python process, whose peak RSS
   (VmHWM: imports, instance, the pass) is the daemon's memory at N runs.

The health check of the benchmark launcher (``benchmarks/launcher.py``) sleeps ``--latency``
(default 20 ms, about one Kubernetes API call) and issues no SQL. ``--launcher k8s`` and
``--launcher docker`` run Dagster's own K8sRunLauncher (its API faked) and DockerRunLauncher
(real containers on the local engine up to ``--docker-real-max-n``, its client faked beyond).

Every pass reports its SQL statements and new database connections (``--show-statements``
lists them), its RSS, and its errors (there should be none). ``--profile-dir DIR`` profiles
one more steady pass and one more crash-storm pass of ours at the largest N (pyinstrument for
the pass, cProfile summed over the action threads). ``--pool-size 16`` is an experiment: both
monitors with pooled Postgres connections instead of Dagster's NullPool.

At 10,000 runs the built-in pass takes about 8,000 x 20 ms (its health checks run one after
another), so it runs once there by default (``--builtin-reps-large``, ``--large-n``); the whole
``--runs 100 1000 10000`` run takes about 25 minutes on two cores."""
