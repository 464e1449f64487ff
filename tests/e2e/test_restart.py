"""Restarting the gateway (persistent database by default) does not lose running clusters."""


def test_cluster_survives_a_gateway_restart(as_user, make_gateway):
    gw = make_gateway("")
    before = as_user(
        "alice",
        """
        cluster = Gateway().new_cluster(shutdown_on_close=False)
        cluster.scale(1)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=120)
        client.close()
        report(name=cluster.name)
        """,
        via=gw,
    )
    gw.stop()
    gw.start()
    after = as_user(
        "alice",
        f"""
        gateway = Gateway()
        listed = [c.name for c in gateway.list_clusters()]
        cluster = gateway.connect({before["name"]!r})
        client = cluster.get_client()
        value = client.submit(sum, range(101)).result()
        cluster.scale(2)
        client.wait_for_workers(2, timeout=120)
        workers = len(client.scheduler_info()["workers"])
        client.close()
        cluster.shutdown()
        report(listed=listed, value=value, workers=workers)
        """,
        via=gw,
    )
    assert before["name"] in after["listed"]
    assert after["value"] == 5050
    assert after["workers"] == 2
