"""Claims: one daemon at a time acts on a run, so two daemons never act twice for one cause.

On PostgreSQL a session advisory lock keyed by the run id, held on a connection of the run
storage while the daemon re-checks and acts; on SQLite (one host) an exclusive ``flock`` on
the run's own lock file in the instance directory (one empty file per run ever acted on; a
shared bucket of files would make two runs block each other). The daemon that does not get the claim
leaves the run to the next pass, where it sees the result of the first daemon's action.
A daemon killed while holding a claim releases it with its connection or file descriptor.
"""

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as db
from dagster import DagsterInstance


def _key(run_id: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(run_id.encode(), digest_size=8).digest(), "big", signed=True
    )


@contextmanager
def claim(instance: DagsterInstance, run_id: str) -> Iterator[bool]:
    """Yields True while this process holds the run's claim, False if another one does."""
    storage = instance.run_storage
    if type(storage).__module__.startswith("dagster_postgres"):
        with storage.connect() as conn:  # type: ignore[attr-defined]
            key = _key(run_id)
            got = conn.execute(db.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            try:
                yield bool(got)
            finally:
                if got:
                    conn.execute(db.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    root = getattr(instance, "root_directory", None)
    if not root:
        yield True  # an ephemeral instance: one process
        return
    directory = Path(root) / "run_monitor" / "claims"
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{_key(run_id) & 0xFFFFFFFFFFFFFFFF:016x}.lock"  # 64 bits: no shared files
    fd = os.open(directory / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
