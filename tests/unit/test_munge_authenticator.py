"""MungeAuthenticator end to end: against a fake unmunge, with the stock dask_gateway client and
the client's MungeAuth (a fake munge), and once against the real munged when it answers."""

import asyncio
import logging
import os
import pwd
import shutil
import subprocess
import textwrap
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from dask_gateway import Gateway
from slurm_gateway_client import MungeAuth, make_payload

from slurm_gateway.munge_auth import MungeAuthenticator

NOBODY = pwd.getpwnam("nobody")
CREDENTIAL = (
    "MUNGE:AwQFAACy8zMN8nSo/+0JIJsvU5eddtpHQi2ZcLDijzcZ1tKvhMKHskp8BdF9MEBm/ppBBue3Zoh/qTQPx/"
    "Qv3dSWpg6o=:"
)
AUDIENCE = "https://gw.test:8443"
NONCE = "0123456789abcdef0123456789abcdef"


def _unmunge_output(
    uid=NOBODY.pw_uid, restriction=None, status=0, audience=AUDIENCE, now=None, nonce=NONCE
):
    restriction = os.geteuid() if restriction is None else restriction
    now = int(time.time()) if now is None else now
    payload = f"slurm-gateway:{audience}\ntime={now}\nnonce={nonce}"
    return (
        f"STATUS:          {status}\nENCODE_TIME:     {now}\nTTL:             300\n"
        f"UID:             {uid}\nUID_RESTRICTION: {restriction}\n"
        f"LENGTH:          {len(payload)}\n\n{payload}"
    )


@pytest.fixture
def fake_unmunge(tmp_path):
    """A fake unmunge: keeps its stdin and argv, prints ``.out`` (and ``.err``), exits ``.rc``."""
    path = tmp_path / "unmunge"
    path.write_text(
        textwrap.dedent("""\
        #!/bin/sh
        cat > "$0.in"; echo "$@" > "$0.argv"
        [ -f "$0.sleep" ] && sleep "$(cat "$0.sleep")"
        [ -f "$0.out" ] && cat "$0.out"; [ -f "$0.err" ] && cat "$0.err" >&2
        exit "$(cat "$0.rc" 2>/dev/null || echo 0)"
        """)
    )
    path.chmod(0o755)

    def answer(out="", rc=0, err="", sleep=None):
        (tmp_path / "unmunge.out").write_text(out)
        (tmp_path / "unmunge.rc").write_text(str(rc))
        (tmp_path / "unmunge.err").write_text(err)
        if sleep is not None:
            (tmp_path / "unmunge.sleep").write_text(str(sleep))
        return path

    answer.path = path
    return answer


def _authenticator(unmunge, **kwargs):
    kwargs = {"service_account": str(os.geteuid()), "audiences": [AUDIENCE], **kwargs}
    return MungeAuthenticator(unmunge=str(unmunge), **kwargs)


def _authenticate(auth, header=f"Munge {CREDENTIAL}"):
    headers = {"Authorization": header} if header is not None else {}
    request = make_mocked_request("GET", "/api/v1/clusters/", headers=headers)
    return asyncio.run(auth.authenticate(request))


def _refused(auth, header=f"Munge {CREDENTIAL}", status=401):
    with pytest.raises(web.HTTPException) as info:
        _authenticate(auth, header)
    assert info.value.status == status
    if status == 401:
        assert info.value.headers["WWW-Authenticate"] == "Munge"
    return info.value.reason


def test_a_decoded_credential_is_the_user_of_its_uid(fake_unmunge):
    auth = _authenticator(fake_unmunge(_unmunge_output()))
    assert _authenticate(auth).name == "nobody"
    path = fake_unmunge.path
    assert (path.parent / "unmunge.in").read_text().strip() == CREDENTIAL  # on stdin, not argv
    assert (path.parent / "unmunge.argv").read_text().split() == [
        "--numeric",
        "--keys=STATUS,ENCODE_TIME,TTL,UID,UID_RESTRICTION,LENGTH",
    ]


def test_no_credential_asks_for_munge_without_logging(fake_unmunge, caplog):
    auth = _authenticator(fake_unmunge(_unmunge_output()))
    auth.log.propagate = True
    with caplog.at_level("INFO"):
        _refused(auth, header=None)
        _refused(auth, header="Basic YWxpY2U6")  # BasicAuth("alice") gets nothing either
    assert caplog.text == ""
    assert not (fake_unmunge.path.parent / "unmunge.in").exists()


