"""The pure decision core: facts in, actions out, no I/O.

The vocabulary (tags and messages, run facts, worker health, actions, alerts, crash causes),
the limits and their precedence, the typed settings the decisions read, and the decisions
themselves (``policy.plan``). It imports only ``core``: nothing that touches storage,
threads, the network or a launcher's client (``dagster_run_monitor_tests/test_structure.py``).
"""
