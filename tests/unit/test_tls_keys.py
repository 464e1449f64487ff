"""Clusters' TLS keys made ahead of time (tls_keys.py): each cluster gets a key of its own,
in the stock certificate, without the request waiting for the key to be made."""

from __future__ import annotations

import asyncio
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dask_gateway_server.backends.db_base import DataManager
from dask_gateway_server.tls import new_keypair

from slurm_gateway.tls_keys import KeyPool, keypair
from slurm_gateway.worker_writes import WriteBehindData


def _names(cert_pem: bytes) -> tuple[str, list[str]]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return cert.subject.rfc4514_string(), san.get_values_for_type(x509.DNSName)


def _public(cert_pem: bytes, key_pem: bytes) -> tuple[bytes, bytes]:
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    cert_key = x509.load_pem_x509_certificate(cert_pem).public_key().public_bytes(*der)
    key = serialization.load_pem_private_key(key_pem, None).public_key().public_bytes(*der)
    return cert_key, key


def test_the_certificate_is_the_stock_one_with_the_key_given():
    ours = keypair("c1", KeyPool().take())
    stock = new_keypair("c1")
    assert (
        _names(ours[0])
        == _names(stock[0])
        == (
            "CN=dask-internal",
            ["c1", "dask-internal", "skein-internal"],
        )
    )
    assert ours[1].startswith(b"-----BEGIN PRIVATE KEY-----")
    cert_key, key = _public(*ours)
    assert cert_key == key


def test_keys_are_made_ahead_in_a_thread_and_each_handed_out_once():
    made = []

    def generate():
        made.append(object())
        return made[-1]

    async def main():
        pool = KeyPool(size=2, generate=generate)
        pool.refill()
        assert pool.making == 2 and not pool.ready
        while len(pool.ready) < 2:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        first, second = pool.take(), pool.take()
        assert time.monotonic() - started < 0.05
        third = pool.take()  # none ready: made at once
        while pool.making:
            await asyncio.sleep(0.01)
        return [first, second, third], pool

    keys, pool = asyncio.run(main())
    assert len({id(k) for k in keys}) == 3
    assert len(pool.ready) == 2 and not {id(k) for k in pool.ready} & {id(k) for k in keys}


def test_a_new_cluster_gets_a_key_of_its_own():
    async def main():
        data = WriteBehindData.adopt(DataManager(), None)
        clusters = [data.create_cluster("alice", {}, {}) for _ in range(3)]
        return data, clusters

    data, clusters = asyncio.run(main())
    assert len({c.tls_key for c in clusters}) == 3
    for cluster in clusters:
        assert _names(cluster.tls_cert)[1][0] == cluster.name
        assert (
            _public(cluster.tls_cert, cluster.tls_key)[0]
            == _public(cluster.tls_cert, cluster.tls_key)[1]
        )
        assert data.get_cluster(cluster.name) is cluster
