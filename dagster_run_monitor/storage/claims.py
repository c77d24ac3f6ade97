"""Claims: one daemon at a time acts on a run, so two daemons never act twice for one cause.

A daemon claims the runs it is about to act on, a batch at a time, and holds the claims while
it re-checks them and acts. On PostgreSQL: session advisory locks keyed by the run ids, taken
in one statement on one connection of the run storage. On SQLite (one host): an exclusive
``flock`` on each run's own lock file in the instance directory (one empty file per run ever
acted on; a shared bucket of files would make two runs block each other). A daemon that does
not get a run's claim leaves the run to its next pass, where it sees the result of the other
daemon's action. A daemon killed while holding claims releases them with its connection or
file descriptors.
"""

import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as db
from dagster import DagsterInstance


def _key(run_id: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(run_id.encode(), digest_size=8).digest(), "big", signed=True
    )


@contextmanager
def claims(instance: DagsterInstance, run_ids: Sequence[str]) -> Iterator[set[str]]:
    """Yields the ids of ``run_ids`` this process holds until the block ends; the others are
    held by another daemon."""
    storage = instance.run_storage
    if not run_ids:
        yield set()
    elif type(storage).__module__.startswith("dagster_postgres"):
        with _advisory_locks(storage, run_ids) as held:
            yield held
    elif getattr(instance, "root_directory", None):
        with _file_locks(Path(instance.root_directory) / "run_monitor" / "claims", run_ids) as held:
            yield held
    else:
        yield set(run_ids)  # an ephemeral instance: one process


@contextmanager
def _advisory_locks(storage, run_ids: Sequence[str]) -> Iterator[set[str]]:
    by_key = {_key(run_id): run_id for run_id in run_ids}
    keys = db.bindparam("keys", list(by_key), type_=db.ARRAY(db.BigInteger))
    with storage.connect() as conn:
        lock = db.text("SELECT k FROM unnest(:keys) AS k WHERE pg_try_advisory_lock(k)")
        taken = conn.execute(lock.bindparams(keys)).scalars()
        held = [int(k) for k in taken]
        try:
            yield {by_key[k] for k in held}
        finally:
            if held:
                conn.execute(
                    db.text("SELECT pg_advisory_unlock(k) FROM unnest(:keys) AS k").bindparams(
                        db.bindparam("keys", held, type_=db.ARRAY(db.BigInteger))
                    )
                )


@contextmanager
def _file_locks(directory: Path, run_ids: Sequence[str]) -> Iterator[set[str]]:
    directory.mkdir(parents=True, exist_ok=True)
    fds: list[int] = []
    held: set[str] = set()
    try:
        for run_id in run_ids:
            name = f"{_key(run_id) & 0xFFFFFFFFFFFFFFFF:016x}.lock"  # 64 bits: no shared files
            fd = os.open(directory / name, os.O_RDWR | os.O_CREAT, 0o644)
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            held.add(run_id)
        yield held
    finally:
        for fd in fds:
            os.close(fd)
