"""The scheduler preload (scheduler_preload.py) calls dask-gateway's own heartbeat at once."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from slurm_gateway import scheduler_preload


class Service:
    def __init__(self, fails: bool = False):
        self.sent = 0
        self.fails = fails

    async def heartbeat(self) -> None:
        self.sent += 1
        if self.fails:
            raise OSError("gateway unreachable")


def _setup(services: dict) -> None:
    async def main():
        scheduler_preload.dask_setup(SimpleNamespace(services=services))
        await asyncio.sleep(0)  # the heartbeat task runs; nothing waits 0.25 s
        await asyncio.sleep(0)

    asyncio.run(main())


def test_the_first_heartbeat_is_sent_at_once():
    service = Service()
    _setup({"gateway": service})
    assert service.sent == 1


def test_a_failed_heartbeat_is_logged_not_raised(caplog):
    service = Service(fails=True)
    with caplog.at_level(logging.WARNING, logger="distributed.scheduler"):
        _setup({"gateway": service})
    assert service.sent == 1
    assert "first heartbeat failed: gateway unreachable" in caplog.text


def test_without_dask_gateways_service_nothing_is_sent(caplog):
    with caplog.at_level(logging.WARNING, logger="distributed.scheduler"):
        _setup({})
    assert "no dask-gateway service" in caplog.text


def test_the_dask_gateway_service_has_the_heartbeat_it_calls():
    from dask_gateway.scheduler_preload import GatewaySchedulerService

    assert asyncio.iscoroutinefunction(GatewaySchedulerService.heartbeat)
