"""TLS channel binding for the SCRAM ``-PLUS`` mechanisms, for the client and the server alike.

Rules of this module: the one copy of (a) the scramp patch that lets it carry ``tls-exporter``,
(b) the RFC 5929 ``tls-server-end-point`` hash and (c) reading binding data off a pyOpenSSL
connection. ``cryptography`` and ``scramp`` are imported on use: the client imports this module
whether or not it ever runs SCRAM.
"""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["allow_tls_exporter", "end_point_hash", "channel_bindings", "EXPORTER_LABEL"]

#: RFC 9266 §2: the exporter label of ``tls-exporter`` (32 bytes, no context).
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"


def allow_tls_exporter() -> None:
    """Let scramp accept the ``tls-exporter`` binding type (idempotent).

    scramp refuses the name only because Python's ssl module cannot export keying material; we
    take the data from pyOpenSSL and hand scramp bytes, so the name is fine (RFC 9266).
    """
    import scramp.core

    scramp.core.CbName.SUPPORTED_TYPES = scramp.core.CbName.SUPPORTED_TYPES | {"tls-exporter"}
    scramp.core.CbName.UNSUPPORTED_TYPES = frozenset()


def end_point_hash(certificate: Any) -> bytes:
    """RFC 5929 §4.1 ``tls-server-end-point`` data of a ``cryptography`` certificate: its DER
    hashed with its signature's hash, SHA-256 where that is MD5 or SHA-1 or there is none
    (Ed25519)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    algorithm = certificate.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate.public_bytes(Encoding.DER))
    return digest.finalize()


def channel_bindings(conn: Any, *, server_side: bool) -> Dict[str, bytes]:
    """SCRAM-PLUS data by type for a pyOpenSSL connection, the preferred type first.

    ``tls-exporter`` (RFC 9266) on TLS 1.3 only (before 1.3 it is unsafe without the extended
    master secret), then ``tls-server-end-point`` of the server's certificate: our own on the
    server side, the peer's on the client side. Not a pyOpenSSL connection: ``{}``. Errors of
    pyOpenSSL or cryptography propagate; each side decides what a failure means to it.
    """
    if not hasattr(conn, "get_protocol_version_name"):
        return {}
    bindings: Dict[str, bytes] = {}
    if conn.get_protocol_version_name() == "TLSv1.3":
        bindings["tls-exporter"] = conn.export_keying_material(EXPORTER_LABEL, 32)
    cert = conn.get_certificate() if server_side else conn.get_peer_certificate()
    if cert is not None:
        bindings["tls-server-end-point"] = end_point_hash(cert.to_cryptography())
    return bindings
