"""The chaos soak (``python -m benchmarks.soak``): random faults against two daemons, with
the invariants checked on the whole history."""
