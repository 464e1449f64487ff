"""End-to-end fixtures: the real gateway (as its service account) on the real dev SLURM cluster.

The cluster, users and environments come from ``scripts/test.sh`` (dev-cluster.sh up and
build-envs.sh). Client code runs as the real users alice and bob, in their own processes,
with the unmodified ``dask_gateway`` client and ``Gateway()`` without arguments.

The test gateways authenticate with munge (``MungeAuthenticator``), as a site's login node
would: a user is the uid munge vouches for, never a name the client chose. Only tests that
check what the backend does with names a trusting authenticator passes on, or where one
process speaks for many users (test_load), start a gateway with ``SIMPLE_AUTH``.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest
from slurm_gateway_client import make_payload

from harness import postgres
from harness.gateway import (
    SERVICE_ACCOUNT,
    SLURM_COMMANDS,
    GatewayProcess,
    proxy_token_credentials,
)
from harness.processes import RUNUSER, command_as, run, start_as, stop, user_environment, wait_until
from harness.slurm import slurm_now, submitted_since, user_jobs

# Names the test modules import from here, besides the fixtures.
__all__ = [
    "CLIENT_PRELUDE",
    "ERROR_OF",
    "PYTHON",
    "REPO",
    "RUNUSER",
    "SERVICE_ACCOUNT",
    "SIMPLE_AUTH",
    "SSH_LOGIN_NODE",
    "START_TIMEOUT",
    "TRANSPORTS",
    "USERS",
    "Gateway",
    "assert_refused",
    "assert_still_running",
    "depot",
    "gateway_through",
    "jobs_of",
    "munge_credential",
    "run",
    "ssh_gateway",
    "slurm_now",
    "start_slurm_daemons",
    "stop_slurm_daemon",
    "submitted_since",
    "user_jobs",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]
PREFIX = Path("/opt/slurm-gateway")
PYTHON = str(PREFIX / "venv" / "bin" / "python")
GATEWAY = str(PREFIX / "venv" / "bin" / "slurm-gateway")
USERS = ("alice", "bob")
START_TIMEOUT = 25  # the scheduler start timeout of the test gateway, seconds
# Extra config (make_gateway) for the few tests that need an authenticator trusting whatever
# name the client sends: dask-gateway's SimpleAuthenticator. Never a site's; say why it is used.
# One line, so that it can be placed in an indented config block (test_load).
SIMPLE_AUTH = (
    'c.SlurmGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"; '
    "c.SlurmGateway.allow_simple_authenticator = True\n"
)
# The state database of a test gateway that does not choose: "sqlite" (a file in its state
# directory) or "postgres" (a fresh database of scripts/postgres.sh's instance, its own).
TEST_DB = os.environ.get("SLURM_GATEWAY_TEST_DB", "sqlite")

# The transport of the test gateways (Gateway(transport=...) overrides it): "sudo" (local
# sudo, the default) or "ssh": SSHSudoRunner to the loopback sshd of scripts/sshd.sh, the
# gateway process not seeing SLURM's commands at all (SLURM_COMMANDS hidden), so that
# `SLURM_GATEWAY_TEST_TRANSPORT=ssh scripts/test.sh tests/e2e/...` runs tests through SSH.
TRANSPORT = os.environ.get("SLURM_GATEWAY_TEST_TRANSPORT", "sudo")
SSH_LOGIN_NODE = ("127.0.0.1", 18722)  # scripts/sshd.sh's port
SSH_DIR = "/var/lib/slurm-gateway/.ssh"  # the service account's key and known_hosts (sshd.sh)
SSH_CONFIG = f"""
c.SlurmBackend.runner_class = "slurm_gateway.ssh_transport.SSHSudoRunner"
c.SSHSudoRunner.host = "{SSH_LOGIN_NODE[0]}"
c.SSHSudoRunner.port = {SSH_LOGIN_NODE[1]}
c.SSHSudoRunner.known_hosts = "{SSH_DIR}/known_hosts"
c.SSHSudoRunner.client_keys = ["{SSH_DIR}/id_ed25519"]
"""


def jobs_of(cluster_name: str, role: str, user: str = "alice") -> list[str]:
    """Ids of a cluster's active scheduler or worker jobs that have started. Nothing SLURM
    shows names the cluster, so root finds its log directory (whose file CLUSTER holds the
    name) and the jobs that log there (``worker-123_4.log``)."""
    out = run(["squeue", "--noheader", "--array", f"--user={user}", "--format=%i"])
    active = set(out.stdout.split())
    found = []
    for named in Path(f"/var/log/slurm-gateway/{user}").glob("*/CLUSTER"):
        if named.read_text().strip() == cluster_name:
            for log in sorted(named.parent.glob(f"{role}-*.log")):
                job_id = log.name[len(role) + 1 : -len(".log")]
                if job_id in active:
                    found.append(job_id)
    return found


def munge_credential(
    user: str, audience: str, restrict_to: str | None = SERVICE_ACCOUNT, ttl: int = 60
) -> str:
    """A munge credential made by ``user`` (``munge`` run as the user), with the payload of
    ``slurm_gateway_client.MungeAuth``: bound to the gateway origin ``audience``
    (``scheme://host:port``) and this moment, restricted to the account ``restrict_to``
    (None: unrestricted), living ``ttl`` seconds. Send it as ``Authorization: Munge ...``."""
    argv = ["munge", f"--ttl={ttl}"]
    if restrict_to is not None:
        argv.append(f"--restrict-uid={pwd.getpwnam(restrict_to).pw_uid}")
    out = run(
        command_as(user, argv),
        input=make_payload(audience).decode(),
        env=user_environment(user),
        cwd="/",
    )
    assert out.returncode == 0 and out.stdout.startswith("MUNGE:"), out.stderr
    return out.stdout.strip()


def stop_slurm_daemon(name: str):
    """Stop one daemon of the dev cluster (slurmctld, slurmdbd) started by dev-cluster.sh."""
    pid = int(open(f"/run/slurm-gateway-dev/{name}.pid").read())
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30)


def start_slurm_daemons():
    out = run(["bash", str(REPO / "scripts" / "dev-cluster.sh"), "up"])
    assert out.returncode == 0, out.stderr[-2000:]


class Gateway(GatewayProcess):
    """The gateway process under test."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        extra_config: str = "",
        external_proxy: bool = False,
        transport: str | None = None,
        db: str | None = None,
        proxy_account: tuple[str, str] = (SERVICE_ACCOUNT, SERVICE_ACCOUNT),
        proxy_token_credential: bool = False,
    ):
        super().__init__(workdir, GATEWAY, f"127.0.0.1:{port}")
        self.transport = transport or TRANSPORT
        assert self.transport in ("sudo", "ssh"), self.transport
        self.db = db or TEST_DB
        assert self.db in ("sqlite", "postgres"), self.db
        # Made fresh here, once: it outlives the gateway's restarts, as a site's does.
        self.database = f"slurm_gateway_test_{port}" if self.db == "postgres" else None
        self.db_url = postgres.fresh_database(self.database) if self.database else None
        self.api = f"127.0.0.1:{port + 1}"
        self.metrics = f"127.0.0.1:{port + 2}"  # /metrics (its own address)
        self.extra_config = textwrap.dedent(extra_config)
        self.client_config = workdir / "dask"
        # The production layout: the proxy as a service of its own (`slurm-gateway proxy`),
        # so that a gateway restart does not cut users' connections.
        self.external_proxy = external_proxy
        self.proxy_log = workdir / "proxy.log"
        self.proxy_proc = None
        # The external proxy's account and group (deploy/slurm-gateway-proxy.service: its
        # own account, group slurmgw); its environment.
        self.proxy_account = proxy_account
        self.proxy_env: dict[str, str] = {}
        if proxy_token_credential:
            directories = proxy_token_credentials(workdir, (SERVICE_ACCOUNT, proxy_account[0]))
            self.env["CREDENTIALS_DIRECTORY"] = directories[SERVICE_ACCOUNT]
            self.proxy_env["CREDENTIALS_DIRECTORY"] = directories[proxy_account[0]]

    def write_config(self):
        self.install_config(
            textwrap.dedent(f"""
            c = get_config()
            c.SlurmGateway.address = "{self.api}"
            c.Proxy.address = "{self.proxy}"
            c.SlurmBackend.state_directory = "{self.workdir / "state"}"
            c.SlurmBackend.listen_host = "127.0.0.1"
            c.SlurmBackend.slurm_poll_period = 1
            c.SlurmBackend.metrics_address = "{self.metrics}"
            c.SlurmBackend.cluster_start_timeout = {START_TIMEOUT}
            c.SlurmBackend.allowed_group = "dask-users"
            c.SlurmClusterConfig.scheduler_partition = "schedulers"
            c.SlurmClusterConfig.partition = "workers"
            c.SlurmClusterConfig.scheduler_memory = "1 G"
            c.SlurmClusterConfig.walltime = "0-01:00:00"
            c.Proxy.externally_managed = {self.external_proxy}
            # Users are who munge says they are: credentials restricted to the service
            # account and bound to the proxy's origin (plain http: loopback only).
            c.SlurmGateway.authenticator_class = "slurm_gateway.munge_auth.MungeAuthenticator"
            c.MungeAuthenticator.service_account = "{SERVICE_ACCOUNT}"
            c.MungeAuthenticator.audiences = ["{self.address}"]
            """)
            + (SSH_CONFIG if self.transport == "ssh" else "")
            + (f'c.SlurmBackend.db_url = "{self.db_url}"\n' if self.db_url else "")
            + self.extra_config
        )

    def start(self):
        if self.transport == "ssh":
            out = run(["bash", str(REPO / "scripts" / "sshd.sh"), "up"])
            assert out.returncode == 0, out.stderr[-2000:]
            self.hidden = SLURM_COMMANDS
        self.write_config()
        self.client_config.mkdir(exist_ok=True)
        self.prepare_workdir()
        os.chmod(self.client_config, 0o755)
        out = run(command_as(SERVICE_ACCOUNT, [GATEWAY, "client-config", "-f", str(self.config)]))
        # (client-config warns if the address it prints is not one of the munge audiences)
        assert out.returncode == 0 and "warning:" not in out.stderr, out.stderr
        (self.client_config / "gateway.yaml").write_text(out.stdout)
        os.chmod(self.client_config / "gateway.yaml", 0o644)
        if self.external_proxy and (self.proxy_proc is None or self.proxy_proc.poll() is not None):
            account, group = self.proxy_account
            self.proxy_proc = start_as(
                account,
                [GATEWAY, "proxy", "-f", str(self.config)],
                self.proxy_log,
                group=group,
                env=self.proxy_env,
            )
        super().start()

    def close(self):
        """Stop the gateway and its external proxy."""
        self.stop()
        stop(self.proxy_proc)
        if self.database:
            postgres.drop_database(self.database)


