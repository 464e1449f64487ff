"""The Purdue guide, step by step, as alice with the stock client and Gateway(): on the login
node (the suite's gateway) and with the gateway off it, through SSH."""

import glob
import pwd
import subprocess

from conftest import TRANSPORTS, ssh_gateway, user_jobs, wait_until

MARKER = "/tmp/slurm-gateway-test-injected"
CREDENTIALS = "/tmp/dask-gateway.*"  # each job's private TLS directory on its node


@TRANSPORTS
def test_purdue_quickstart(as_user, alice_env, gateway, make_gateway, transport):
    via = ssh_gateway(make_gateway) if transport == "ssh" else gateway
    subprocess.run(["rm", "-f", MARKER])
    credentials_before = set(glob.glob(CREDENTIALS))
    result = as_user(
        "alice",
        f"""
        os.environ["X509_USER_PROXY"] = "/tmp/x509up_u_alice"
        os.environ["PYTHONPATH"] = "/depot/alice/lib"
        os.environ["INJECTION_ATTEMPT"] = "$(touch {MARKER}); `touch {MARKER}`"
        gateway = Gateway()
        options = gateway.cluster_options()
        started = time.monotonic()
        cluster = gateway.new_cluster(
            conda_env={alice_env!r}, worker_cores=1, worker_memory=1, env=dict(os.environ)
        )
        start_seconds = time.monotonic() - started
        cluster.scale(2)
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=120)

        import dask.array as da
        total = da.arange(1_000_000, chunks=100_000).sum().compute()

        def facts():
            import os, sys
            return dict(uid=os.getuid(), prefix=sys.prefix, x509=os.environ.get("X509_USER_PROXY"),
                        pythonpath=os.environ.get("PYTHONPATH"),
                        activated=os.environ.get("ANALYSIS_ACTIVATED"),
                        injection=os.environ.get("INJECTION_ATTEMPT"))
        per_worker = client.run(facts)

        import urllib.request
        with urllib.request.urlopen(cluster.dashboard_link, timeout=30) as resp:
            dashboard_status = resp.status

        listed = [c.name for c in gateway.list_clusters()]
        second = Gateway()
        connected = second.connect(cluster.name)
        connected_workers = len(connected.get_client().scheduler_info()["workers"])
        connected.close()
        second.close()
        name = cluster.name
        client.close()
        cluster.shutdown()
        gateway.close()
        report(name=name, options=sorted(options), start_seconds=start_seconds, total=int(total),
               per_worker=list(per_worker.values()), dashboard_status=dashboard_status,
               listed=listed, connected_workers=connected_workers)
        """,
        env={"SOME_NOTEBOOK_VAR": "1"},
        via=via,
    )
    alice = pwd.getpwnam("alice")
    assert result["options"] == ["conda_env", "env", "worker_cores", "worker_memory"]
    assert result["total"] == sum(range(1_000_000))
    assert len(result["per_worker"]) == 2
    for facts in result["per_worker"]:
        assert facts["uid"] == alice.pw_uid
        assert facts["prefix"] == alice_env
        assert facts["x509"] == "/tmp/x509up_u_alice"
        assert facts["pythonpath"] == "/depot/alice/lib"
        assert facts["activated"] == "yes"
        assert facts["injection"] == f"$(touch {MARKER}); `touch {MARKER}`"
    assert result["dashboard_status"] == 200
    assert result["name"] in result["listed"]
    assert result["connected_workers"] == 2
    subprocess.run(["ls", "-l", MARKER])
    assert not wait_until(lambda: __import__("os").path.exists(MARKER), 1)
    # shutdown() leaves nothing of alice's in the queue within 30 s
    assert wait_until(lambda: not user_jobs("alice"), 30), user_jobs("alice")
    # ... and no TLS key of the cluster's is left on the node.
    assert wait_until(lambda: not set(glob.glob(CREDENTIALS)) - credentials_before, 15)
