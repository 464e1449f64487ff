"""A dask scheduler preload that sends the first heartbeat to the gateway at once.

dask-gateway's own preload (``dask_gateway.scheduler_preload``) starts its gateway service
when the scheduler listens, and sends its first heartbeat a quarter of a second later, from
a loop; the gateway marks the cluster RUNNING on that heartbeat. This preload runs right
after it (the scheduler job lists it second) and calls that service's own ``heartbeat()``
at once: the same message, client and token, sent by dask-gateway's code. The loop goes on
as before; a second heartbeat changes nothing.

It runs in the user's job environment, which need not have slurm-gateway installed: the
job script writes this file into the job's private directory and the scheduler loads it
from there (``--preload ./slurm_gateway_preload.py``). It imports only modules the
scheduler has loaded already.
"""

import asyncio
import logging

logger = logging.getLogger("distributed.scheduler")


def _report(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("slurm-gateway: first heartbeat failed: %s", task.exception())


def dask_setup(scheduler) -> None:
    """Send dask-gateway's heartbeat now, if its service is running (else do nothing)."""
    service = scheduler.services.get("gateway")
    if service is None:
        logger.warning("slurm-gateway: no dask-gateway service; no early heartbeat")
        return
    task = asyncio.ensure_future(service.heartbeat())
    task.add_done_callback(_report)
    # Held by the service, so that the task is not collected before it is done.
    service.slurm_gateway_first_heartbeat = task
