"""A dask scheduler preload: dask-gateway's preload without its client, and the first
heartbeat sent as soon as the scheduler listens.

The scheduler job lists this preload right **before** dask-gateway's own
(``dask_gateway.scheduler_preload``). dask imports every preload when it creates the
scheduler, in order, and runs their ``dask_setup`` in the same order once it listens:

- **On import**, the ``dask_gateway`` package is put in ``sys.modules`` without running its
  ``__init__``, which imports dask-gateway's client (aiohttp, which builds an SSL context as
  it is imported: 130-250 ms of the scheduler's start on the dev cluster). Its preload
  module, imported next, needs only tornado and ``dask_gateway.utils``. The package's own
  ``__init__`` still runs, whole, the first time anything of it is used (``from
  dask_gateway import Gateway`` in a scheduler plugin works as before); if the package was
  imported already, or cannot be found, nothing is changed.
- **In ``dask_setup``** it waits for dask-gateway's service (started by the next preload's
  ``dask_setup``, in the same pass) and calls its own ``heartbeat()`` at once: the same
  message, client and token, sent by dask-gateway's code. dask-gateway's loop would send
  its first one a quarter of a second later; the gateway marks the cluster RUNNING on the
  first. The loop goes on as before; a second heartbeat changes nothing.

It runs in the user's job environment, which need not have slurm-gateway installed: the
job script writes this file into the job's private directory and the scheduler loads it
from there (``--preload ./slurm_gateway_preload.py``). It imports only the standard library.
"""

import asyncio
import importlib.util
import logging
import sys
import types

logger = logging.getLogger("distributed.scheduler")

#: The package whose ``__init__`` is deferred, and how long ``dask_setup`` waits for its
#: service (seconds, in steps of :data:`SERVICE_POLL`).
PACKAGE = "dask_gateway"
SERVICE_WAIT = 5.0
SERVICE_POLL = 0.01


class _DeferredPackage(types.ModuleType):
    """A package whose ``__init__`` runs the first time one of its names is looked up."""

    def __getattr__(self, name: str):
        # Only called for names the module does not have yet: its __init__ has not run.
        self.__class__ = types.ModuleType
        self.__spec__.loader.exec_module(self)
        return getattr(self, name)


def defer_package_init(name: str = PACKAGE) -> bool:
    """Put package ``name`` in ``sys.modules`` without running its ``__init__`` (until one
    of its names is used); its submodules import as usual. False if it was imported
    already or cannot be found (then nothing is changed)."""
    if name in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return False
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _DeferredPackage
    sys.modules[name] = module
    return True


# Only as the scheduler's preload (dask imports this file as "slurm_gateway_preload"), not
# when the gateway's tests import it as part of slurm_gateway.
if __name__ != "slurm_gateway.scheduler_preload":
    defer_package_init()


def _report(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("slurm-gateway: first heartbeat failed: %s", task.exception())


async def _first_heartbeat(scheduler) -> None:
    """dask-gateway's heartbeat, once its service is there (at most SERVICE_WAIT seconds)."""
    wait = SERVICE_WAIT
    service = scheduler.services.get("gateway")
    waited = 0.0
    while service is None:
        if waited >= wait:
            logger.warning("slurm-gateway: no dask-gateway service; no early heartbeat")
            return
        # The first pass yields once only: the next preload's setup runs without a pause.
        await asyncio.sleep(0 if waited == 0 else SERVICE_POLL)
        waited += SERVICE_POLL
        service = scheduler.services.get("gateway")
    await service.heartbeat()


def dask_setup(scheduler) -> None:
    """Send dask-gateway's heartbeat as soon as its service runs (else log and do nothing)."""
    task = asyncio.ensure_future(_first_heartbeat(scheduler))
    task.add_done_callback(_report)
    # Held by the scheduler, so that the task is not collected before it is done.
    scheduler.slurm_gateway_first_heartbeat = task
