"""Dagster's ``EcsRunLauncher`` (dagster-aws), asked about thousands of runs a pass."""
