"""Benchmarks: `python -m benchmarks.monitor_pass --help`."""
