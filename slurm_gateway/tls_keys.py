"""Each cluster's TLS key made ahead of time, in a thread, instead of in its request.

dask-gateway-server gives every cluster a new self-signed TLS certificate and its 2048-bit
RSA key (``dask_gateway_server.tls.new_keypair``), made in ``DataManager.create_cluster``
on the event loop, while the user's request waits: 15-190 ms on the dev cluster (the
search for primes varies that much), during which no other request is answered.

Here the RSA keys are generated :data:`POOL_SIZE` ahead in the event loop's default
thread pool (OpenSSL releases the GIL while it searches), and a new cluster takes one and
has its certificate signed with it (a millisecond). Each key is used once, for one
cluster, and never leaves the gateway's memory but in that cluster's credentials, as
before. If none is ready (a burst of new clusters) the key is made at once, as the stock
code does. The certificate is the stock one: :func:`keypair` is the stock
``new_keypair`` with its key given, and :data:`STOCK_SOURCES` holds the digests of the
stock functions copied here, which ``dgs_compat.internals_problems`` checks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from dask_gateway_server.backends.db_base import Cluster, DataManager, JobStatus
from dask_gateway_server.backends.db_base import clusters as clusters_table
from dask_gateway_server.utils import FrozenAttrDict, timestamp

#: Keys kept ready.
POOL_SIZE = 2

#: The stock functions copied here (module, name) with the SHA-256 (first 16 hex digits) of
#: their source, as reviewed.
STOCK_SOURCES = {
    ("dask_gateway_server.tls", "new_keypair"): "159c6a459845d4a1",
    ("dask_gateway_server.backends.db_base", "DataManager.create_cluster"): "339f596b9b066418",
}


def generate_key() -> rsa.RSAPrivateKey:
    """A new RSA key, as the stock ``new_keypair`` makes it."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def keypair(sni: str, key: rsa.RSAPrivateKey) -> tuple[bytes, bytes]:
    """The stock ``new_keypair(sni)`` with ``key`` instead of a new one: a self-signed
    certificate for ``sni`` (and ``dask-internal``), both in PEM."""
    key_bytes = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    dask_internal = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-internal")])
    altnames = x509.SubjectAlternativeName(
        [x509.DNSName(sni), x509.DNSName("dask-internal"), x509.DNSName("skein-internal")]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(dask_internal)
        .issuer_name(dask_internal)
        .add_extension(altnames, critical=False)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_bytes


class KeyPool:
    """Up to ``size`` keys made ahead in the running loop's default thread pool."""

    def __init__(self, size: int = POOL_SIZE, generate: Callable[[], object] = generate_key):
        self.size = size
        self.generate = generate
        self.ready: list = []
        self.making = 0

    def take(self):
        """A key never handed out before: a ready one, else one made now; then refill."""
        key = self.ready.pop() if self.ready else self.generate()
        self.refill()
        return key

    def refill(self) -> None:
        """Start making keys until ``size`` are ready or being made (needs a running loop;
        without one, nothing is started)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        while len(self.ready) + self.making < self.size:
            self.making += 1
            loop.run_in_executor(None, self.generate).add_done_callback(self._made)

    def _made(self, future: asyncio.Future) -> None:
        self.making -= 1
        if not future.cancelled() and future.exception() is None:
            self.ready.append(future.result())


class PooledKeyData(DataManager):
    """The stock ``DataManager`` whose ``create_cluster`` takes its key from ``keys``."""

    keys: KeyPool

    def create_cluster(self, username, options, config):
        """Create a new cluster for a user (the stock code, the key from the pool)."""
        cluster_name = uuid.uuid4().hex
        token = uuid.uuid4().hex
        tls_cert, tls_key = keypair(cluster_name, self.keys.take())
        # Encode the tls credentials for storing in the database
        tls_credentials = self.encode_tls_credentials(tls_cert, tls_key)
        enc_token = self.encode_token(token)

        common = {
            "name": cluster_name,
            "username": username,
            "options": options,
            "status": JobStatus.CREATED,
            "target": JobStatus.RUNNING,
            "count": 0,
            "state": {},
            "scheduler_address": "",
            "dashboard_address": "",
            "api_address": "",
            "start_time": timestamp(),
        }

        with self.db.begin() as conn:
            res = conn.execute(
                clusters_table.insert().values(
                    tls_credentials=tls_credentials, token=enc_token, config=config, **common
                )
            )
            cluster = Cluster(
                id=res.inserted_primary_key[0],
                token=token,
                tls_cert=tls_cert,
                tls_key=tls_key,
                config=FrozenAttrDict(config),
                **common,
            )
            self.id_to_cluster[cluster.id] = cluster
            self.name_to_cluster[cluster_name] = cluster
            self.username_to_clusters[username][cluster_name] = cluster

        return cluster
