"""The gateways under test, as the benchmark configures them: ours and the stock
dask-gateway-server SLURM backend, each with workers live or held, their SLURM query
commands counted (scenario 5)."""

from __future__ import annotations

import os
import signal
import textwrap
from collections.abc import Callable
from pathlib import Path

from benchmarks.host import JOB_PYTHON, LAUNCHER, PORTS, log
from harness.gateway import SLURM_COMMANDS, GatewayProcess

# SLURM query commands the gateways run as the service account, through counting wrappers.
COUNTED_COMMANDS = ("squeue", "sacct", "scontrol")
# Scenario 7: SLURM through SSH to the loopback login node of scripts/sshd.sh (the gateway
# process cannot run SLURM's commands itself: BenchGateway hides them).
SSH_CONFIG = textwrap.dedent("""\
    c.SlurmBackend.runner_class = "slurm_gateway.ssh_transport.SSHSudoRunner"
    c.SSHSudoRunner.host = "127.0.0.1"
    c.SSHSudoRunner.port = 18722
    c.SSHSudoRunner.known_hosts = "/var/lib/slurm-gateway/.ssh/known_hosts"
    c.SSHSudoRunner.client_keys = ["/var/lib/slurm-gateway/.ssh/id_ed25519"]
    """)


def ours_config(name: str, workdir: Path, held: bool) -> str:
    port = PORTS[name]
    lines = textwrap.dedent(f"""\
        c = get_config()
        c.SlurmGateway.address = "127.0.0.1:{port + 1}"
        c.Proxy.address = "127.0.0.1:{port}"
        c.SlurmGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
        c.SlurmGateway.allow_simple_authenticator = True  # as the stock one: same client
        c.SlurmBackend.state_directory = "{workdir / "state"}"
        c.SlurmBackend.listen_host = "127.0.0.1"
        c.SlurmBackend.metrics_address = "127.0.0.1:{port + 2}"
        c.SlurmBackend.stop_clusters_on_shutdown = True  # the benchmark leaves nothing
        # The same commands, through wrappers that count calls (scenario 5).
        c.SlurmBackend.squeue = "{workdir / "bin" / "squeue"}"
        c.SlurmBackend.sacct = "{workdir / "bin" / "sacct"}"
        c.SlurmBackend.scontrol = "{workdir / "bin" / "scontrol"}"
        c.SlurmClusterConfig.scheduler_partition = "schedulers"
        c.SlurmClusterConfig.partition = "workers"
        c.SlurmClusterConfig.scheduler_memory = "{"0.4 G" if held else "1 G"}"
        c.SlurmClusterConfig.walltime = "0-01:00:00"
        """)
    if "-ssh" in name:
        lines += SSH_CONFIG
    if held:
        lines += textwrap.dedent("""\
        # Workers stay queued (held): scenarios 2, 4, 5, 6 measure SLURM acceptance,
        # and must not start hundreds of dask workers on this 2-core host.
        c.SlurmClusterConfig.worker_extra_directives = ["--hold"]
        c.SlurmClusterConfig.cluster_max_workers = 2000  # scenario 9
        """)
    return lines


