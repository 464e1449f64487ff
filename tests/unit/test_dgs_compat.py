"""The overrides of dask-gateway-server internals (dgs_compat.py) still fit the installed
release: these tests fail loudly when a new release changes what they rely on."""

from __future__ import annotations

import asyncio
import inspect

import dask_gateway_server
from cryptography.fernet import Fernet
from dask_gateway_server.backends.db_base import DataManager, DBBackendBase, JobStatus
from traitlets import HasTraits

from slurm_gateway import dgs_compat, worker_writes
from slurm_gateway.backend import SlurmBackend
from slurm_gateway.dgs_compat import StockOverrides, internals_problems
from slurm_gateway.worker_writes import BulkWorkerOverrides, insert_workers


def test_the_internals_the_overrides_rely_on_are_unchanged():
    problems = internals_problems()
    assert not problems, (
        f"dask-gateway-server {dask_gateway_server.__version__} changed internals that "
        f"slurm_gateway/dgs_compat.py relies on; review every override there: {problems}"
    )


def test_worker_records_made_in_one_transaction_are_what_the_stock_code_reads_back(tmp_path):
    asyncio.run(_create_and_reload(tmp_path))


async def _create_and_reload(tmp_path):
    url = f"sqlite:///{tmp_path}/state.sqlite"
    key = Fernet.generate_key()
    data = DataManager(url=url, encrypt_keys=[key])
    cluster = data.create_cluster("alice", {}, {"cluster_max_workers": 10})
    created = insert_workers(data, cluster, 3)
    stock = data.create_worker(cluster)

    assert len({w.name for w in created}) == 3
    assert set(cluster.workers) == {w.name for w in created} | {stock.name}
    # A restarted gateway loads the same records as the stock code's own.
    reloaded = DataManager(url=url, encrypt_keys=[key]).get_cluster(cluster.name)
    by_name = reloaded.workers
    assert set(by_name) == set(cluster.workers)
    for worker in created:
        again = by_name[worker.name]
        assert (again.status, again.target) == (JobStatus.CREATED, JobStatus.RUNNING)
        assert again.state == {} and again.close_expected == stock.close_expected
        assert again.start_time == worker.start_time


#: The classes that may override private methods of the stock backend, each listing them.
OVERRIDING = (StockOverrides, BulkWorkerOverrides)


def test_only_dgs_compat_overrides_private_methods_of_the_stock_backend():
    class Probe(HasTraits):
        pass

    # What traitlets' metaclass writes into every class, ours and the stock ones alike.
    per_class = set(vars(Probe))
    stock_private = {
        name
        for cls in DBBackendBase.__mro__
        if cls.__module__.startswith("dask_gateway_server")
        for name in vars(cls)
        if name.startswith("_") and not name.startswith("__")
    }
    for cls in SlurmBackend.__mro__:
        if cls.__module__.startswith("slurm_gateway") and cls not in OVERRIDING:
            shadowing = stock_private & set(vars(cls))
            # traitlets' @default methods are named _default_<trait>; they are public API.
            shadowing = {n for n in shadowing - per_class if not n.startswith("_default_")}
            assert not shadowing, f"{cls.__qualname__} overrides stock internals {shadowing}"
    listed = (dgs_compat.OVERRIDDEN, worker_writes.OVERRIDDEN)
    for cls, overridden in zip(OVERRIDING, listed, strict=True):
        for name in overridden:
            assert getattr(SlurmBackend, name) is getattr(cls, name), name
            assert inspect.iscoroutinefunction(getattr(SlurmBackend, name))


def test_a_changed_stock_method_is_reported(monkeypatch):
    # What a release that rewrote one of the overridden methods looks like to the guard.
    monkeypatch.setitem(worker_writes.OVERRIDDEN, "_cluster_to_closing", (["self", "cluster"], "0"))
    monkeypatch.setitem(worker_writes.REPLACED, "update_workers", (["self", "updates"], "0"))
    problems = internals_problems()
    assert any("DBBackendBase._cluster_to_closing changed" in p for p in problems), problems
    assert any("DataManager.update_workers changed" in p for p in problems), problems


def test_a_changed_copied_stock_function_is_reported(monkeypatch):
    # tls_keys copies the stock create_cluster and new_keypair: a release changing either
    # fails the guard.
    key = ("dask_gateway_server.tls", "new_keypair")
    monkeypatch.setitem(dgs_compat.STOCK_SOURCES, key, "0")
    problems = internals_problems()
    assert any("dask_gateway_server.tls.new_keypair is gone or changed" in p for p in problems)
