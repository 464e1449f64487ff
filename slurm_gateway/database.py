"""The state database's engine: how the gateway connects to SQLite or a database server.

The gateway uses its database from its one event-loop thread, so every commit holds every
request for as long as it takes:

- SQLite (the default, a file in ``state_directory``) runs in WAL mode with
  ``synchronous=NORMAL``: a commit appends to the write-ahead log without waiting for the
  disk (the log is synced at checkpoints), a few microseconds instead of an fsync each.
  The database stays consistent after a crash; a power loss may lose the last commits,
  which the gateway reconciles with SLURM at start as after any restart.
- A database server (PostgreSQL) gets a bounded connection pool whose connections are
  checked before use, so a database restart costs no failed request.

An in-memory SQLite database keeps the stock engine (it is the database).
"""

from __future__ import annotations

import sqlalchemy as sa

#: The connection pool of a database server (one connection at a time from the event-loop
#: thread, a second for the odd overlap, e.g. the health probe's thread).
POOL = {"pool_size": 2, "max_overflow": 2, "pool_timeout": 30, "pool_pre_ping": True}

#: What every SQLite connection is set to: the stock engine's foreign keys, and commits
#: that do not wait for the disk.
SQLITE_PRAGMAS = ("foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL")


def _set_sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def is_in_memory(url: str) -> bool:
    """Whether ``url`` is an in-memory SQLite database (the stock default)."""
    parsed = sa.make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def state_engine(url: str, echo: bool = False) -> sa.Engine | None:
    """The engine of the state database at ``url`` (see the module docstring); None for an
    in-memory database, whose stock engine stays."""
    if is_in_memory(url):
        return None
    if sa.make_url(url).get_backend_name() == "sqlite":
        # The stock engine's connect_args: the health probe asks from a thread.
        engine = sa.create_engine(url, echo=echo, connect_args={"check_same_thread": False})
        sa.event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    return sa.create_engine(url, echo=echo, **POOL)


def engine_summary(engine: sa.Engine) -> str:
    """How ``engine`` connects, for the log."""
    if engine.url.get_backend_name() == "sqlite":
        return ", ".join(SQLITE_PRAGMAS)
    return f"at most {POOL['pool_size'] + POOL['max_overflow']} connections"
