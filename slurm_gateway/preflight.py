"""``slurm-gateway check``: the admin's preflight of an install, each check printing PASS or
FAIL with what to fix (the decisions are in :mod:`slurm_gateway.preflight_rules`).

Run as root or as the service account. As root, it drops to the service account first, so
that sudo, SLURM and the files are seen exactly as the gateway sees them; the account's sudo
privileges are its own ``sudo -n -l`` through the gateway's command runner, so that with the
SSH transport they are the login node's, where the rule is used. With ``--user NAME`` it
also runs, as that user through the gateway's own command runner, the helper and one tiny
real job (scheduler-sized, in the scheduler partition) that imports dask from the default
job environment and connects to the proxy; the job is waited for at most ``--job-timeout``
seconds, and cancelled if it has not ended by then.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import time
from urllib.parse import urlsplit

from dask_gateway_server import __version__ as dask_gateway_server_version
from dask_gateway_server.proxy import Proxy
from dask_gateway_server.traitlets import Application
from traitlets import Float, Unicode

from . import __version__
from .as_user import AsUser, UserError
from .backend import SlurmBackend
from .cli import DEFAULT_CONFIG
from .identity import user_problem
from .jobspec import user_log_directory
from .preflight_rules import (
    FAIL,
    NO_RULE,
    PASS,
    SKIP,
    Outcome,
    array_size_outcome,
    check_job_script,
    documented_commands,
    exit_code,
    job_outcomes,
    job_report,
    log_root,
    log_root_problem,
    sudo_rule_problems,
)
from .slurm import (
    parse_max_array_size,
    parse_sbatch_output,
    parse_squeue,
    sacct_command,
    sbatch_command,
    scancel_command,
    squeue_command,
)

SUDO_FIX = (
    "install deploy/sudoers as /etc/sudoers.d/slurm-gateway (root:root 0440, README "
    '"The sudo rule") and make the user a member of allowed_group'
)


async def sudo_width(account: str, backend, runner) -> Outcome:
    """The service account's sudo privileges (its ``sudo -n -l`` where the runner runs
    commands: here, or the login node) against the documented rule."""
    listed = await runner.run([runner.sudo, "-n", "-l"])
    name = "sudo rule (width)"
    if not listed.ok:
        return Outcome(
            name, FAIL, f"sudo -l for {account} fails: {listed.summary()[:300]}; {SUDO_FIX}"
        )
    listing = listed.stdout
    documented = documented_commands(backend.sbatch, backend.scancel, backend.user_helper)
    problems = sudo_rule_problems(listing, documented)
    if problems == [NO_RULE]:
        return Outcome(name, FAIL, f"{account} may run nothing through sudo; {SUDO_FIX}")
    if problems:
        return Outcome(
            name, FAIL, f"{account}'s sudo privileges are wider than documented: "
            + "; ".join(problems) + f"; remove the other rules and {SUDO_FIX}",
        )  # fmt: skip
    return Outcome(name, PASS, f"{account} may run exactly the documented commands, never as root")


def become(account: str) -> None:
    """Drop from root to the service account (groups included) for good, with its home:
    what reads ``~`` (the SSH transport's keys and known hosts) reads the account's."""
    entry = pwd.getpwnam(account)
    os.initgroups(account, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ.update(HOME=entry.pw_dir, USER=account, LOGNAME=account)


def proxy_address(backend) -> tuple[str, int]:
    """Where schedulers reach the gateway: the host and port of its ``api_url``."""
    url = urlsplit(backend.api_url)
    return url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)


async def slurm_outcomes(backend, runner) -> list[Outcome]:
    """squeue, sacct and scontrol answer the service account; MaxArraySize."""
    account = pwd.getpwuid(os.getuid()).pw_name
    queue = await runner.run([backend.squeue, "--noheader", "--format=%i", f"--user={account}"])
    accounting = await runner.run(sacct_command(["1"], backend.sacct))
    config = await runner.run([backend.scontrol, "show", "config"])
    fix = "is slurmctld up, and this host a SLURM client (slurm.conf, munge)?"
    outcomes = [
        Outcome("squeue", PASS, "slurmctld answers")
        if queue.ok
        else Outcome("squeue", FAIL, f"{queue.summary()}; {fix}"),
        Outcome("sacct", PASS, "accounting (slurmdbd) answers")
        if accounting.ok
        else Outcome("sacct", FAIL, f"{accounting.summary()}; is slurmdbd up?"),
    ]
    if not config.ok:
        outcomes.append(Outcome("MaxArraySize", FAIL, f"{config.summary()}; {fix}"))
    else:
        slurm_max = parse_max_array_size(config.stdout)
        outcomes.append(
            array_size_outcome(slurm_max, backend.use_job_arrays, backend.max_array_size)
        )
    return outcomes


def log_root_outcome(template: str) -> Outcome:
    root, users_create = log_root(template)
    try:
        info = os.stat(root)
    except OSError as exc:
        return Outcome("log directory", FAIL, f"{root}: {exc.strerror}; install -d -m 1733 {root}")
    problem = log_root_problem(root, info.st_mode, info.st_uid, users_create)
    if problem:
        return Outcome("log directory", FAIL, problem)
    return Outcome("log directory", PASS, f"{root} is root-owned, mode {info.st_mode & 0o7777:04o}")


class Preflight:
    """The checks run as a test user: the gateway's own parts, built from the config."""

    def __init__(self, backend, runner, cluster_config, user: str, job_timeout: float):
        self.backend, self.runner, self.config = backend, runner, cluster_config
        self.user, self.job_timeout = user, job_timeout
        self.as_user = AsUser(runner, backend.user_helper, max_log_bytes=backend.max_log_bytes)

    async def outcomes(self) -> list[Outcome]:
        """As the user: the helper through sudo (the rule works), then the check job."""
        backend, user = self.backend, self.user
        problem = user_problem(user, backend.make_user_policy(), service_uid=os.getuid())
        if problem:
            return [Outcome("test user", FAIL, f"{user} may not start clusters: {problem}")]
        conda_env = self.config.conda_env
        try:
            await self.as_user.check_environment(
                user, conda_env, dask_gateway_server_version, backend.env_check_timeout
            )
            here = Outcome("job environment (here)", PASS, f"{conda_env} is usable by {user}")
        except UserError as exc:
            if "could not env-check" in str(exc):
                why = f"{backend.user_helper} as {user} fails: {exc}; {SUDO_FIX}"
                return [Outcome("sudo rule (works)", FAIL, why)]
            here = Outcome("job environment (here)", FAIL, str(exc))
        works = Outcome("sudo rule (works)", PASS, f"the helper runs as {user}, no password")
        return [works, here, *await self.job_outcomes()]

    async def job_outcomes(self) -> list[Outcome]:
        """Submit the check job as the user, wait for it (bounded), read its report back."""
        user, backend = self.user, self.backend
        directory = user_log_directory(self.config.log_directory, user)
        subdirectory = f"check-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
        output = f"{directory}/{subdirectory}/check.log"
        host, port = proxy_address(backend)
        try:
            await self.as_user.prepare_log_directory(user, directory, subdirectory, "check")
        except UserError as exc:
            return [Outcome("check job", FAIL, f"{directory} as {user}: {exc}")]
        script = check_job_script(self.config, output, self.config.conda_env, (host, port))
        sbatch = sbatch_command(backend.sbatch)
        submitted = await self.runner.run(sbatch, user=user, stdin=script.encode())
        if not submitted.ok:
            return [Outcome("check job", FAIL, f"sbatch as {user}: {submitted.summary()}")]
        job_id = parse_sbatch_output(submitted.stdout)
        state = await self.wait_for(job_id)
        if state is not None:
            await self.runner.run(scancel_command([job_id], backend.scancel), user=user)
            why = (
                f"job {job_id} did not end within {self.job_timeout:g} s ({state}; cancelled):"
                " does the partition have free nodes? (--job-timeout waits longer)"
            )
            return [Outcome("check job", FAIL, why)]
        tail = await self.runner.run([backend.user_helper, "log-tail", output], user=user)
        lines = helper_lines(tail.stdout)
        ran = Outcome("check job", PASS, f"job {job_id} ran as {user}; its log is {output}")
        version = dask_gateway_server_version
        env = self.config.conda_env
        return [ran, *job_outcomes(job_report(lines), lines, env, version, f"{host}:{port}")]

    async def wait_for(self, job_id: str) -> str | None:
        """None once the job has ended; its last state if it has not within the timeout."""
        deadline = time.monotonic() + self.job_timeout
        state = "not seen in squeue"
        while time.monotonic() < deadline:
            result = await self.runner.run(squeue_command([job_id], self.backend.squeue))
            info = parse_squeue(result.stdout).get(job_id) if result.ok else None
            if result.ok and (info is None or info.is_terminal):
                return None
            if info is not None:
                state = f"{info.state}, {info.reason}" if info.reason else info.state
            await asyncio.sleep(2)
        return state


def helper_lines(helper_stdout: str) -> list[str]:
    """The lines of the helper's ``log-tail`` answer."""
    try:
        answer = json.loads(helper_stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return []
    lines = answer.get("lines") if isinstance(answer, dict) else None
    return [str(line) for line in lines] if isinstance(lines, list) else []


class CheckCommand(Application):
    """Check an install: config, sudo rule, SLURM, log directory, a real job (as root or
    the service account)."""

    name = "slurm-gateway check"
    version = __version__
    description = """Check an install of the gateway, printing PASS or FAIL and what to fix
    for each part: the config loads; the sudo rule works for a test user and is no wider than
    documented; squeue, sacct and scontrol answer; MaxArraySize; the log directory's
    permissions; and, with --user, a tiny real job as that user imports dask from the default
    job environment on a compute node and connects to the proxy. Run it as root or as the
    service account (root drops to the service account first; through SSH, the sudo rule
    checked is the login node's).
    Exits 1 when any check fails."""
    examples = "slurm-gateway check -f /etc/slurm-gateway/config.py --user alice"

    config_file = Unicode(DEFAULT_CONFIG, help="The gateway config file to read.", config=True)
    user = Unicode(
        "",
        help="A user allowed to run clusters, as whom the sudo rule and the check job are "
        "tried (empty: those checks are skipped).",
        config=True,
    )
    service_account = Unicode(
        "slurmgw", help="The account the gateway runs as (root switches to it).", config=True
    )
    job_timeout = Float(
        300, help="Seconds to wait for the check job to end before cancelling it.", config=True
    )
    aliases = {
        "f": "CheckCommand.config_file",
        "config": "CheckCommand.config_file",
        "user": "CheckCommand.user",
        "service-account": "CheckCommand.service_account",
        "job-timeout": "CheckCommand.job_timeout",
    }

    def start(self) -> None:
        outcomes = asyncio.run(self.run_checks())
        for outcome in outcomes:
            print(outcome.line(), flush=True)
        failed = [o.name for o in outcomes if o.status == FAIL]
        print(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "All passed")
        self.exit(exit_code(outcomes))

    def load(self):
        """The backend, its runner and cluster config, from the config file."""
        if not os.access(self.config_file, os.R_OK):
            raise ValueError(f"cannot read {self.config_file} (run as root or the service account)")
        self.load_config_file(self.config_file)
        backend = SlurmBackend(config=self.config, log=self.log)
        backend.proxy = Proxy(parent=backend, log=self.log)  # what api_url derives from
        runner = backend.runner_class(parent=backend, log=self.log)
        return backend, runner, backend.cluster_config_class(parent=backend)

    async def run_checks(self) -> list[Outcome]:
        try:
            backend, runner, cluster_config = self.load()
        except Exception as exc:
            return [Outcome("config", FAIL, f"{self.config_file}: {exc!r}"[:800])]
        outcomes = [Outcome("config", PASS, f"{self.config_file} loads")]
        if os.getuid() == 0:
            become(self.service_account)
        elif pwd.getpwuid(os.getuid()).pw_name != self.service_account:
            why = f"run as root or {self.service_account}, not {pwd.getpwuid(os.getuid()).pw_name}"
            outcomes.append(Outcome("account", FAIL, why))
        outcomes.append(await sudo_width(self.service_account, backend, runner))
        outcomes += await slurm_outcomes(backend, runner)
        outcomes.append(log_root_outcome(cluster_config.log_directory))
        if not self.user:
            skip = "give --user NAME to try the sudo rule, the job environment and the proxy"
            return [*outcomes, Outcome("as a user", SKIP, skip)]
        preflight = Preflight(backend, runner, cluster_config, self.user, self.job_timeout)
        return outcomes + await preflight.outcomes()
