"""bob can neither see nor touch alice's cluster, through the stock client."""

from conftest import user_jobs


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
        for action in ("connect", "scale", "adapt", "stop"):
            assert bob[action] is not None, f"bob could {action} alice's cluster"
            assert "403" in bob[action] or "lacks permissions" in bob[action], bob[action]
        # alice's cluster is untouched: still running, no workers were started for bob
        assert [line for line in user_jobs("alice") if "worker" in line] == []
        after = as_user(
            "alice",
            f"""
            gateway = Gateway()
            report(status=[c.status.name for c in gateway.list_clusters() if c.name == {name!r}])
            """,
        )
        assert after["status"] == ["RUNNING"]
    finally:
        as_user("alice", f"Gateway().stop_cluster({name!r}); report()")
