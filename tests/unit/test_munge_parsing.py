"""Munge authentication, the pure parts: unmunge's output, the decision, the nonce memory.

The outputs are real ones, captured from munge 0.5.15 (Debian 12) as root: the default format
and the ``--numeric --keys=...`` one the gateway asks for."""

import pytest

from slurm_gateway.munge_auth import (
    NonceMemory,
    Unmunged,
    UnmungeOutputError,
    decide,
    parse_unmunge_output,
)

NONCE = "0123456789abcdef0123456789abcdef"
PAYLOAD = f"slurm-gateway:gw.test\ntime=1796098400\nnonce={NONCE}"

# unmunge -N -k STATUS,ENCODE_TIME,TTL,UID,UID_RESTRICTION,LENGTH (what the gateway runs)
NUMERIC_SUCCESS = (
    "STATUS:          0\nENCODE_TIME:     1796098378\nTTL:             300\n"
    "UID:             0\nUID_RESTRICTION: 0\nLENGTH:          76\n\n" + PAYLOAD
)
NUMERIC_REPLAYED = (
    "STATUS:          17\nENCODE_TIME:     1796098227\nTTL:             300\n"
    "UID:             0\nUID_RESTRICTION: 0\nLENGTH:          25\n\nslurm-gateway:test\nt=1234"
)
NUMERIC_NO_RESTRICTION = (
    "STATUS:          0\nENCODE_TIME:     1796098375\nTTL:             300\n"
    "UID:             0\nLENGTH:          0\n\n"
)
# A payload made of metadata lines (munge without restriction, as root).
NUMERIC_FORGED_PAYLOAD = (
    "STATUS:          0\nENCODE_TIME:     1796098378\nTTL:             300\n"
    "UID:             0\nLENGTH:          85\n\nx\n\nSTATUS:          0\n"
    "UID:             0\nUID_RESTRICTION: 999\nLENGTH:          3\n\nabc"
)
# plain unmunge
DEFAULT_SUCCESS = (
    "STATUS:          Success (0)\nENCODE_HOST:     localhost (127.0.0.1)\n"
    "ENCODE_TIME:     2026-12-01 04:10:27 +0000 (1796098227)\n"
    "DECODE_TIME:     2026-12-01 04:10:27 +0000 (1796098227)\nTTL:             300\n"
    "CIPHER:          aes128 (4)\nMAC:             sha256 (5)\nZIP:             none (0)\n"
    "UID:             root (0)\nGID:             root (0)\nUID_RESTRICTION: root (0)\n"
    "LENGTH:          25\n\nslurm-gateway:test\nt=1234"
)
DEFAULT_EXPIRED = (
    "STATUS:          Expired credential (15)\nENCODE_HOST:     localhost (127.0.0.1)\n"
    "ENCODE_TIME:     2026-12-01 04:10:27 +0000 (1796098227)\n"
    "DECODE_TIME:     2026-12-01 04:10:30 +0000 (1796098230)\nTTL:             1\n"
    "CIPHER:          aes128 (4)\nMAC:             sha256 (5)\nZIP:             none (0)\n"
    "UID:             root (0)\nGID:             root (0)\nUID_RESTRICTION: root (0)\n"
    "LENGTH:          1\n\nx"
)


def test_numeric_success():
    assert parse_unmunge_output(NUMERIC_SUCCESS) == Unmunged(
        status=0, uid=0, uid_restriction=0, encode_time=1796098378, ttl=300, payload=PAYLOAD
    )


def test_default_format_success():
    assert parse_unmunge_output(DEFAULT_SUCCESS) == Unmunged(
        status=0,
        uid=0,
        uid_restriction=0,
        encode_time=1796098227,
        ttl=300,
        payload="slurm-gateway:test\nt=1234",
    )


def test_replayed_and_expired_keep_their_status():
    assert parse_unmunge_output(NUMERIC_REPLAYED).status == 17
    expired = parse_unmunge_output(DEFAULT_EXPIRED)
    assert (expired.status, expired.ttl, expired.payload) == (15, 1, "x")


def test_no_restriction_is_none():
    cred = parse_unmunge_output(NUMERIC_NO_RESTRICTION)
    assert (cred.status, cred.uid, cred.uid_restriction, cred.payload) == (0, 0, None, "")