@pytest.mark.parametrize(
    "header",
    [
        "Munge " + "MUNGE:" + "A" * 5000 + ":",
        "Munge alice",
        "Munge MUNGE:abc:\nUID: 0",
        "Munge MUNGE:a b:",
    ],
)
def test_malformed_credentials_never_reach_unmunge(fake_unmunge, header):
    auth = _authenticator(fake_unmunge(_unmunge_output()))
    assert "malformed credential" in _refused(auth, header)
    assert not (fake_unmunge.path.parent / "unmunge.in").exists()


@pytest.mark.parametrize(
    "answer, reason",
    [
        (dict(output=dict(status=17), rc=17), "replayed credential"),
        (dict(output=dict(status=15), rc=15), "expired"),
        (dict(rc=18, err="unmunge: Error: Unauthorized credential for client UID=999"), "UID=999"),
        (dict(rc=8, err="unmunge: Error: Failed to match armor prefix"), "armor prefix"),
        (dict(output=dict(restriction=4242)), "restricted to uid 4242"),
        (
            dict(output=dict(audience="https://gw.test:9443")),
            "made for another gateway: 'https://gw.test:9443'",
        ),
        (dict(output=dict(uid=3999999)), "uid 3999999 has no account"),
        (dict(output=dict(), cut=3), "unreadable unmunge output"),
        (dict(output=dict(), rc=17), "STATUS says else"),
    ],
)
def test_refusals_are_401_with_the_reason_logged_without_the_credential(
    fake_unmunge, caplog, answer, reason
):
    answer = dict(answer)
    if "output" in answer:
        # Made now, not when the parameters were collected: the credential's age counts.
        output = _unmunge_output(**answer.pop("output"))
        answer["out"] = output[: len(output) - answer.pop("cut", 0)]
    auth = _authenticator(fake_unmunge(**answer))
    auth.log.propagate = True
    with caplog.at_level("WARNING"):
        client_reason = _refused(auth)
    assert reason in caplog.text
    assert client_reason.startswith("Munge authentication failed: ")
    assert client_reason[len("Munge authentication failed: ") :] in caplog.text
    assert CREDENTIAL not in caplog.text
    assert CREDENTIAL[6:-1] not in caplog.text


def test_the_same_nonce_twice_is_refused_even_if_munged_forgot(fake_unmunge):
    auth = _authenticator(fake_unmunge(_unmunge_output()))
    assert _authenticate(auth).name == "nobody"
    assert "nonce seen before" in _refused(auth)


@pytest.mark.parametrize("answer", [dict(rc=6, err="unmunge: Error: socket"), dict(sleep=5)])
def test_munge_unavailable_is_503_not_401(fake_unmunge, answer):
    auth = _authenticator(fake_unmunge(**answer), unmunge_timeout=0.5)
    started = time.monotonic()
    _refused(auth, status=503)
    assert time.monotonic() - started < 4.5  # stopped, not waited for


def test_a_missing_unmunge_is_503():
    auth = _authenticator("/nonexistent/unmunge")
    _refused(auth, status=503)


def test_the_gateway_must_run_as_its_service_account(fake_unmunge):
    other = 4242 if os.geteuid() != 4242 else 4243
    auth = _authenticator(fake_unmunge(_unmunge_output()), service_account=str(other))
    with pytest.raises(ValueError, match="runs as uid"):
        asyncio.run(auth.setup(None))
    auth = _authenticator(fake_unmunge(_unmunge_output()), service_account="no-such-user-x")
    with pytest.raises(ValueError, match="no such user"):
        auth.service_uid()


def test_audiences_are_origins_normalised():
    auth = MungeAuthenticator(audiences=["HTTPS://GW.Example.org", "http://[::1]:8000/"])
    assert auth.audiences == ["https://gw.example.org:443", "http://[::1]:8000"]
    for bad in [
        "gw.example.org",
        "https://gw:1/api",
        "ftp://gw:1",
        "https://u@gw:1",
        "http://{H}:1",
    ]:
        with pytest.raises(ValueError, match="audiences"):
            MungeAuthenticator(audiences=[bad])


