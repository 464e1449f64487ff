"""Load: 20 users, each asking for 3 clusters at once with a limit of 2, three rounds (issue 5).

Every request goes through the HTTP API with the stock client (its asynchronous API, one
``Gateway`` per user). The client process is alice's; each request names its load user,
which this test's gateway trusts: it is started with SimpleAuthenticator on purpose (every
other test gateway uses munge, where a process can only be its own uid), so that one process
can send all 20 users' requests at once. The jobs run as the load users.
"""

import pytest
from conftest import SIMPLE_AUTH, run, wait_until

LOAD_USERS = [f"load{i:02d}" for i in range(1, 21)]
ROUNDS = 3
LIMIT = 2

LOAD_CLIENT = f"""
import asyncio
from dask_gateway.auth import BasicAuth

USERS = {LOAD_USERS!r}


async def worker_jobs():
    # (Nothing SLURM shows names a cluster: the worker jobs of the load users are counted.)
    proc = await asyncio.create_subprocess_exec(
        "squeue", "--noheader", "--name=dask-gateway-worker", "--format=%i",
        "--user=" + ",".join(USERS), stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return len(out.decode().split())


async def one_round():
    gateways = [Gateway(auth=BasicAuth(user), asynchronous=True) for user in USERS]
    try:
        attempts = [
            g.new_cluster(worker_memory=0.25) for g in gateways for _ in range({LIMIT + 1})
        ]
        outcomes = await asyncio.gather(*attempts, return_exceptions=True)
        clusters = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [f"{{type(o).__name__}}: {{o}}" for o in outcomes if isinstance(o, BaseException)]
        await asyncio.gather(*(c.scale(1) for c in clusters))
        deadline = time.time() + 120
        while await worker_jobs() < len(clusters) and time.time() < deadline:
            await asyncio.sleep(1)
        scaled = await worker_jobs()
        await asyncio.gather(*(c.shutdown() for c in clusters))
        listed = sum([len(await g.list_clusters()) for g in gateways])
        return dict(started=len(clusters), refused=refused, scaled=scaled, listed_after=listed)
    finally:
        for g in gateways:
            await g.close()


report(**asyncio.run(one_round()))
"""


@pytest.fixture(scope="module")
def load_users():
    for user in LOAD_USERS:
        if run(["id", "-u", user]).returncode != 0:
            out = run(["useradd", "--create-home", "--groups", "dask-users", user])
            assert out.returncode == 0, out.stderr
    return LOAD_USERS


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _load_jobs() -> list[str]:
    out = run(["squeue", "--noheader", "--user=" + ",".join(LOAD_USERS), "--format=%i %u %T"])
    return out.stdout.split("\n")[:-1]


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_twenty_users_two_clusters_each_three_rounds(as_user, make_gateway, load_users, db):
    gw = make_gateway(
        f"""
        # One process sends the requests of 20 users (module docstring): names it may choose.
        {SIMPLE_AUTH}
        c.SlurmBackend.max_clusters_per_user = {LIMIT}
        c.SlurmBackend.cluster_start_timeout = 240
        c.SlurmBackend.worker_start_timeout = 240
        c.SlurmBackend.slurm_poll_period = 2
        c.SlurmClusterConfig.scheduler_partition = "workers"
        c.SlurmClusterConfig.scheduler_memory = "400 M"
        """,
        db=db,
    )
    rss = []
    try:
        for _ in range(ROUNDS):
            result = as_user("alice", LOAD_CLIENT, timeout=420, via=gw)
            assert result["started"] == len(LOAD_USERS) * LIMIT, result
            assert len(result["refused"]) == len(LOAD_USERS), result
            assert all(f"limit per user is {LIMIT}" in r for r in result["refused"]), result
            assert result["scaled"] == len(LOAD_USERS) * LIMIT, result
            assert result["listed_after"] == 0, result
            assert wait_until(lambda: not _load_jobs(), 60), _load_jobs()
            rss.append(_rss_kib(gw.proc.pid))
    finally:
        gw.close()  # a failed round may leave the gateway submitting: stop it first
        leftover = _load_jobs()
        if leftover:
            run(["scancel", *(line.split()[0] for line in leftover)])
    print(f"gateway RSS after each round (KiB): {rss}")
    assert not leftover, leftover
    # Flat: the later rounds cost no more memory than the first (allowing 10 MiB of noise).
    assert max(rss) - rss[0] < 10 * 1024, rss
