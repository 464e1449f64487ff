"""bob can neither see nor touch alice's cluster, nor find any of its secrets."""

import glob
import os
import pwd

from conftest import RUNUSER, USERS, assert_refused, assert_still_running, run, user_jobs


def test_bob_cannot_list_connect_scale_or_stop_alices_cluster(as_user):
    alice = as_user(
        "alice",
        """
        gateway = Gateway()
        cluster = gateway.new_cluster(shutdown_on_close=False)
        report(name=cluster.name)
        """,
    )
    name = alice["name"]
    try:
        bob = as_user(
            "bob",
            f"""
            gateway = Gateway()
            report(
                listed=[c.name for c in gateway.list_clusters()],
                connect=error_of(gateway.connect, {name!r}),
                scale=error_of(gateway.scale_cluster, {name!r}, 3),
                adapt=error_of(gateway.adapt_cluster, {name!r}, 1, 3),
                stop=error_of(gateway.stop_cluster, {name!r}),
            )
            """,
        )
        assert name not in bob["listed"]
        assert_refused(bob, ("connect", "scale", "adapt", "stop"))
        # alice's cluster is untouched: still running, no workers were started for bob
        assert [line for line in user_jobs("alice") if "worker" in line] == []
        assert_still_running(as_user, "alice", name)
    finally:
        as_user("alice", f"Gateway().stop_cluster({name!r}); report()")


def test_bob_finds_no_secret_of_alices_cluster(as_user, gateway):
    alice = as_user(
        "alice",
        """
        cluster = Gateway().connect(running_cluster(1))
        client = cluster.get_client()
        report(
            name=cluster.name,
            token=client.run_on_scheduler(lambda: os.environ["DASK_GATEWAY_API_TOKEN"]),
            address=client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.address),
            key=cluster.security.tls_key,
        )
        """,
    )
    try:
        key_line = alice["key"].splitlines()[2]  # a line of the private key's body
        secrets = (alice["token"], key_line)
        job_ids = [line.split()[0] for line in user_jobs("alice")]
        assert len(job_ids) == 2, job_ids
        # The secrets are in the job script (which root can read) ...
        script = run(["scontrol", "write", "batch_script", job_ids[0], "-"]).stdout
        assert key_line in script
        # ... but nothing SLURM shows bob carries them, and bob cannot get the script.
        seen_by_bob = {
            **{
                f"scontrol show job {job_id}": _as_bob("scontrol", "show", "job", "-dd", job_id)
                for job_id in job_ids
            },
            "squeue": _as_bob("squeue", "--all", "--format=%all", "--jobs", ",".join(job_ids)),
            "sacct": _as_bob("sacct", "--format=ALL", "--parsable2", "--jobs", ",".join(job_ids)),
        }
        assert all(seen.returncode == 0 for seen in seen_by_bob.values()), {
            command: seen.stderr for command, seen in seen_by_bob.items()
        }
        assert job_ids[0] in seen_by_bob["squeue"].stdout  # bob does see that the job exists
        for command, seen in seen_by_bob.items():
            for secret in secrets:
                assert secret not in seen.stdout + seen.stderr, f"{command} shows bob a secret"
        for job_id in job_ids:
            refused = _as_bob("scontrol", "write", "batch_script", job_id, "-")
            # (scontrol exits 0 here all the same: the refusal is in what it prints)
            assert key_line not in refused.stdout
            assert "retrieval failed: Invalid user id" in refused.stderr, refused.stderr

        # Files: the TLS key on the node, the job logs, the scripts slurmd keeps.
        files = [
            *glob.glob("/tmp/dask-gateway.*/dask.pem"),
            *glob.glob("/var/lib/slurm/slurmd/*/job*/slurm_script"),
            *glob.glob("/var/log/slurm-gateway/alice/*/*.log"),
        ]
        alices = [f for f in files if os.stat(f).st_uid == pwd.getpwnam("alice").pw_uid]
        assert len(alices) >= 4, files  # key and log of each job, at least
        for path in files:
            read = _as_bob("cat", path)
            assert read.returncode != 0 and "Permission denied" in read.stderr, path

        # The scheduler itself, directly or through the proxy, without alice's certificate.
        bob = as_user(
            "bob",
            f"""
            from distributed import Client
            from distributed.security import Security

            own = Security.temporary()  # a certificate of bob's, not signed for this cluster

            def connect(address):
                with Client(address, security=own, timeout=5) as client:
                    return client.scheduler_info()

            report(
                direct=error_of(connect, {alice["address"]!r}),
                proxied=error_of(connect, "gateway://{gateway.proxy}/{alice["name"]}"),
            )
            """,
        )
        assert bob["direct"] is not None and "TLS" in bob["direct"], bob  # handshake refused
        assert bob["proxied"] is not None, bob
    finally:
        as_user("alice", f"Gateway().stop_cluster({alice['name']!r}); report()")


def test_users_cannot_read_the_gateways_database_keys_or_config(gateway):
    state = gateway.workdir / "state"
    private = [state / "slurm-gateway.sqlite", state / "encrypt-keys", gateway.config]
    assert all(path.exists() for path in private)
    for user in USERS:
        out = run([RUNUSER, "-u", user, "--", "cat", *map(str, private)])
        assert out.stdout == ""
        assert out.stderr.count("Permission denied") == len(private), out.stderr


def _as_bob(*argv: str):
    return run([RUNUSER, "-u", "bob", "--", *argv])
