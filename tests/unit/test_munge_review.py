"""Munge authentication against the security review's findings: credential relay (origins, TLS,
TTL), inflated payloads, floods, NSS disagreement, nonce memory, what errors and logs reveal.

Only names the first version had are imported at module level, so that each test here fails on
that version for its own reason rather than all of them on an import."""

import ast
import asyncio
import logging
import os
import pwd
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from slurm_gateway_client import MungeAuth, MungeAuthError
from traitlets.config import Config
from yarl import URL

from slurm_gateway.munge_auth import MungeAuthenticator, NonceMemory

ROOT = Path(__file__).resolve().parents[2]
NOBODY = pwd.getpwnam("nobody")
ORIGIN = "https://gw.test:8443"
CREDENTIAL = "MUNGE:" + "AwQFAACy8zMN8nSo/+0JIJsvU5eddtpHQi2ZcLDijzcZ1tKvhMKHskp8BdF9MEBm" * 2 + ":"
NONCE = "0123456789abcdef0123456789abcdef"


def _output(audience=ORIGIN, encode_time=None, nonce=NONCE, payload=None):
    encode_time = int(time.time()) if encode_time is None else encode_time
    if payload is None:
        payload = f"slurm-gateway:{audience}\ntime={encode_time}\nnonce={nonce}"
    return (
        f"STATUS:          0\nENCODE_TIME:     {encode_time}\nTTL:             60\n"
        f"UID:             {NOBODY.pw_uid}\nUID_RESTRICTION: {os.geteuid()}\n"
        f"LENGTH:          {len(payload.encode())}\n\n{payload}"
    )


@pytest.fixture
def unmunge(tmp_path):
    """A fake unmunge printing the next of ``answers`` (``out``, ``err``, ``rc``, ``sleep``)."""
    path = tmp_path / "unmunge"
    path.write_text(
        textwrap.dedent("""\
        #!/bin/sh
        cat > /dev/null; n=$(cat "$0.n" 2>/dev/null || echo 0); echo $((n + 1)) > "$0.n"
        d="$0.$n"; [ -d "$d" ] || d="$0.0"
        [ -f "$d/sleep" ] && sleep "$(cat "$d/sleep")"
        [ -f "$d/out" ] && cat "$d/out"; [ -f "$d/err" ] && cat "$d/err" >&2
        exit "$(cat "$d/rc" 2>/dev/null || echo 0)"
        """)
    )
    path.chmod(0o755)

    def answer(*answers):
        for i, given in enumerate(answers):
            folder = tmp_path / f"unmunge.{i}"
            folder.mkdir()
            for key, value in given.items():
                (folder / key).write_text(str(value))
        return str(path)

    return answer


def _auth(unmunge_path, **kwargs):
    kwargs = {"service_account": str(os.geteuid()), "audiences": [ORIGIN], **kwargs}
    auth = MungeAuthenticator(unmunge=unmunge_path, **kwargs)
    auth.log.propagate = True
    return auth


async def _attempt(auth, credential=CREDENTIAL):
    request = make_mocked_request("GET", "/api/v1/clusters/", headers={"Authorization": credential})
    try:
        return await auth.authenticate(request)
    except web.HTTPException as exc:
        return exc


def _run(auth, credential=f"Munge {CREDENTIAL}"):
    return asyncio.run(_attempt(auth, credential))


def _fake_munge(tmp_path, body='printf "MUNGE:QUJD:\\n"'):
    path = tmp_path / "munge"
    path.write_text(f'#!/bin/sh\necho "$@" > "$0.argv"\ncat > "$0.in"\n{body}\n')
    path.chmod(0o755)
    return str(path)


def _response(url, *history):
    return SimpleNamespace(
        url=URL(url), history=tuple(SimpleNamespace(url=URL(h)) for h in history)
    )


# 1. Credential relay.


def test_1a_the_client_binds_the_credential_to_the_origin_it_contacts(tmp_path):
    auth = MungeAuth(service_account=0, munge=_fake_munge(tmp_path))
    auth.pre_request(_response("https://Login1.Example.org/api/v1/clusters/"))
    payload = (tmp_path / "munge.in").read_text()
    assert payload.startswith("slurm-gateway:https://login1.example.org:443\ntime=")


def test_1a_no_credential_follows_a_redirect_from_another_origin(tmp_path):
    auth = MungeAuth(service_account=0, munge=_fake_munge(tmp_path))
    squatter = _response("https://gw.test:8443/api/v1/clusters/", "https://gw.test:9999/api")
    with pytest.raises(MungeAuthError, match="redirected"):
        auth.pre_request(squatter)
    assert not (tmp_path / "munge.in").exists()


