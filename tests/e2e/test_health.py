"""Health that means something (issue 12): /api/health follows slurmctld, and
`slurm-gateway check` passes on the dev cluster and names what an admin broke."""

import json
import math
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import (
    SERVICE_ACCOUNT,
    run,
    start_slurm_daemons,
    stop_slurm_daemon,
    user_jobs,
    wait_until,
)

from harness.processes import command_as

GATEWAY = "/opt/slurm-gateway/venv/bin/slurm-gateway"
SUDO_RULE = Path("/etc/sudoers.d/slurm-gateway")
LOG_ROOT = Path("/var/log/slurm-gateway")
POLL = 3  # the test gateway's slurm_poll_period, seconds
# Time a failing SLURM command takes to say so, on top of the poll period.
COMMAND_SLACK = 10


def health(gw) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{gw.address}/api/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for_health(gw, want: str, timeout: float) -> tuple[float, int, dict]:
    """Seconds until /api/health's status is ``want``, and that answer."""
    start = time.monotonic()
    answer = health(gw)
    while answer[1]["status"] != want and time.monotonic() - start < timeout:
        time.sleep(0.2)
        answer = health(gw)
    return time.monotonic() - start, *answer


def admin_and_public_health(gw, want: str, timeout: float = 40):
    """`slurm-gateway health` (as root) once its output has ``want``, and /api/health then."""
    start = time.monotonic()
    while True:
        admin = run([GATEWAY, "health", "-f", str(gw.config)], timeout=60)
        if want in admin.stdout or time.monotonic() - start > timeout:
            return admin, health(gw)[1]
        time.sleep(0.5)


def test_health_fails_within_a_poll_when_slurmctld_stops_and_passes_when_it_returns(
    make_gateway,
):
    gw = make_gateway(f"c.SlurmBackend.slurm_poll_period = {POLL}\n")
    _, status, before = wait_for_health(gw, "pass", 3 * POLL)
    assert (status, before["status"]) == (200, "pass"), before
    assert set(before["checks"]) == {"slurm", "accounting", "database", "proxy"}
    failed_at = []  # when /api/health first failed, sampled while slurmctld stops

    def sample():
        while not failed_at and time.monotonic() - killed < 60:
            if health(gw)[0] == 503:
                failed_at.append(time.monotonic())
            time.sleep(0.1)

    killed = time.monotonic()
    sampler = threading.Thread(target=sample)
    sampler.start()
    stop_slurm_daemon("slurmctld")  # returns once its process is gone
    stopping = time.monotonic() - killed
    try:
        took, status, during = wait_for_health(gw, "fail", POLL + COMMAND_SLACK + 20)
        admin, public = admin_and_public_health(gw, "FAIL  slurm: slurmctld does not answer")
    finally:
        sampler.join()
        restarting = time.monotonic()
        start_slurm_daemons()  # returns once slurmctld answers
        restarting = time.monotonic() - restarting
    back_took, back_status, after = wait_for_health(gw, "pass", POLL + COMMAND_SLACK + 20)
    first_fail = (failed_at or [math.nan])[0] - killed
    print(
        f"slurmctld took {stopping:.1f} s to exit; health failed {first_fail:.1f} s "
        f"after the SIGTERM ({took:.1f} s after the exit); "
        f"the restart took {restarting:.1f} s, health passed {back_took:.1f} s after it"
    )
    assert status == 503 and during["checks"]["slurm"]["status"] == "fail", during
    assert "slurmctld" in during["checks"]["slurm"]["message"], during
    assert during["checks"]["database"]["status"] == "pass"
    assert during["checks"]["proxy"]["status"] == "pass"
    # What SLURM said is the admin's (slurm-gateway health), never the public body's.
    assert admin.returncode == 1, admin.stdout + admin.stderr
    lines = admin.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("FAIL  slurm: slurmctld"))
    detail = lines[at + 1].partition(" ago: ")[2]
    assert detail.startswith(("squeue", "scontrol")), admin.stdout
    assert detail not in json.dumps(public) and detail[-20:] not in json.dumps(public), public
    assert all(set(check) == {"status", "message"} for check in public["checks"].values())
    assert took <= POLL + COMMAND_SLACK, f"unhealthy only after {took:.1f} s"
    assert (back_status, after["status"]) == (200, "pass"), after
    assert back_took <= POLL + COMMAND_SLACK, f"healthy again only after {back_took:.1f} s"
    log = gw.log.read_text()
    assert "Health: slurm fails" in log and "Health: slurm answers again" in log


def check(gw, *args: str):
    """`slurm-gateway check` as an admin runs it (as root), on the test gateway's config."""
    out = run([GATEWAY, "check", "-f", str(gw.config), *args], timeout=400)
    print(out.stdout, out.stderr)
    lines = {}
    for line in out.stdout.splitlines():
        status, _, rest = line.partition("  ")
        name, _, message = rest.partition(": ")
        if status in ("PASS", "FAIL", "SKIP"):
            lines[name] = (status, message)
    return out.returncode, lines


def test_check_passes_on_the_dev_cluster_and_names_the_broken_part(make_gateway):
    gw = make_gateway("")
    # (Without the subcommand, `slurm-gateway check -f ...` would start a gateway: say so fast.)
    usage = run([GATEWAY, "check", "--help"], timeout=60)
    assert "Check an install of the gateway" in usage.stdout, usage.stdout[-2000:]
    code, found = check(gw, "--user", "alice", "--job-timeout", "120")
    assert code == 0, found
    for name in (
        "config",
        "sudo rule (width)",
        "sudo rule (works)",
        "squeue",
        "sacct",
        "MaxArraySize",
        "log directory",
        "check job",
        "job environment",
        "proxy from a node",
    ):
        assert found.get(name, ("missing",))[0] == "PASS", (name, found)
    assert "dask " in found["job environment"][1]
    assert gw.proxy in found["proxy from a node"][1]
    # As the service account itself (sudo -l of its own privileges), too.
    as_service = run(command_as(SERVICE_ACCOUNT, [GATEWAY, "check", "-f", str(gw.config)]))
    assert as_service.returncode == 0, as_service.stdout + as_service.stderr
    assert "PASS  sudo rule (width)" in as_service.stdout, as_service.stdout

    moved = Path("/etc/slurm-gateway-sudoers.test-moved")
    shutil.move(SUDO_RULE, moved)
    try:
        code, without_rule = check(gw, "--user", "alice")
    finally:
        shutil.move(moved, SUDO_RULE)
    assert code == 1
    assert without_rule["sudo rule (works)"][0] == "FAIL", without_rule
    assert "/etc/sudoers.d/slurm-gateway" in without_rule["sudo rule (works)"][1]
    assert without_rule["sudo rule (width)"][0] == "FAIL"
    assert without_rule["squeue"][0] == "PASS"  # only the broken part is named

    mode = LOG_ROOT.stat().st_mode & 0o7777
    os.chmod(LOG_ROOT, 0o777)
    try:
        code, open_root = check(gw)
    finally:
        os.chmod(LOG_ROOT, mode)
    assert code == 1
    status, message = open_root["log directory"]
    assert status == "FAIL" and "0777" in message and "chmod 1733" in message, message
    assert open_root["sudo rule (width)"][0] == "PASS"
    assert wait_until(lambda: not user_jobs("alice"), 30)