# The stock client, MungeAuth and the authenticator together, with a fake munge whose
# "credential" is the base64 of the payload, decoded by a fake unmunge.
FAKE_MUNGE = """\
#!/bin/sh
echo "$@" > "$0.argv"
printf 'MUNGE:%s:\\n' "$(base64 -w0)"
"""
FAKE_UNMUNGE = """\
#!/bin/sh
echo x >> "$0.calls"
payload=$(sed 's/^MUNGE:\\(.*\\):$/\\1/' | base64 -d)
printf 'STATUS: 0\\nENCODE_TIME: %s\\nUID: {uid}\\nUID_RESTRICTION: {restriction}\\n' "$(date +%s)"
printf 'LENGTH: %s\\n\\n%s' "${{#payload}}" "$payload"
"""


async def _list_clusters_twice(auth, gateway_auth):
    seen = []

    async def clusters(request):
        seen.append(request["user"].name)
        return web.json_response({})

    async def middleware_free_handler(request):
        return await auth.authenticate_and_handle(request, clusters)

    app = web.Application()
    app.router.add_get("/api/v1/clusters/", middleware_free_handler)
    async with TestServer(app, host="127.0.0.1") as server:
        address = str(server.make_url("")).rstrip("/")
        auth.audiences = [address]
        async with Gateway(address, auth=gateway_auth, asynchronous=True) as gateway:
            assert await gateway.list_clusters() == []
            assert await gateway.list_clusters() == []
    return seen


def test_the_stock_client_signs_in_with_munge_auth(tmp_path, monkeypatch):
    munge = tmp_path / "munge"
    munge.write_text(FAKE_MUNGE)
    unmunge = tmp_path / "unmunge"
    unmunge.write_text(FAKE_UNMUNGE.format(uid=NOBODY.pw_uid, restriction=os.geteuid()))
    for script in (munge, unmunge):
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    auth = _authenticator(unmunge, audiences=[])  # the server's origin, once it listens
    seen = asyncio.run(_list_clusters_twice(auth, MungeAuth(service_account=os.geteuid())))
    assert seen == ["nobody", "nobody"]
    argv = (tmp_path / "munge.argv").read_text().split()
    assert argv == [f"--restrict-uid={os.geteuid()}", "--ttl=60"]
    assert (tmp_path / "unmunge.calls").read_text() == "x\n"  # then the cookie


def _munged_answers() -> str:
    if not shutil.which("munge") or not shutil.which("unmunge"):
        return "munge is not installed"
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        decoded = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "munged did not answer within 10 s"
    if decoded.returncode != 0:
        return f"munged does not answer: {(cred.stderr or decoded.stderr).decode().strip()}"
    return ""


def test_real_munge_decodes_once_and_refuses_replays_and_alterations(caplog):
    problem = _munged_answers()
    if problem:
        pytest.skip(f"needs a running munged: {problem}")
    me = os.geteuid()
    client = MungeAuth(service_account=me)
    auth = MungeAuthenticator(service_account=str(me), audiences=[AUDIENCE], unmunge="unmunge")
    auth.log.propagate = True
    credential = client.credential(AUDIENCE)
    assert _authenticate(auth, f"Munge {credential}").name == pwd.getpwuid(me).pw_name
    with caplog.at_level(logging.WARNING):
        assert "munged has decoded it before" in _refused(auth, f"Munge {credential}")
        middle = len(credential) // 2
        flipped = "A" if credential[middle] != "A" else "B"
        altered = credential[:middle] + flipped + credential[middle + 1 :]
        assert "credential" in _refused(auth, f"Munge {altered}")
        other = client.credential("https://gw.test:9443")  # for another port of the host
        assert "made for another gateway" in _refused(auth, f"Munge {other}")
    assert credential not in caplog.text


def test_client_payloads_are_accepted_by_the_gateway():
    from slurm_gateway.munge_auth import Unmunged, decide

    payload = make_payload(AUDIENCE, now=1000).decode()
    cred = Unmunged(status=0, uid=1001, uid_restriction=999, encode_time=1000, payload=payload)
    verdict = decide(cred, service_uid=999, audiences=[AUDIENCE], now=1001, max_age=60)
    assert verdict.uid == 1001 and len(verdict.nonce) == 32