@pytest.fixture(scope="session")
def gateway():
    assert run(["sinfo"]).returncode == 0, "no SLURM cluster: run scripts/test.sh"
    gw = Gateway(Path(tempfile.mkdtemp(prefix="slurm-gateway-test-")), 18000)
    gw.start()
    yield gw
    gw.close()
    leftover = user_jobs(*USERS)
    assert not leftover, f"orphan SLURM jobs after the tests: {leftover}"


@pytest.fixture
def make_gateway(gateway):
    """Start another gateway with extra admin config lines; it is stopped after the test."""
    started = []

    def _make(
        extra_config: str,
        external_proxy: bool = False,
        transport: str | None = None,
        db: str | None = None,
        **proxy,
    ) -> Gateway:
        gw = Gateway(
            Path(tempfile.mkdtemp(prefix="slurm-gateway-test-")),
            18100 + 10 * len(started),
            extra_config,
            external_proxy,
            transport,
            db,
            **proxy,
        )
        started.append(gw)
        gw.start()
        return gw

    yield _make
    for gw in started:
        gw.close()


# Parametrizes a test with ``transport``: "sudo", the suite's transport (local sudo unless
# SLURM_GATEWAY_TEST_TRANSPORT says otherwise), and "ssh", SSH only (ssh_gateway).
TRANSPORTS = pytest.mark.parametrize("transport", ["sudo", "ssh"])


