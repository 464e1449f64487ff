"""The project's PostgreSQL instance (``scripts/postgres.sh``) as a gateway's state database:
started on first use, one fresh database per gateway, queried as its superuser."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from harness.processes import HarnessError, command_as, run

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "postgres.sh"
SOCKET_DIRECTORY = "/run/slurm-gateway-postgres"
PORT = 18730  # names the socket (.s.PGSQL.18730): the instance listens on no TCP port
OWNER = "slurmgw"  # the gateway's service account: its role, by peer authentication
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_started = False


def up() -> None:
    """Start the instance (installing postgresql if missing), once per process."""
    global _started
    if not _started:
        out = run(["bash", str(SCRIPT), "up"], timeout=600)
        if out.returncode != 0:
            raise HarnessError(f"scripts/postgres.sh up failed:\n{out.stderr[-3000:]}")
        _started = True


def url(database: str) -> str:
    """The gateway's ``db_url`` for ``database``: the Unix socket, peer authentication."""
    return f"postgresql+psycopg://{OWNER}@/{database}?host={SOCKET_DIRECTORY}&port={PORT}"


def tool(name: str) -> str:
    """The newest installed PostgreSQL's ``name`` (psql, pg_dump, pg_restore)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3])
    )
    if not found:
        raise HarnessError(f"no /usr/lib/postgresql/*/bin/{name}: run scripts/postgres.sh up")
    return str(found[-1])


def query(sql: str, database: str = "postgres") -> list[list[str]]:
    """Rows of ``sql`` run by the superuser (``postgres``) in ``database``."""
    argv = [tool("psql"), "-X", "-q", "-tA", "-F", "\t", "-v", "ON_ERROR_STOP=1"]
    argv += ["-h", SOCKET_DIRECTORY, "-p", str(PORT), "-d", database, "-c", sql]
    out = run(command_as("postgres", argv), timeout=60, cwd="/")
    if out.returncode != 0:
        raise HarnessError(f"psql {sql!r} in {database}: {out.stderr[-2000:]}")
    return [line.split("\t") for line in out.stdout.splitlines() if line]


def fresh_database(name: str) -> str:
    """An empty database ``name`` owned by the service account (dropped first if it exists,
    with whatever was connected to it); returns its URL."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a database name for the tests: {name!r}")
    up()
    drop_database(name)
    query(f"CREATE DATABASE {name} OWNER {OWNER}")
    return url(name)


def drop_database(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a database name for the tests: {name!r}")
    query(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def dump(database: str) -> bytes:
    """``pg_dump -Fc`` of ``database``, made by its owner (the service account), as an
    admin backs it up."""
    argv = [tool("pg_dump"), "-Fc", "-h", SOCKET_DIRECTORY, "-p", str(PORT), "-d", database]
    out = subprocess.run(command_as(OWNER, argv), capture_output=True, timeout=120, cwd="/")
    if out.returncode != 0:
        raise HarnessError(f"pg_dump {database}: {out.stderr.decode()[-2000:]}")
    return out.stdout


def restore(database: str, backup: bytes) -> None:
    """``pg_restore`` of a :func:`dump` into ``database`` (made empty first), by its owner."""
    fresh_database(database)
    argv = [tool("pg_restore"), "--no-owner", "-h", SOCKET_DIRECTORY, "-p", str(PORT)]
    argv += ["-d", database]
    out = subprocess.run(
        command_as(OWNER, argv), input=backup, capture_output=True, timeout=120, cwd="/"
    )
    if out.returncode != 0:
        raise HarnessError(f"pg_restore {database}: {out.stderr.decode()[-2000:]}")
