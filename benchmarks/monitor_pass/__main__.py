"""``python -m benchmarks.monitor_pass``."""

from benchmarks.monitor_pass.cli import main

main()
