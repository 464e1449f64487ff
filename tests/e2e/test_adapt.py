"""cluster.adapt(minimum, maximum): grows under load, shrinks back when idle."""


def test_adapt_grows_under_load_and_shrinks_back(as_user):
    result = as_user(
        "alice",
        """
        gateway = Gateway()
        cluster = gateway.new_cluster(worker_cores=1, worker_memory=1)
        cluster.adapt(minimum=1, maximum=3)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=120)

        def slow(i):
            import time
            time.sleep(1.5)
            return i

        futures = client.map(slow, range(60))
        peak = 0
        deadline = time.monotonic() + 120
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            peak = max(peak, len(client.scheduler_info()["workers"]))
            time.sleep(0.5)
        total = sum(client.gather(futures))
        del futures

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            after = len(client.scheduler_info()["workers"])
            if after == 1:
                break
            time.sleep(1)
        client.close()
        cluster.shutdown()
        report(peak=peak, after=after, total=total)
        """,
    )
    assert result["total"] == sum(range(60))
    assert result["peak"] > 1, "adapt did not add workers under load"
    assert result["peak"] <= 3, "adapt exceeded its maximum"
    assert result["after"] == 1, "adapt did not shrink back to its minimum"
