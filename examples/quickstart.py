"""What a scientist types in a notebook (the Purdue guide), run by scripts/demo.sh as alice."""

import os
import time

import dask.array as da
from dask_gateway import Gateway

gateway = Gateway()  # the site's default endpoint, from /etc/dask/gateway.yaml
print("Options:", {name: gateway.cluster_options()[name] for name in gateway.cluster_options()})

started = time.monotonic()
cluster = gateway.new_cluster(worker_cores=1, worker_memory=1, env=dict(os.environ))
print(f"Cluster {cluster.name} running after {time.monotonic() - started:.1f} s")
print("Dashboard:", cluster.dashboard_link)

cluster.scale(4)
client = cluster.get_client()
client.wait_for_workers(4, timeout=120)
print(f"4 workers connected after {time.monotonic() - started:.1f} s")


def where_am_i():
    import os
    import socket

    return os.getuid(), socket.gethostname(), os.environ.get("SLURM_JOB_ID")


for worker, (uid, host, job) in client.run(where_am_i).items():
    print(f"  worker {worker}: uid {uid}, SLURM job {job} on {host}")

x = da.random.default_rng(42).standard_normal((8000, 8000), chunks=(1000, 1000))
result = (x + x.T).mean(axis=0).std().compute()
print(f"std of column means of a 8000x8000 array, computed on SLURM: {result:.6f}")

client.close()
cluster.shutdown()
gateway.close()
print("Cluster shut down; `squeue -u $USER` shows nothing left.")
