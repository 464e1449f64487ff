"""Hostile input through the real HTTP API and the stock client: a clear 4xx or a safe
result, nothing run, nothing submitted for a refused request (issue 5)."""

import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import Gateway, munge_credential, slurm_now, submitted_since, user_jobs

MARKER = "/tmp/slurm-gateway-hostile-marker"
TOUCH = f"touch {MARKER}"

BAD_OPTIONS = [
    {"conda_env": f"/x; {TOUCH}"},
    {"conda_env": f"$({TOUCH})"},
    {"conda_env": f"/x`{TOUCH}`"},
    {"conda_env": f"/x\n{TOUCH}"},
    {"conda_env": "/x'\"y"},
    {"conda_env": "/depot/../etc"},
    {"conda_env": "relative/env"},
    {"conda_env": "/" + "a" * 10_000},
    {"conda_env": "/x\udcff"},
    {"env": {"": "x"}},
    {"env": {"A=B": "x"}},
    {"env": {"A\nB": "x"}},
    {"env": {"A B": "x"}},
    {"env": {"1ABC": "x"}},
    {"env": {"GOOD": "a\x00b"}},
    {"env": "not a mapping"},
    {"worker_cores": 0},
    {"worker_cores": -1},
    {"worker_cores": 10**9},
    {"worker_cores": "4; id"},
    {"worker_cores": 1.5},
    {"worker_memory": -1},
    {"worker_memory": float("nan")},
    {"worker_memory": float("inf")},
    {"no_such_option": 1},
]


def _api(gw, method, path, body=None, user="alice"):
    """One raw API request as ``user``, with a fresh munge credential made by the user."""
    request = urllib.request.Request(
        f"{gw.address}/api/v1/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": "Munge " + munge_credential(user, gw.address),
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text or b"null")
        except ValueError:  # not the API's answer, e.g. a 401 from the authenticator
            return exc.code, text.decode(errors="replace")


@pytest.fixture(scope="module")
def hostile_gateway(gateway):
    gw = Gateway(
        Path(tempfile.mkdtemp(prefix="slurm-gateway-test-")),
        18900,
        "c.SlurmClusterConfig.cluster_max_workers = 5\n",
    )
    gw.start()
    yield gw
    gw.close()


def test_every_bad_option_is_refused_with_4xx_and_nothing_submitted(hostile_gateway):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    since = slurm_now()
    for options in BAD_OPTIONS:
        status, body = _api(hostile_gateway, "POST", "clusters/", {"cluster_options": options})
        assert status == 422, (options, status, body)
        field = next(iter(options))
        assert field in body["error"] or "Unknown fields" in body["error"], (options, body)
    assert submitted_since("alice", since) == [], "a job was submitted for a refused request"
    assert user_jobs("alice") == []
    assert not os.path.exists(MARKER)


def test_bad_scale_and_adapt_are_refused_and_the_cluster_survives(hostile_gateway, as_user):
    status, body = _api(hostile_gateway, "POST", "clusters/", {"cluster_options": {}})
    assert status == 201, body
    name = body["name"]
    try:
        status, body = _api(hostile_gateway, "GET", f"clusters/{name}?wait")
        assert status == 200 and body["status"] == "RUNNING", body
        for action, request, words in [
            ("scale", {"count": -1}, "non-negative integer"),
            ("scale", {"count": True}, "non-negative integer"),
            ("scale", {"count": "4; id"}, "non-negative integer"),
            ("adapt", {"minimum": 5, "maximum": 2}, "must not exceed maximum"),
            ("adapt", {"minimum": -3, "maximum": 2}, "minimum must be"),
            ("adapt", {"minimum": 1, "maximum": "x"}, "maximum must be"),
        ]:
            status, body = _api(hostile_gateway, "POST", f"clusters/{name}/{action}", request)
            assert status == 422 and words in body["error"], (action, request, status, body)
        # scale(10**6) is capped by the admin's per-cluster limit, with the stock message
        status, body = _api(hostile_gateway, "POST", f"clusters/{name}/scale", {"count": 10**6})
        assert status == 200 and "resource limit of 5 workers" in body["msg"], body
        status, body = _api(hostile_gateway, "POST", f"clusters/{name}/scale", {"count": 0})
        assert status == 200
        status, body = _api(hostile_gateway, "GET", f"clusters/{name}")
        assert body["status"] == "RUNNING", "a bad request must not kill the cluster"
    finally:
        _api(hostile_gateway, "DELETE", f"clusters/{name}")


def test_reserved_variables_never_reach_the_workers(as_user):
    result = as_user(
        "alice",
        """
        cluster = Gateway().new_cluster(worker_memory=0.5, env={
            "LD_PRELOAD": "/tmp/evil.so", "BASH_ENV": "/tmp/evil.sh",
            "DASK_GATEWAY_API_TOKEN": "stolen", "PATH": "/evil", "MINE": "line1\\nline2",
        })
        cluster.scale(1)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=120)

        def seen():
            import os
            return {k: os.environ.get(k) for k in
                    ("LD_PRELOAD", "BASH_ENV", "DASK_GATEWAY_API_TOKEN", "PATH", "MINE")}

        (found,) = client.run(seen).values()
        cluster.shutdown()
        report(found=found)
        """,
    )
    found = result["found"]
    assert found["LD_PRELOAD"] is None and found["BASH_ENV"] is None
    assert found["DASK_GATEWAY_API_TOKEN"] != "stolen"
    assert not found["PATH"].startswith("/evil")
    assert found["MINE"] == "line1\nline2"