def test_1b_the_gateway_accepts_only_its_own_origins(unmunge):
    path = unmunge(
        {"out": _output(audience="gw.test", nonce="1" * 32)},  # the first version's: any port
        {"out": _output(audience="https://gw.test:9999", nonce="2" * 32)},  # another port
        {"out": _output(audience=ORIGIN, nonce="3" * 32)},
    )
    auth = _auth(path)
    for _ in range(2):
        refused = _run(auth)
        assert isinstance(refused, web.HTTPUnauthorized), refused
        assert "made for another gateway" in refused.reason
    assert _run(auth).name == "nobody"


def test_1b_the_gateway_refuses_to_start_without_audiences(unmunge):
    auth = MungeAuthenticator(service_account=str(os.geteuid()), unmunge=unmunge())
    with pytest.raises(ValueError, match=r"MungeAuthenticator.audiences.*https://login1"):
        asyncio.run(auth.setup(None))


@pytest.mark.parametrize("bad", ["gw.test", "https://gw.test:1/api", "https://u@gw.test:1"])
def test_1b_audiences_must_be_origins(bad):
    with pytest.raises(ValueError, match="audiences"):
        MungeAuthenticator(audiences=[bad])


@pytest.mark.parametrize("url", ["http://login1.example.org:8000/", "http://10.0.0.1:80/"])
def test_1c_no_credential_over_plain_http_to_another_host(tmp_path, url):
    auth = MungeAuth(service_account=0, munge=_fake_munge(tmp_path))
    with pytest.raises(MungeAuthError, match="https"):
        auth.pre_request(_response(url))
    assert not (tmp_path / "munge.in").exists()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/", "http://127.3.2.1:80/", "http://[::1]:8000/", "http://localhost/"],
)
def test_1c_plain_http_to_a_loopback_address_is_allowed(tmp_path, url):
    auth = MungeAuth(service_account=0, munge=_fake_munge(tmp_path))
    assert auth.pre_request(_response(url))[0]["Authorization"] == "Munge MUNGE:QUJD:"


def test_1d_the_client_asks_munge_for_a_short_ttl(tmp_path):
    MungeAuth(service_account=0, munge=_fake_munge(tmp_path)).pre_request(_response(ORIGIN))
    assert (tmp_path / "munge.argv").read_text().split() == ["--restrict-uid=0", "--ttl=60"]
    MungeAuth(service_account=0, munge=_fake_munge(tmp_path), ttl=20).pre_request(_response(ORIGIN))
    assert (tmp_path / "munge.argv").read_text().split() == ["--restrict-uid=0", "--ttl=20"]


# 2. Inflated payloads; what is logged of unmunge's output.


