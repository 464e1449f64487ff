"""Client side of the benchmark: runs as the benchmark user, with the stock clients.

``run.py`` copies this directory (benchmarks/client/) into its work directory and runs this
file there as the benchmark user (``runuser -u carol -- bench-venv/bin/python
bench_client.py TASK JSON_ARGS``). Each task prints lines starting with ``@@`` followed by
JSON: ``checkpoint`` (wait for the orchestrator to answer ``go`` on stdin), ``result`` (the
measurements) or ``error``. Every wait is bounded; every cluster and job a task creates is
shut down or cancelled before it returns, also when it fails.
"""

from __future__ import annotations

import json
import sys
import traceback

from floor_tasks import floor_array, floor_pair, floor_scheduler
from gateway_tasks import (
    gw_idle_clusters,
    gw_new_cluster,
    gw_scale_latency,
    gw_scale_shutdown,
    gw_scale_wait,
    gw_submit_limit,
)
from jobqueue_tasks import jq_new_cluster, jq_scale_shutdown, jq_scale_wait
from orchestrator import emit
from scancel_tasks import gw_scancel

TASKS = {
    "gw_new_cluster": gw_new_cluster,
    "gw_scale_wait": gw_scale_wait,
    "gw_scale_shutdown": gw_scale_shutdown,
    "gw_scale_latency": gw_scale_latency,
    "gw_idle_clusters": gw_idle_clusters,
    "gw_submit_limit": gw_submit_limit,
    "gw_scancel": gw_scancel,
    "jq_new_cluster": jq_new_cluster,
    "jq_scale_wait": jq_scale_wait,
    "jq_scale_shutdown": jq_scale_shutdown,
    "floor_array": floor_array,
    "floor_pair": floor_pair,
    "floor_scheduler": floor_scheduler,
}


def main() -> None:
    task, args = sys.argv[1], json.loads(sys.argv[2])
    try:
        result = TASKS[task](**args)
    except BaseException as exc:
        traceback.print_exc()
        emit("error", error=f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    emit("result", **result)


if __name__ == "__main__":
    main()