def test_metadata_lines_in_the_payload_are_payload():
    cred = parse_unmunge_output(NUMERIC_FORGED_PAYLOAD)
    assert cred.uid_restriction is None  # not the payload's 999
    assert cred.payload.startswith("x\n\nSTATUS:")
    assert cred.payload.endswith("LENGTH:          3\n\nabc")


@pytest.mark.parametrize(
    "out",
    [
        "",  # refused before decoding: unmunge prints nothing on stdout
        NUMERIC_SUCCESS[:40],  # cut in the metadata
        NUMERIC_SUCCESS[:-5],  # cut in the payload: LENGTH disagrees
        NUMERIC_SUCCESS + "\nUID: 1001",  # more payload than LENGTH
        "UID: 0\nLENGTH: 0\n\n",  # no STATUS
        "STATUS: 0\nUID: 0\n\n",  # no LENGTH
        "STATUS: 0\nUID: 0\nUID: 1001\nLENGTH: 0\n\n",  # a key twice
        "STATUS: 0\nPAYLOAD: x\nLENGTH: 0\n\n",  # not a munge key
        "STATUS: 0\nUID 0\nLENGTH: 0\n\n",  # not a metadata line
        "STATUS: Success\nLENGTH: 0\n\n",  # no number
    ],
)
def test_output_that_is_not_unmunge_s_is_refused(out):
    with pytest.raises(UnmungeOutputError):
        parse_unmunge_output(out)


def _cred(**changes):
    fields = dict(status=0, uid=1001, uid_restriction=999, encode_time=1000, ttl=300)
    fields["payload"] = f"slurm-gateway:gw.test\ntime=1000\nnonce={NONCE}"
    return Unmunged(**{**fields, **changes})


def _decide(cred, now=1010.0, audience="gw.test"):
    return decide(cred, service_uid=999, audiences=[audience], now=now, max_age=60)


def test_a_good_credential_gives_the_uid_munge_vouches_for_and_the_nonce():
    verdict = _decide(_cred())
    assert (verdict.uid, verdict.nonce, verdict.reason) == (1001, NONCE, "")


@pytest.mark.parametrize(
    "cred, now, reason",
    [
        (_cred(status=17), 1010, "replayed"),
        (_cred(status=15), 1010, "expired"),
        (_cred(status=16), 1010, "rewound"),
        (_cred(status=14), 1010, "invalid credential (munge status 14)"),
        (_cred(uid_restriction=None), 1010, "not restricted"),
        (_cred(uid_restriction=1002), 1010, "restricted to uid 1002, not the gateway's 999"),
        (_cred(uid=None), 1010, "malformed"),
        (_cred(encode_time=None), 1010, "malformed"),
        (_cred(), 1061, "too old"),
        (_cred(), 900, "in the future"),
        (_cred(payload=""), 1010, "not a slurm-gateway payload"),
        (_cred(payload=f"slurm-gateway:gw.other\ntime=1000\nnonce={NONCE}"), 1010, "gw.other"),
        (_cred(payload=f"slurm-gateway:gw.test\ntime=1000\nnonce={NONCE}\n"), 1010, "payload"),
        (_cred(payload=f"slurm-gateway:gw.test\ntime=1000\nnonce={NONCE[:-1]}"), 1010, "payload"),
        (_cred(payload=f"slurm-gateway:gw.test\ntime=5000\nnonce={NONCE}"), 1010, "disagrees"),
        (
            _cred(payload=f"UID: 0\nslurm-gateway:gw.test\ntime=1000\nnonce={NONCE}"),
            1010,
            "payload",
        ),
    ],
)
def test_refusals_say_why(cred, now, reason):
    verdict = _decide(cred, now=now)
    assert verdict.uid is None
    assert reason in verdict.reason


def test_max_age_is_inclusive():
    assert _decide(_cred(), now=1060).uid == 1001
    assert _decide(_cred(), now=940).uid == 1001


def test_a_nonce_is_refused_the_second_time_within_max_age():
    memory = NonceMemory(max_age=60)
    assert memory.first_use("a", now=0, encode_time=0)
    assert not memory.first_use("a", now=59, encode_time=0)
    assert memory.first_use("b", now=59, encode_time=59)
    assert memory.first_use("a", now=61, encode_time=61)  # forgotten: too old for decide()
