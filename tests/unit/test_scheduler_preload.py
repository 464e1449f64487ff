"""The scheduler preload (scheduler_preload.py): dask-gateway's preload is imported without
dask-gateway's client, and dask-gateway's own heartbeat is called as soon as its service runs."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from slurm_gateway import scheduler_preload

PRELOAD = Path(scheduler_preload.__file__)


class Service:
    def __init__(self, fails: bool = False):
        self.sent = 0
        self.fails = fails

    async def heartbeat(self) -> None:
        self.sent += 1
        if self.fails:
            raise OSError("gateway unreachable")


def _setup(services: dict, later: dict | None = None, wait: float = 0.5) -> None:
    """Our dask_setup, then (as dask does with the next preload, in the same pass) the
    services of ``later`` appear; then the event loop runs for ``wait`` seconds at most."""

    async def main():
        scheduler = SimpleNamespace(services=services)
        scheduler_preload.dask_setup(scheduler)
        services.update(later or {})
        await asyncio.wait([scheduler.slurm_gateway_first_heartbeat], timeout=wait)

    asyncio.run(main())


def test_the_first_heartbeat_goes_once_dask_gateways_setup_ran():
    service = Service()
    _setup({}, later={"gateway": service})
    assert service.sent == 1


def test_the_first_heartbeat_is_sent_at_once_if_the_service_runs_already():
    service = Service()
    _setup({"gateway": service})
    assert service.sent == 1


def test_a_failed_heartbeat_is_logged_not_raised(caplog):
    service = Service(fails=True)
    with caplog.at_level(logging.WARNING, logger="distributed.scheduler"):
        _setup({}, later={"gateway": service})
    assert service.sent == 1
    assert "first heartbeat failed: gateway unreachable" in caplog.text


def test_without_dask_gateways_service_nothing_is_sent(caplog, monkeypatch):
    monkeypatch.setattr(scheduler_preload, "SERVICE_WAIT", 0.05)
    with caplog.at_level(logging.WARNING, logger="distributed.scheduler"):
        _setup({})
    assert "no dask-gateway service" in caplog.text


def test_the_dask_gateway_service_has_the_heartbeat_it_calls():
    from dask_gateway.scheduler_preload import GatewaySchedulerService

    assert asyncio.iscoroutinefunction(GatewaySchedulerService.heartbeat)


def _in_a_scheduler_process(code: str) -> dict:
    """Run ``code`` after loading the preload file as dask does (``import_file``, module
    name ``slurm_gateway_preload``) in a fresh python; ``code`` sets ``result``."""
    program = f"""
import json, sys
import distributed.preloading
distributed.preloading._import_module({str(PRELOAD)!r})
{code}
print(json.dumps(result))
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_dask_gateways_preload_is_imported_without_its_client():
    result = _in_a_scheduler_process(
        "import dask_gateway.scheduler_preload as p\n"
        "result = {'client': 'dask_gateway.client' in sys.modules,\n"
        "          'aiohttp': 'aiohttp' in sys.modules,\n"
        "          'setup': type(p.dask_setup).__name__}"
    )
    assert result == {"client": False, "aiohttp": False, "setup": "Command"}


def test_the_package_is_whole_when_first_used():
    result = _in_a_scheduler_process(
        "import dask_gateway.scheduler_preload\n"
        "from dask_gateway import Gateway, __version__\n"
        "import dask, dask_gateway\n"
        "result = {'gateway': Gateway.__module__, 'version': dask_gateway.__version__,\n"
        "          'config': dask.config.get('gateway.address', 'unset') != 'unset'}"
    )
    from dask_gateway import __version__

    assert result == {"gateway": "dask_gateway.client", "version": __version__, "config": True}


def test_an_imported_package_is_left_alone():
    before = sys.modules.get("dask_gateway")
    assert scheduler_preload.defer_package_init("json") is False
    assert scheduler_preload.defer_package_init("no_such_package_here") is False
    assert sys.modules.get("dask_gateway") is before
