"""Bulk reads and writes of Dagster's storage: runs in pages, event-log times and resume
counts in batches, tags and events for many runs in a few statements, claims, the
connection pool, and the answers Dagster's calls get from what the daemon already read."""