def stock_config(name: str, workdir: Path, hold_wrapper: Path, held: bool) -> str:
    port = PORTS[name]
    lines = textwrap.dedent(f"""\
        # The stock dask-gateway-server SLURM backend, configured as its documentation says.
        from dask_gateway_server.backends.jobqueue.slurm import SlurmBackend

        class LoopbackSlurmBackend(SlurmBackend):
            # The only change to the stock class: schedulers listen on 127.0.0.1 instead of
            # 0.0.0.0 (only loopback carries traffic on the benchmark machines).
            default_host = "127.0.0.1"

        c = get_config()
        c.DaskGateway.backend_class = LoopbackSlurmBackend
        c.DaskGateway.address = "127.0.0.1:{port + 1}"
        c.Proxy.address = "127.0.0.1:{port}"
        c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
        c.SlurmBackend.dask_gateway_jobqueue_launcher = "{LAUNCHER}"
        c.SlurmClusterConfig.scheduler_cmd = [
            "{JOB_PYTHON}", "-m", "distributed.cli.dask_scheduler"
        ]
        c.SlurmClusterConfig.worker_cmd = [
            "{JOB_PYTHON}", "-m", "distributed.cli.dask_worker", "--host", "127.0.0.1"
        ]
        c.SlurmClusterConfig.partition = "workers"
        # squeue through a wrapper that counts calls (scenario 5).
        c.SlurmBackend.status_command = "{workdir / "bin" / "squeue"}"
        c.SlurmClusterConfig.scheduler_cores = 1
        c.SlurmClusterConfig.scheduler_memory = "{"0.4 G" if held else "1 G"}"
        c.SlurmClusterConfig.worker_cores = 1
        c.SlurmClusterConfig.worker_memory = "0.5 G"
        """)
    if held:
        lines += textwrap.dedent(f"""\
        # Worker jobs are submitted held (as ours are), through a wrapper that adds --hold
        # to worker submissions only. Queued workers would time out after the stock 60 s
        # and be resubmitted: allow 600 s (as Purdue raised it) so the RPC count sees a
        # steady state.
        c.SlurmBackend.submit_command = "{hold_wrapper}"
        c.SlurmBackend.worker_start_timeout = 600
        """)
    return lines


def write_hold_wrapper(bin_dir: Path) -> Path:
    """An sbatch that submits the stock backend's worker jobs held (like ours here)."""
    wrapper = bin_dir / "sbatch-hold-workers"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# Submit the stock backend's worker jobs held (like ours in these scenarios).\n"
        'case "$*" in *dask-worker-*) exec /usr/bin/sbatch --hold "$@" ;; esac\n'
        'exec /usr/bin/sbatch "$@"\n'
    )
    os.chmod(wrapper, 0o755)
    return wrapper


class BenchGateway(GatewayProcess):
    """A gateway of the benchmark, ``root/name``, whose SLURM queries are counted."""

    def __init__(self, name: str, server: Path, config: Callable[[Path], str], root: Path):
        workdir, again = root / name, 2
        while workdir.exists():  # the same gateway started again by a later scenario
            workdir, again = root / f"{name}-{again}", again + 1
        super().__init__(workdir, server, f"127.0.0.1:{PORTS[name]}", start_timeout=60)
        self.name = name
        self.bin = self.workdir / "bin"
        self.bin.mkdir(parents=True)
        for command in COUNTED_COMMANDS:
            self._write_counting_wrapper(command)
        self.prepare_workdir()
        self.install_config(config(self.workdir))
        if "-ssh" in name:
            self.hidden = SLURM_COMMANDS

    def _write_counting_wrapper(self, command: str) -> None:
        wrapper = self.bin / command
        wrapper.write_text(
            "#!/bin/sh\n"
            "# Counts the gateway's calls (benchmark scenario 5), then runs the command.\n"
            f"echo x >> {self.workdir}/calls-{command}\n"
            f"printf '%s\\0' \"$@\" > {self.workdir}/last-{command}.args\n"
            f'exec /usr/bin/{command} "$@"\n'
        )
        os.chmod(wrapper, 0o755)

    def calls(self) -> dict[str, int]:
        """How many times the gateway ran each SLURM query command so far."""
        counts = {}
        for command in COUNTED_COMMANDS:
            try:
                counts[command] = len((self.workdir / f"calls-{command}").read_text().split())
            except FileNotFoundError:
                counts[command] = 0
        return counts

    def last_args(self, command: str) -> list[str] | None:
        """The arguments of the gateway's last call of ``command``."""
        try:
            raw = (self.workdir / f"last-{command}.args").read_bytes()
        except FileNotFoundError:
            return None
        return [a.decode() for a in raw.split(b"\0")[:-1]]

    def start(self) -> None:
        log(f"starting gateway {self.name} on {self.proxy}")
        super().start()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.proc is not None and self.proc.poll() is None:
            log(f"stopping gateway {self.name}")
        super().stop(sig, timeout)
