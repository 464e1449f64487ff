"""The state database's SQLite engine (database.state_engine): commits without an fsync
each, foreign keys on, and the data the stock code wrote still there."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from cryptography.fernet import Fernet
from dask_gateway_server.backends.db_base import DataManager

from slurm_gateway.database import is_in_memory, state_engine


def _pragma(connection, name: str):
    return connection.exec_driver_sql(f"PRAGMA {name}").scalar()


def test_sqlite_runs_in_wal_mode_with_normal_sync_and_foreign_keys(tmp_path):
    asyncio.run(_write_and_reload(tmp_path))  # a cluster record's flags need a running loop


async def _write_and_reload(tmp_path):
    url = f"sqlite:///{tmp_path}/state.sqlite"
    key = Fernet.generate_key()
    data = DataManager(url=url, encrypt_keys=[key])
    cluster = data.create_cluster("alice", {}, {})
    data.db.dispose()
    data.db = state_engine(url)
    with data.db.connect() as connection:
        assert _pragma(connection, "journal_mode") == "wal"
        assert _pragma(connection, "synchronous") == 1  # NORMAL
        assert _pragma(connection, "foreign_keys") == 1
    worker = data.create_worker(cluster)
    again = DataManager(url=url, encrypt_keys=[key]).get_cluster(cluster.name)
    assert set(again.workers) == {worker.name}


def test_an_in_memory_database_keeps_the_stock_engine():
    for url in ("sqlite://", "sqlite:///:memory:"):
        assert is_in_memory(url) and state_engine(url) is None
    assert not is_in_memory("sqlite:////var/lib/slurm-gateway/slurm-gateway.sqlite")
    assert isinstance(state_engine("sqlite:////tmp/x.sqlite"), sa.Engine)
