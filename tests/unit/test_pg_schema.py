"""The stock tables on PostgreSQL (dgs_compat.POSTGRESQL_TYPES, database.state_engine): what
would fail there is given a PostgreSQL type, and SQLite's schema stays what it was."""

from __future__ import annotations

from dask_gateway_server.backends.db_base import clusters, workers
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateTable

from slurm_gateway.database import POOL, state_engine

PG = postgresql.psycopg.dialect()


def _ddl(table, dialect) -> dict[str, str]:
    """Column name -> its type in ``CREATE TABLE`` for ``dialect``."""
    lines = str(CreateTable(table).compile(dialect=dialect)).splitlines()
    columns = [line.strip().rstrip(",").split(" ", 2) for line in lines if line.startswith("\t")]
    return {parts[0]: parts[1] for parts in columns if len(parts) > 1 and parts[0].islower()}


def test_postgresql_gets_bytea_for_the_token_and_64_bit_times():
    cluster_columns, worker_columns = _ddl(clusters, PG), _ddl(workers, PG)
    assert cluster_columns["token"] == "BYTEA"  # PostgreSQL has no BINARY(140)
    # Milliseconds since 1970 (1.8e12 today) overflow a 32-bit INTEGER.
    assert cluster_columns["start_time"] == cluster_columns["stop_time"] == "BIGINT"
    assert worker_columns["start_time"] == worker_columns["stop_time"] == "BIGINT"


def test_sqlite_schema_is_the_stock_one():
    cluster_columns, worker_columns = (
        _ddl(clusters, sqlite.dialect()),
        _ddl(workers, sqlite.dialect()),
    )
    assert cluster_columns["token"] == "BINARY(140)"
    assert cluster_columns["start_time"] == worker_columns["close_expected"] == "INTEGER"


def test_close_expected_reaches_postgresql_as_an_integer_not_a_bool():
    # PostgreSQL refuses a boolean for an integer column; the stock code writes True/False.
    column_type = workers.c.close_expected.type.dialect_impl(PG)
    for flag, number in ((True, 1), (False, 0)):
        sent = column_type.process_bind_param(flag, PG)
        assert sent == number and type(sent) is int


def test_a_database_server_gets_a_bounded_pool_checked_before_use():
    engine = state_engine("postgresql+psycopg://slurmgw@/slurm_gateway?host=/run/x&port=1")
    assert engine.pool.size() == POOL["pool_size"] == 2
    assert engine.pool._max_overflow == POOL["max_overflow"]
    assert engine.pool._pre_ping and engine.pool._timeout == 30
    assert "postgresql+psycopg://" in str(engine.url)
