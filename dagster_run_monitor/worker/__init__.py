"""Code that runs inside users' run and step workers: their heartbeats.

``beats`` starts, in each run or step worker, a watcher process (``watcher``, a script that
loads only the standard library and the database driver) and a thread that samples where the
worker's threads are. A guest in someone else's process: small, never raising into the run,
bounded in memory and CPU (``benchmarks/watcher_cost.py``), and inert when ``worker_heartbeats``
is off. It imports only ``core``, ``config`` and Dagster's internals
(``dagster_run_monitor_tests/test_structure.py``).
"""