def ssh_gateway(make_gateway, extra_config: str = "", **kwargs) -> Gateway:
    """A new gateway (make_gateway) reaching SLURM through SSH only: it cannot run sbatch
    itself (SLURM's commands are /dev/null in its mount namespace)."""
    gw = make_gateway(extra_config, transport="ssh", **kwargs)
    sbatch_there = os.stat(f"/proc/{gw.proc.pid}/root/usr/bin/sbatch")
    assert stat.S_ISCHR(sbatch_there.st_mode), "the gateway could run sbatch itself"
    return gw


def gateway_through(transport: str, make_gateway, extra_config: str = "", **kwargs) -> Gateway:
    """A new gateway (make_gateway) for a test parametrized with TRANSPORTS."""
    if transport == "ssh":
        return ssh_gateway(make_gateway, extra_config, **kwargs)
    return make_gateway(extra_config, **kwargs)


@pytest.fixture(autouse=True)
def no_orphan_jobs(request):
    """Every end-to-end test leaves no job of alice or bob queued or running.

    Leftovers fail the test that left them, and are cancelled so the next test starts clean.
    """
    yield
    if "gateway" in request.fixturenames:
        if not wait_until(lambda: not user_jobs(*USERS), 30):
            leftover = user_jobs(*USERS)
            run(["scancel", *(line.split()[0] for line in leftover)])
            pytest.fail(f"jobs left behind: {leftover}")


