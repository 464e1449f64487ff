"""Munge authentication end to end (issue 11): a user is the uid munge vouches for.

Every test gateway authenticates with munge (conftest); here the session's gateway is
checked as the real users, with the stock client and no password anywhere: alice's
``Gateway()`` without arguments, a credential of hers captured and replayed by bob, bob's
own credential against her cluster, a name claimed with ``BasicAuth``, and credentials that
are not for this gateway. One cluster in the whole module.
"""

from __future__ import annotations

import inspect
import json
import pwd
import textwrap
import time
import urllib.error
import urllib.request

import yaml
from conftest import (
    SERVICE_ACCOUNT,
    assert_refused,
    assert_still_running,
    munge_credential,
    user_jobs,
    wait_until,
)


def send(address: str, authorization: str) -> tuple[int, object]:
    """One request listing the user's clusters, with ``authorization`` and nothing else (no
    cookie, no retry): (200, the names) or (the error status, the body)."""
    request = urllib.request.Request(
        address + "/api/v1/clusters/", headers={"Authorization": authorization}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, sorted(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")[:300]


def client_code(code: str) -> str:
    """``code`` for as_user, with :func:`send` defined (the same function, in the user's
    own process)."""
    return "import urllib.error, urllib.request\n" + inspect.getsource(send) + textwrap.dedent(code)


def logged_since(gateway, offset: int, text: str, timeout: float = 10) -> str:
    """The gateway's log after byte ``offset``, once it holds ``text`` (or after ``timeout``)."""

    def new() -> str:
        return gateway.log.read_bytes()[offset:].decode(errors="replace")

    wait_until(lambda: text in new(), timeout)
    return new()


def test_alice_is_her_uid_and_bob_can_neither_replay_nor_claim_her(as_user, gateway):
    alice_uid, bob_uid = (pwd.getpwnam(user).pw_uid for user in ("alice", "bob"))
    service_uid = pwd.getpwnam(SERVICE_ACCOUNT).pw_uid
    # What every test gateway gives its clients: munge, the audience's origin, no password.
    assert yaml.safe_load((gateway.client_config / "gateway.yaml").read_text()) == {
        "gateway": {
            "address": gateway.address,
            "auth": {
                "type": "slurm_gateway_client.MungeAuth",
                "kwargs": {"service_account": SERVICE_ACCOUNT},
            },
        }
    }
    assert f'c.MungeAuthenticator.audiences = ["{gateway.address}"]' in gateway.config.read_text()

    alice = as_user(
        "alice",
        client_code(f"""
        import subprocess
        from slurm_gateway_client import make_payload

        gateway = Gateway()  # no arguments: the site's config; munge, no password
        cluster = gateway.new_cluster(shutdown_on_close=False, worker_memory=1)
        cluster.scale(1)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=120)
        task_uids = client.gather(client.map(lambda _: os.getuid(), range(4), pure=False))
        # A credential of alice's, made as her client makes one and used once: bob captures it.
        made = subprocess.run(
            ["munge", "--restrict-uid={service_uid}", "--ttl=60"],
            input=make_payload(gateway.address), capture_output=True, check=True,
        )
        credential = made.stdout.decode().strip()
        report(
            name=cluster.name,
            auth=type(gateway.auth).__name__,
            environment=sorted(os.environ),
            task_uids=task_uids,
            sent=send(gateway.address, "Munge " + credential),
            credential=credential,
        )
        """),
    )
    name = alice["name"]
    try:
        assert alice["auth"] == "MungeAuth"
        assert not [k for k in alice["environment"] if "PASS" in k or "DASK_GATEWAY" in k], alice
        assert alice["task_uids"] == [alice_uid] * 4, alice["task_uids"]
        # Her credential, sent once by her: accepted as alice (it lists her cluster).
        status, listed = alice["sent"]
        assert status == 200 and name in listed, alice["sent"]
        log = gateway.log.read_text()
        assert f"Munge: authenticated uid {alice_uid} as alice" in log

        seen = len(gateway.log.read_bytes())
        bob = as_user(
            "bob",
            client_code(f"""
            import dask
            from dask_gateway import BasicAuth

            address = dask.config.get("gateway.address")
            # First thing: alice's captured credential, well within its 60 s.
            replayed = send(address, "Munge " + os.environ["CAPTURED"])
            claimed = error_of(Gateway(auth=BasicAuth("alice")).list_clusters)
            gateway = Gateway()  # bob's own munge credential
            report(
                replayed=replayed,
                claimed=claimed,
                auth=type(gateway.auth).__name__,
                listed=[c.name for c in gateway.list_clusters()],
                connect=error_of(gateway.connect, {name!r}),
                scale=error_of(gateway.scale_cluster, {name!r}, 2),
                stop=error_of(gateway.stop_cluster, {name!r}),
            )
            """),
            env={"CAPTURED": alice["credential"]},
        )
        assert bob["replayed"][0] == 401, bob["replayed"]
        log = logged_since(gateway, seen, "replayed credential")
        assert f"(uid {alice_uid}): replayed credential" in log, gateway.log_tail()
        assert bob["claimed"] is not None and "401" in bob["claimed"], bob["claimed"]
        assert bob["auth"] == "MungeAuth"
        assert f"Munge: authenticated uid {bob_uid} as bob" in log, gateway.log_tail()
        assert name not in bob["listed"]
        assert_refused(bob, ("connect", "scale", "stop"))

        # alice's cluster is untouched: running, with her one worker and none of bob's.
        assert_still_running(as_user, "alice", name)
        assert len([line for line in user_jobs("alice") if "worker" in line]) == 1
    finally:
        as_user("alice", f"Gateway().stop_cluster({name!r}); report()")


def _altered(credential: str) -> str:
    """``credential`` with one character in its middle changed."""
    middle = len(credential) // 2
    other = "B" if credential[middle] != "B" else "C"
    return credential[:middle] + other + credential[middle + 1 :]


def _expired(user: str, address: str) -> str:
    credential = munge_credential(user, address, ttl=1)
    time.sleep(2.5)
    return credential


def test_credentials_not_for_this_gateway_are_refused_with_the_reason_logged(gateway):
    address = gateway.address
    another = "http://127.0.0.1:18100"  # another gateway's origin (make_gateway's first)
    cases = [
        (
            "unrestricted (munge without --restrict-uid)",
            lambda: munge_credential("alice", address, restrict_to=None),
            "not restricted to the gateway's service account",
        ),
        (
            "restricted to root",
            lambda: munge_credential("alice", address, restrict_to="root"),
            "credential restricted to another uid than the gateway's",
        ),
        (
            "made for another origin",
            lambda: munge_credential("alice", another),
            f"made for another gateway: '{another}'",
        ),
        ("expired", lambda: _expired("alice", address), "expired credential"),
        (
            "altered",
            lambda: _altered(munge_credential("alice", address)),
            "invalid credential (munge status",
        ),
        ("not munge's armor", lambda: "MUNGE:not-a-credential:", "malformed credential"),
    ]
    for case, make, reason in cases:
        credential = make()
        seen = len(gateway.log.read_bytes())
        status, body = send(address, "Munge " + credential)
        assert status == 401, (case, status, body)
        assert reason in logged_since(gateway, seen, reason), (case, gateway.log_tail())
    assert user_jobs("alice") == []
