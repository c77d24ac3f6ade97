"""What the tests, the benchmark and the demo share: DAGSTER_HOMEs, PostgreSQL, subprocess
groups, runs and their event logs, and the test launchers."""