@pytest.mark.parametrize("size", [9000, 100_000])
def test_2_an_inflated_payload_is_401_too_large_and_not_logged(unmunge, caplog, size):
    auth = _auth(unmunge({"out": _output(payload="SECRETPAYLOAD " * (size // 14))}))
    with caplog.at_level(logging.INFO):
        refused = _run(auth)
    assert refused.status == 401
    assert "credential payload too large" in refused.reason
    assert "SECRETPAYLOAD" not in caplog.text


def test_2_unmunge_output_is_never_logged_verbatim(unmunge, caplog):
    auth = _auth(
        unmunge(
            {"out": "STATUS: 0\nUID: 0 ATTACKER-TEXT\nLENGTH: 0\n\n"},
            {"rc": 6, "err": "unmunge: Error: \x1b[31mred\r\nFAKE: injected line\x07"},
        )
    )
    with caplog.at_level(logging.INFO):
        assert _run(auth).status == 401
        assert _run(auth).status == 503
    assert "ATTACKER-TEXT" not in caplog.text
    messages = [record.getMessage() for record in caplog.records]
    assert any("injected line" in m for m in messages)  # a sanitized one-line reason
    assert not any(c in m for m in messages for c in "\x1b\r\n\x07")


# 3. Floods.


def test_3_waiting_for_an_unmunge_slot_is_bounded(unmunge):
    auth = _auth(
        unmunge({"out": _output(), "sleep": 2}),
        max_concurrent_decodes=1,
        decode_wait_timeout=0.3,
    )

    async def two_at_once():
        return await asyncio.gather(_attempt(auth, f"Munge {CREDENTIAL}"), _quick_second(auth))

    started = time.monotonic()
    first, second = asyncio.run(two_at_once())
    assert first.name == "nobody"
    assert second.status == 503 and "busy, retry" in second.reason
    assert time.monotonic() - started < 4


async def _quick_second(auth):
    await asyncio.sleep(0.1)
    started = time.monotonic()
    answer = await _attempt(auth, f"Munge {CREDENTIAL}")
    assert time.monotonic() - started < 1.5
    return answer


def test_3_a_credential_is_judged_by_when_it_arrived_not_when_unmunge_answered(unmunge):
    # Encoded 57.5 to 58.5 s ago; unmunge takes 3 s: over 60 s old when it answers.
    encode_time = int(time.time() - 57.5)
    auth = _auth(unmunge({"out": _output(encode_time=encode_time), "sleep": 3}))
    answer = _run(auth)
    assert getattr(answer, "name", None) == "nobody", getattr(answer, "reason", answer)


@pytest.mark.parametrize(
    "credential",
    [
        "MUNGE:abc:",
        "MUNGE:" + "A" * 40 + ":",
        "MUNGE:" + "A=" * 40 + ":",
        "munge:" + "A" * 100 + ":",
    ],
)
def test_3_what_cannot_be_a_credential_never_reaches_unmunge(unmunge, credential):
    auth = _auth(unmunge({"out": _output()}))
    refused = _run(auth, f"Munge {credential}")
    assert refused.status == 401 and "malformed" in refused.reason
    assert not Path(auth.unmunge + ".n").exists()


def test_3_refusals_are_logged_at_most_once_per_reason_and_interval(unmunge, caplog):
    auth = _auth(unmunge({"out": _output()}))
    with caplog.at_level(logging.WARNING):
        for _ in range(30):
            assert _run(auth, "Munge alice").status == 401
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_3_held_back_refusals_are_counted_in_the_next_warning(caplog):
    from slurm_gateway.munge_core import RateLimitedLog

    clock = [0.0]
    limited = RateLimitedLog(logging.getLogger("test-munge"), clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="test-munge"):
        for _ in range(5):
            limited.warning("malformed", "malformed credential")
        limited.warning("too old", "too old")
        clock[0] = 10.0
        limited.warning("malformed", "malformed credential")
    assert [r.getMessage() for r in caplog.records] == [
        "malformed credential",
        "too old",
        "malformed credential [and 4 more like it in the last 10 s, not logged]",
    ]


def test_3_max_concurrent_decodes_is_a_documented_trait():
    traits = MungeAuthenticator.class_own_traits(config=True)
    assert traits["max_concurrent_decodes"].default_value == 16
    assert traits["max_concurrent_decodes"].help and traits["decode_wait_timeout"].help


# 4. No guessed default audience.


def test_4_there_is_no_default_audience():
    traits = MungeAuthenticator.class_own_traits(config=True)
    assert "audience" not in traits
    assert MungeAuthenticator().audiences == []


# 5. uid to name.


def test_5_a_name_that_maps_back_to_another_uid_is_refused(unmunge, monkeypatch):
    real = pwd.getpwnam

    def disagreeing(name):
        return SimpleNamespace(pw_uid=NOBODY.pw_uid + 1) if name == "nobody" else real(name)

    monkeypatch.setattr(pwd, "getpwnam", disagreeing)
    refused = _run(_auth(unmunge({"out": _output()})))
    assert refused.status == 401 and f"uid {NOBODY.pw_uid}" in refused.reason


# 6. Nonce memory.


def test_6_a_nonce_is_kept_as_long_as_its_credential_is_young_enough():
    memory = NonceMemory(max_age=60)
    assert memory.first_use("a", now=0, encode_time=50)  # encoded 50 s "in the future"
    assert not memory.first_use("a", now=70, encode_time=50)  # still accepted by decide()
    assert memory.first_use("a", now=111, encode_time=50)


def test_6_a_full_nonce_memory_is_503_not_eviction(unmunge):
    auth = _auth(unmunge({"out": _output(nonce="1" * 32)}, {"out": _output(nonce="2" * 32)}))
    auth._nonces = NonceMemory(max_age=60, max_entries=1)
    assert _run(auth).name == "nobody"
    busy = _run(auth)
    assert busy.status == 503 and "busy, retry" in busy.reason


# 7. The client's errors, type hints, the runner's config.


def test_7_munge_s_stdout_is_never_in_the_client_s_error(tmp_path):
    munge = _fake_munge(tmp_path, 'echo "MUNGE:half-a-credential-SECRET"; exit 1')
    with pytest.raises(MungeAuthError) as info:
        MungeAuth(service_account=0, munge=munge).pre_request(_response(ORIGIN))
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    "module",
    [
        "slurm_gateway/munge_auth.py",
        "slurm_gateway/munge_core.py",
        "client/slurm_gateway_client/__init__.py",
    ],
)
def test_7_functions_have_type_hints(module):
    path = ROOT / module
    if not path.exists():
        pytest.fail(f"{module} does not exist")
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            args += [a for a in (node.args.vararg, node.args.kwarg) if a]
            unhinted = [
                a.arg for a in args if a.annotation is None and a.arg not in ("self", "cls")
            ]
            if unhinted or node.returns is None:
                missing.append(f"{node.name}({', '.join(unhinted)})")
    assert not missing


def test_7_the_unmunge_runner_gets_the_gateway_s_config():
    config = Config({"LocalSudoRunner": {"environment": ["PATH=/opt/munge/bin"]}})
    auth = MungeAuthenticator(config=config)
    runner = auth._runner
    assert runner.parent is auth and runner.environment == ["PATH=/opt/munge/bin"]
