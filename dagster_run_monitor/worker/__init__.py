"""Code that runs inside users' run and step workers (empty for now).

A guest in someone else's process: small, never raising into the run, bounded in memory and
CPU, and inert when its feature is off. It imports only ``core`` and ``config``, never the
daemon, storage readers, launchers or alerts (``dagster_run_monitor_tests/test_layers.py``).
"""
