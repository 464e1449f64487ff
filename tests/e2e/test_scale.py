"""Many workers at once: one job array per scale(), exact task cancellation (issue 4)."""

import re

from conftest import TRANSPORTS, run, ssh_gateway, wait_until


def _alice_worker_tasks() -> dict[str, str]:
    out = run(
        ["squeue", "-h", "--array", "-u", "alice", "-n", "dask-gateway-worker", "-o", "%i %T"]
    )
    return dict(line.split() for line in out.stdout.splitlines())


@TRANSPORTS
def test_scale_24_as_one_array_then_down_to_4_cancels_exactly_20_tasks(
    as_user, gateway, make_gateway, transport
):
    gw = ssh_gateway(make_gateway) if transport == "ssh" else gateway
    made = as_user(
        "alice",
        """
        cluster = Gateway().new_cluster(shutdown_on_close=False, worker_memory=0.5)
        cluster.scale(24)
        client = cluster.get_client()
        client.wait_for_workers(24, timeout=240)
        names = sorted(client.scheduler_info()["workers"])
        total = sum(client.gather(client.map(lambda x: x + 1, range(240))))
        report(name=cluster.name, workers=len(names), total=total)
        """,
        timeout=400,
        via=gw,
    )
    assert made["workers"] == 24 and made["total"] == sum(range(1, 241))
    tasks = _alice_worker_tasks()
    arrays = {task.split("_")[0] for task in tasks}
    assert len(tasks) == 24 and len(arrays) == 1, tasks  # one sbatch for all 24

    log_lines_before = len(gw.log.read_text().splitlines())
    after = as_user(
        "alice",
        f"""
        cluster = Gateway().connect({made["name"]!r})
        client = cluster.get_client()
        cluster.scale(4)
        deadline = time.monotonic() + 120
        while len(client.scheduler_info()["workers"]) > 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        total = sum(client.gather(client.map(lambda x: x * 2, range(100))))
        report(workers=len(client.scheduler_info()["workers"]), total=total)
        """,
        via=gw,
    )
    assert after == {"workers": 4, "total": sum(range(0, 200, 2))}
    assert wait_until(lambda: len(_alice_worker_tasks()) == 4, 60), _alice_worker_tasks()
    remaining = set(_alice_worker_tasks())

    def cancelled_tasks() -> set[str]:
        new_log = "\n".join(gw.log.read_text().splitlines()[log_lines_before:])
        return {
            task
            for line in re.findall(r"Cancelled jobs of user alice: (.*)", new_log)
            for task in line.split()
        }

    # Retired workers exit by themselves; the gateway cancels their tasks when the next
    # scheduler heartbeat reports them gone (every 15 s).
    cancelled = wait_until(lambda: len(cancelled_tasks()) >= 20 and cancelled_tasks(), 40)
    assert len(cancelled) == 20 and not cancelled & remaining, (cancelled, remaining)
    assert cancelled | remaining == set(tasks)
    as_user("alice", f"Gateway().stop_cluster({made['name']!r}); report()", via=gw)
