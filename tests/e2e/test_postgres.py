"""PostgreSQL as the gateway's state database (issue 12): the state really is there, its
secrets encrypted with the gateway's key, the pool bounded, and a database restart costs
the users nothing. The restart and load tests run against PostgreSQL too (their
``postgres`` parameters)."""

import os
import pwd
import re
import socket
import stat

import pytest
from conftest import run

from harness import postgres
from harness.processes import HarnessError, command_as

RUNNING, STOPPED = "3", "5"  # dask-gateway-server's JobStatus values, as stored
DATA = "/var/lib/slurm-gateway-postgres/data"  # scripts/postgres.sh's PG_DATA


def test_the_gateway_keeps_its_state_in_postgresql(as_user, make_gateway):
    gw = make_gateway("", db="postgres")
    name = as_user("alice", "report(name=running_cluster(1))", via=gw)["name"]
    assert re.fullmatch(r"[0-9a-f]{32}", name), name  # safe to put into SQL below

    rows = postgres.query(
        "SELECT c.username, c.status, count(w.id), encode(c.token, 'escape') LIKE 'gAAAAA%'"
        f" FROM clusters c LEFT JOIN workers w ON w.cluster_id = c.id WHERE c.name = '{name}'"
        " GROUP BY c.id",
        gw.database,
    )
    # alice's running cluster and its worker; the API token Fernet-encrypted (db_encrypt_keys).
    assert rows == [["alice", RUNNING, "1", "t"]], rows
    state = gw.workdir / "state"
    assert (state / "encrypt-keys").exists()
    assert not list(state.glob("*.sqlite*")), list(state.iterdir())
    connections = postgres.query(
        f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{gw.database}'"
    )
    assert 1 <= int(connections[0][0]) <= 4, connections  # database.POOL: 2 + 2 overflow

    # The database restarts (a site's maintenance): the gateway goes on, alice notices nothing.
    for command in ("down", "up"):
        out = run(["bash", str(postgres.SCRIPT), command], timeout=120)
        assert out.returncode == 0, out.stderr
    after = as_user(
        "alice",
        f"""
        gateway = Gateway()
        listed = [c.name for c in gateway.list_clusters()]
        cluster = gateway.connect({name!r})
        cluster.scale(2)
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=120)
        total = sum(client.gather(client.map(lambda x: x + 1, range(10))))
        cluster.shutdown()
        report(listed=listed, total=total)
        """,
        via=gw,
    )
    assert after == {"listed": [name], "total": 55}, after
    # Not even a background task met the dead connection (the pool checks before use).
    assert "OperationalError" not in gw.log.read_text()
    stopped = postgres.query(f"SELECT status FROM clusters WHERE name = '{name}'", gw.database)
    assert stopped == [[STOPPED]], stopped


def test_a_database_restored_from_pg_dump_with_its_key_gets_the_clusters_back(
    as_user, make_gateway
):
    gw = make_gateway("", db="postgres")
    name = as_user("alice", "report(name=running_cluster(1))", via=gw)["name"]
    gw.stop()
    backup = postgres.dump(gw.database)

    # The dump without the gateway's key (another gateway's state directory): useless.
    keyless = make_gateway("", db="postgres")
    keyless.stop()
    postgres.restore(keyless.database, backup)
    with pytest.raises(HarnessError):
        keyless.start()
    assert "InvalidToken" in keyless.log.read_text()

    # The database is lost and restored; the key is where it was: alice's cluster is back.
    postgres.restore(gw.database, backup)
    gw.start()
    after = as_user(
        "alice",
        f"""
        cluster = Gateway().connect({name!r})
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=120)
        total = sum(client.gather(client.map(lambda x: x * 2, range(10))))
        cluster.shutdown()
        report(total=total)
        """,
        via=gw,
    )
    assert after == {"total": 90}, after


def test_only_the_service_account_and_postgres_can_even_connect():
    # mallory (any local account) can neither reach the socket nor a TCP port: she cannot
    # hold connections open to exhaust max_connections, nor take the port while it is down.
    postgres.up()
    directory = os.stat(postgres.SOCKET_DIRECTORY)
    assert stat.S_IMODE(directory.st_mode) == 0o2750, oct(directory.st_mode)
    socket_path = f"{postgres.SOCKET_DIRECTORY}/.s.PGSQL.{postgres.PORT}"
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o770
    psql = [postgres.tool("psql"), "-X", "-h", postgres.SOCKET_DIRECTORY]
    psql += ["-p", str(postgres.PORT), "-d", "postgres", "-c", "SELECT 1"]
    for user in ("mallory", "alice"):
        out = run(command_as(user, psql), timeout=60, cwd="/")
        assert out.returncode != 0 and "Permission denied" in out.stderr, (user, out.stderr)
    assert run(command_as("slurmgw", psql), timeout=60, cwd="/").returncode == 0
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.settimeout(5)
        probe.connect(("127.0.0.1", postgres.PORT))
    assert f":{postgres.PORT:04X} " not in listening_tcp(), "something listens on the port"


def test_links_planted_in_the_data_directory_do_not_lead_roots_writes(tmp_path):
    # Whoever runs as postgres (the server, a compromise of it) owns the data directory:
    # links planted there for the files 'up' rewrites must not make root write elsewhere.
    postgres.up()
    victim = tmp_path / "victim"  # root's
    victim.write_text("root's own\n")
    victim.chmod(0o644)
    rewritten = ("slurm-gateway.conf", "pg_hba.conf")
    for name in rewritten:
        planted = run(command_as("postgres", ["ln", "-sfn", str(victim), f"{DATA}/{name}"]))
        assert planted.returncode == 0, planted.stderr
    out = run(["bash", str(postgres.SCRIPT), "up"], timeout=120)
    assert out.returncode == 0, out.stderr
    seen = os.stat(victim)
    assert victim.read_text() == "root's own\n"
    assert (seen.st_uid, stat.S_IMODE(seen.st_mode)) == (0, 0o644)
    for name in rewritten:  # replaced by the files themselves, postgres's, private
        written = os.lstat(f"{DATA}/{name}")
        assert stat.S_ISREG(written.st_mode) and stat.S_IMODE(written.st_mode) == 0o600, name
        assert written.st_uid == pwd.getpwnam("postgres").pw_uid, name
    assert postgres.query("SELECT 1") == [["1"]]


def listening_tcp() -> str:
    """The kernel's listening TCP sockets (IPv4 and IPv6), as /proc/net/tcp* lists them."""
    lines = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            lines += [line for line in f if line.split()[3] == "0A"]  # 0A: LISTEN
    return "".join(lines)
