"""Pooled PostgreSQL connections for the daemon process.

Outside the webserver, Dagster's Postgres storages open a new connection for every query
(``NullPool``), and a new server process comes with each. A pass that resumes a thousand runs
issues thousands of queries, so the daemon gives its run and event-log storages a pool, as
``optimize_for_webserver`` does for the webserver (which keeps a single connection).
"""

from dagster import DagsterInstance

from dagster_run_monitor.integration.internals import (
    pg_engine,
    replace_storage_engine,
    storage_engine,
)

POOL_RECYCLE_SECONDS = 3600


def pool_postgres_connections(instance: DagsterInstance, size: int, threads: int = 0) -> list[str]:
    """Give the instance's Postgres run and event-log storages a pool of ``size`` connections,
    and at least one per action thread and one for the pass (``threads`` + 1): a connection
    beyond the pool is closed when it is returned, so a busy pass would open new ones all the
    time. After a server restart the first query on a stale connection fails (the pass reports
    it) and SQLAlchemy discards the pool's older connections. Returns the storages pooled;
    other storages are left as they are."""
    if size <= 0:
        return []
    pooled = []
    for storage in (instance.run_storage, instance.event_log_storage):
        engine = storage_engine(storage)
        url = getattr(storage, "postgres_url", None)
        if not type(storage).__module__.startswith("dagster_postgres") or not engine or not url:
            continue
        if engine.pool.__class__.__name__ != "NullPool":
            continue  # already pooled (the webserver, or a second call)
        pooled_engine = pg_engine(
            url,
            getattr(storage, "_token_provider", None),
            isolation_level="AUTOCOMMIT",
            pool_size=max(size, threads + 1),
            max_overflow=size,
            pool_recycle=POOL_RECYCLE_SECONDS,
            pool_reset_on_return=None,  # autocommit: no transaction to roll back
        )
        replace_storage_engine(storage, pooled_engine)
        engine.dispose()
        pooled.append(type(storage).__name__)
    return pooled