@pytest.fixture
def as_user(gateway):
    """Run Python code as a real user with the stock client; returns its JSON result."""

    def _run(
        user: str,
        code: str,
        timeout: float = 240,
        env: dict | None = None,
        via: Gateway | None = None,
    ) -> dict:
        via = via or gateway
        directory = Path(tempfile.mkdtemp(prefix="slurm-gateway-client-"))
        os.chmod(directory, 0o755)
        script = directory / "client.py"
        script.write_text(CLIENT_PRELUDE + textwrap.dedent(code))
        os.chmod(script, 0o644)
        environment = user_environment(
            user,
            DASK_CONFIG=str(via.client_config),
            CLIENT_STACKS_AFTER=str(timeout - 10),
            **(env or {}),
        )
        out = subprocess.run(
            command_as(user, [PYTHON, str(script)]),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
            cwd=environment["HOME"],
        )
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            raise AssertionError(
                f"client as {user} exited {out.returncode}\nstdout:\n{out.stdout}\n"
                f"stderr:\n{out.stderr[-4000:]}\ngateway log:\n{via.log_tail()}"
            )
        return json.loads(lines[-1])

    return _run


def assert_refused(findings: dict, actions: tuple[str, ...]) -> None:
    """Each of ``actions`` (keys of a client's findings, made with ``error_of``) was
    refused: the cluster belongs to another user."""
    for action in actions:
        assert findings[action] is not None, f"could {action} another user's cluster"
        error = findings[action]
        assert "403" in error or "lacks permissions" in error, error


def assert_still_running(as_user, user: str, name: str) -> None:
    """``user`` still sees the cluster ``name`` RUNNING (another user's attempts left it be)."""
    after = as_user(
        user,
        f"""
        gateway = Gateway()
        report(status=[c.status.name for c in gateway.list_clusters() if c.name == {name!r}])
        """,
    )
    assert after["status"] == ["RUNNING"], after


# Every client script prints one JSON line at the end with its findings.
CLIENT_PRELUDE = """\
import faulthandler, gc, json, os, sys, time
from dask_gateway import Gateway, GatewayClusterError

# A client that hangs prints where, and exits, before the test gives up on it.
faulthandler.dump_traceback_later(float(os.environ["CLIENT_STACKS_AFTER"]), exit=True)

def report(**findings):
    print(json.dumps(findings), flush=True)

def running_cluster(workers):
    # A cluster that outlives this client, its workers connected; returns its name.
    cluster = Gateway().new_cluster(shutdown_on_close=False, worker_memory=1)
    cluster.scale(workers)
    cluster.get_client().wait_for_workers(workers, timeout=120)
    return cluster.name

"""

# error_of(call, *args): the error ``call`` raised ("Type: message"), or None. Also for code
# that runs elsewhere (a notebook's kernel); needs ``import gc``.
ERROR_OF = """\
def error_of(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        # A failed connect leaves a half-made GatewayCluster whose Gateway, if the cyclic GC
        # finalizes it later on the client's IO-loop thread, deadlocks the stock client
        # (dask_gateway 2026.3.0). Collect it now, on this thread.
        gc.collect()
    return None
"""
CLIENT_PRELUDE += ERROR_OF


DEPOT = Path("/depot")


def depot(user: str, *parts: str) -> Path:
    """``/depot/USER[/PARTS...]``: the user's own directories on the shared storage (/depot),
    like Purdue's, made by whichever test needs them first.

    Idempotent, and repairs what an earlier run left: /depot is root's (0755), and
    /depot/USER and each of PARTS are owned by the user (0755), so that the user can create
    environments there even if root made the directory first.
    """
    DEPOT.mkdir(mode=0o755, exist_ok=True)
    os.chown(DEPOT, 0, 0)
    DEPOT.chmod(0o755)
    account = pwd.getpwnam(user)
    path = DEPOT
    for name in (user, *parts):
        path = path / name
        path.mkdir(mode=0o755, exist_ok=True)
        os.chown(path, account.pw_uid, account.pw_gid)
        path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def alice_env():
    """A conda-style prefix of alice's own on shared storage (/depot), like Purdue's.

    It is a venv (own python, sys.prefix is the prefix) with conda-meta/ and an activate.d
    script, and reuses the default environment's packages through a .pth file.
    """
    prefix = depot("alice", "envs") / "analysis"
    if not (prefix / "bin" / "python").exists():
        shutil.rmtree(prefix, ignore_errors=True)  # half made by an interrupted run
        out = run(
            command_as("alice", ["/usr/bin/python3", "-m", "venv", "--without-pip", str(prefix)])
        )
        assert out.returncode == 0, out.stderr
        default_site = next((PREFIX / "envs" / "default" / "lib").glob("python3*/site-packages"))
        site = next((prefix / "lib").glob("python3*/site-packages"))
        (site / "default-env.pth").write_text(f"{default_site}\n")
        (prefix / "conda-meta").mkdir()
        (prefix / "conda-meta" / "history").write_text("")
        activate_d = prefix / "etc" / "conda" / "activate.d"
        activate_d.mkdir(parents=True)
        (activate_d / "analysis.sh").write_text("export ANALYSIS_ACTIVATED=yes\n")
        run(["chown", "-R", "alice:alice", str(prefix)])
    return str(prefix)
