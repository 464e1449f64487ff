"""Jobs report their own end (issue 13): a scheduler or worker killed from outside is known
within seconds, with SLURM's facts; a report only concerns its own cluster's jobs; what
cannot report (SIGKILL) is caught by the safety sweep, or sooner by the heartbeats: a
scheduler whose heartbeat is overdue, a running worker its scheduler no longer lists."""

import glob
import os
import signal
import time
from pathlib import Path

from conftest import jobs_of, run, wait_until

# Seconds within which a reported end must be acted on (the acceptance says 2 s for the
# median; one test run on a busy 2-core machine gets some slack).
PROMPT = 5.0
# Seconds a job has run before it is killed: past the follow-ups of its submission
# (poll_plan.FOLLOW_UPS, the last at 7 s), which would otherwise catch its end by chance.
AGE = 10.0

STATUS_AND_ERROR = """
gateway = Gateway()
deadline = time.monotonic() + {wait}
while time.monotonic() < deadline:
    status = gateway.get_cluster({name!r}).status.name
    if status in ("FAILED", "STOPPED"):
        break
    time.sleep(0.1)
report(status=status, seen_at=time.time(), error=error_of(gateway.connect, {name!r}))
"""


def _scancel(job_id: str) -> None:
    assert run(["scancel", job_id]).returncode == 0


def _sigkill_everything(job_id: str) -> None:
    """SIGKILL to every process of the job's script on its node (this host), as the OOM
    killer or a lost node would: frozen first (the cgroup v1 freezer SLURM made for the
    step), so that none of them can run an exit trap before all of them are killed."""
    if "_" in job_id:  # an array task: its cgroup is named by the task's own job id
        job_id = run(["squeue", "--noheader", "--format=%A", "--jobs", job_id]).stdout.strip()
    [step] = glob.glob(f"/sys/fs/cgroup/freezer/slurm_*/uid_*/job_{job_id}/step_batch")
    Path(step, "freezer.state").write_text("FROZEN\n")
    try:
        for pid in Path(step, "cgroup.procs").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
    finally:
        Path(step, "freezer.state").write_text("THAWED\n")


def _scheduler_killed(as_user, gw, kill, wait: float) -> tuple[dict, float]:
    name = as_user("alice", "report(name=running_cluster(1))", via=gw)["name"]
    [job_id] = jobs_of(name, "scheduler")
    time.sleep(AGE)
    killed_at = time.time()
    kill(job_id)
    seen = as_user("alice", STATUS_AND_ERROR.format(name=name, wait=wait), via=gw)
    return {**seen, "job_id": job_id}, seen["seen_at"] - killed_at


def test_scancelled_scheduler_fails_its_cluster_with_slurms_reason_at_once(as_user, gateway):
    seen, after = _scheduler_killed(as_user, gateway, _scancel, 30)
    assert seen["status"] == "FAILED", seen
    assert after < PROMPT, seen
    assert f"scheduler job {seen['job_id']}" in seen["error"], seen
    assert "CANCELLED" in seen["error"], seen
    assert f"scheduler job {seen['job_id']} reports its end" in gateway.log.read_text()


def test_scancelled_worker_is_replaced_at_once(as_user, gateway):
    name = as_user("alice", "report(name=running_cluster(1))")["name"]
    try:
        [worker_job] = jobs_of(name, "worker")
        time.sleep(AGE)
        killed_at = time.monotonic()
        _scancel(worker_job)
        assert wait_until(lambda: set(jobs_of(name, "worker")) - {worker_job}, PROMPT), jobs_of(
            name, "worker"
        )
        assert time.monotonic() - killed_at < PROMPT
    finally:
        as_user("alice", f"Gateway().stop_cluster({name!r}); report()")


FORGE = """
import json, urllib.request, urllib.error
cluster = Gateway().connect(running_cluster(1))
client = cluster.get_client()
env = client.run_on_scheduler(lambda: {{k: os.environ[k] for k in
    ("DASK_GATEWAY_API_URL", "DASK_GATEWAY_API_TOKEN")}})
url = f"{{env['DASK_GATEWAY_API_URL']}}/v1/clusters/{{cluster.name}}/job-end"

def post(body, token):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
        headers={{"Authorization": f"token {{token}}", "Content-Type": "application/json"}})
    try:
        return urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code

forged = dict(job_id={job_id!r}, role="scheduler", exit_status=1, stop_asked=False,
              log_tail="forged")
report(
    forged=post(forged, env["DASK_GATEWAY_API_TOKEN"]),
    no_token=post(forged, "0" * 32),
    malformed=post(dict(forged, exit_status="x"), env["DASK_GATEWAY_API_TOKEN"]),
)
client.close()
cluster.shutdown()
"""


