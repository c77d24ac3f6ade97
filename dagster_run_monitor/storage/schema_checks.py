"""Dagster's schema checks, answered once in the daemon.

Dagster's SQL storages reflect the database schema on many calls (``has_run_stats_index_cols``
on every ``get_run_records``, so on every ``get_run_by_id``): a catalog query and SQLAlchemy's
inspector each time, about a tenth of a resume's cost on Postgres. A column that exists stays
(migrations add columns, none removes one), so the daemon keeps a check's answer once it is
True; a False answer is asked again, so ``dagster instance migrate`` under a running daemon is
still seen.
"""

import functools
from collections.abc import Callable

from dagster import DagsterInstance

SCHEMA_CHECKS = (
    "has_run_stats_index_cols",
    "has_bulk_actions_selector_cols",
    "has_backfill_id_column",
    "has_bulk_action_job_name_column",
)


def remember_schema_checks(instance: DagsterInstance) -> list[str]:
    """Make the instance's run storage keep each schema check's True answer; returns the
    checks so wrapped (those the storage has)."""
    storage = instance.run_storage
    wrapped = []
    for name in SCHEMA_CHECKS:
        check = getattr(storage, name, None)
        if callable(check) and not getattr(check, "_remembers_true", False):
            setattr(storage, name, _true_once_true(check))
            wrapped.append(name)
    return wrapped


def _true_once_true(check: Callable[[], bool]) -> Callable[[], bool]:
    known = False

    @functools.wraps(check)
    def remembered() -> bool:
        nonlocal known
        known = known or bool(check())
        return known

    remembered._remembers_true = True  # type: ignore[attr-defined]
    return remembered
