"""Reading the ``run_monitoring:`` block of dagster.yaml: its schema, the parsing and
validation into the core's typed settings (a bad value fails at start-up naming its key),
secrets from the environment, and the dagster.yaml writer of the demo, tests and benchmark.
Imports only ``core``."""