def test_a_report_about_another_clusters_job_is_refused(as_user, gateway):
    name = as_user("alice", "report(name=running_cluster(1))")["name"]
    try:
        [job_id] = jobs_of(name, "scheduler")
        bob = as_user("bob", FORGE.format(job_id=job_id))
        assert bob == {"forged": 403, "no_token": 401, "malformed": 422}, bob
        time.sleep(2)  # what a report would have set off
        assert jobs_of(name, "scheduler") == [job_id]
        still = as_user("alice", f"report(status=Gateway().get_cluster({name!r}).status.name)")
        assert still["status"] == "RUNNING", still
    finally:
        as_user("alice", f"Gateway().stop_cluster({name!r}); report()")


def test_the_sweep_catches_a_scheduler_killed_without_a_word(as_user, make_gateway):
    # SIGKILL to every process of the job, the job script included: nothing can report.
    sweep = 3
    gw = make_gateway(f"c.SlurmBackend.slurm_sweep_period = {sweep}\n")
    seen, after = _scheduler_killed(as_user, gw, _sigkill_everything, 30)
    assert seen["status"] == "FAILED", seen
    assert after < sweep + PROMPT, seen
    assert f"scheduler job {seen['job_id']}" in seen["error"], seen
    assert f"scheduler job {seen['job_id']} reports its end" not in gw.log.read_text()


# Heartbeats every 2 s; neither the sweep nor the heartbeat timeout within the test.
QUIET = """
c.SlurmBackend.slurm_sweep_period = 3600
c.SlurmBackend.cluster_heartbeat_period = 2
c.SlurmBackend.cluster_heartbeat_timeout = 120
"""


def test_a_scheduler_killed_without_a_word_is_caught_by_its_overdue_heartbeat(
    as_user, make_gateway
):
    gw = make_gateway(QUIET)
    seen, after = _scheduler_killed(as_user, gw, _sigkill_everything, 30)
    assert seen["status"] == "FAILED", seen
    assert after < 1.5 * 2 + PROMPT, seen  # poll_plan.OVERDUE_PERIODS heartbeat periods
    assert f"scheduler job {seen['job_id']}" in seen["error"], seen
    log = gw.log.read_text()
    assert f"Heartbeat overdue: asking SLURM about scheduler job(s) ['{seen['job_id']}']" in log
    assert "heartbeat timed out" not in log


# The scheduler forgets the workers it loses (as a scheduler of another dask-gateway might):
# its heartbeats stop listing a dead worker, without saying it closed.
FORGET_CLOSED = """
cluster = Gateway().connect({name!r})
client = cluster.get_client()

def forget_closed(dask_scheduler):
    class Forgetful(set):
        def add(self, name):
            pass

    dask_scheduler.services["gateway"].closed_workers = Forgetful()

client.run_on_scheduler(forget_closed)
client.close()
report()
"""


def test_a_worker_missing_from_the_heartbeat_is_asked_about_and_replaced(as_user, make_gateway):
    gw = make_gateway(QUIET)
    name = as_user("alice", "report(name=running_cluster(1))", via=gw)["name"]
    try:
        as_user("alice", FORGET_CLOSED.format(name=name), via=gw)
        [worker_job] = jobs_of(name, "worker")
        time.sleep(AGE)
        killed_at = time.monotonic()
        _sigkill_everything(worker_job)
        assert wait_until(lambda: set(jobs_of(name, "worker")) - {worker_job}, 2 + PROMPT)
        assert time.monotonic() - killed_at < 2 + PROMPT
        log = gw.log.read_text()
        assert "missing from the heartbeat: asking SLURM" in log
        assert "AssertionError" not in log
    finally:
        as_user("alice", f"Gateway().stop_cluster({name!r}); report()", via=gw)
