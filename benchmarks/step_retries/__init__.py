"""Step retries at scale: ``python -m benchmarks.step_retries --runs 1000`` (see ``__main__``)."""
