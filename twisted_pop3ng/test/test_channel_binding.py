"""SCRAM-PLUS channel binding: client and server read the same data off one TLS connection, and the
``tls-server-end-point`` hash follows RFC 5929; the one PEM splitter."""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.trial import unittest

from twisted_pop3ng.auth import _binding, sasl_client
from twisted_pop3ng.tls.client import trust_root
from twisted_pop3ng.tls.pem import pem_blocks


def _certificate(algorithm: Any) -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pop.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, algorithm))
    return key, cert


def _handshake(version: int) -> tuple:
    """A finished TLS handshake between two in-memory pyOpenSSL connections, at ``version``."""
    key, cert = _certificate(hashes.SHA384())
    server_ctx = SSL.Context(SSL.TLS_METHOD)
    server_ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    server_ctx.use_certificate(crypto.X509.from_cryptography(cert))
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    for ctx in (server_ctx, client_ctx):
        ctx.set_min_proto_version(version)
        ctx.set_max_proto_version(version)
    server, client = SSL.Connection(server_ctx, None), SSL.Connection(client_ctx, None)
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(10):
        for conn, peer in ((client, server), (server, client)):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                peer.bio_write(conn.bio_read(65536))
            except SSL.WantReadError:
                pass
    return server, client, cert


class ChannelBindingTests(unittest.TestCase):
    def test_tls13_both_sides_agree_and_prefer_the_exporter(self) -> None:
        server, client, _ = _handshake(SSL.TLS1_3_VERSION)
        ours = _binding.channel_bindings(server, server_side=True)
        theirs = _binding.channel_bindings(client, server_side=False)
        self.assertEqual(ours, theirs)
        self.assertEqual(list(ours), ["tls-exporter", "tls-server-end-point"])
        self.assertEqual(len(ours["tls-exporter"]), 32)

    def test_tls12_no_exporter_and_both_sides_agree(self) -> None:
        server, client, cert = _handshake(SSL.TLS1_2_VERSION)
        ours = _binding.channel_bindings(server, server_side=True)
        self.assertEqual(ours, _binding.channel_bindings(client, server_side=False))
        # RFC 5929 §4.1: the certificate's own signature hash (here SHA-384) over its DER.
        digest = hashes.Hash(hashes.SHA384())
        digest.update(cert.public_bytes(Encoding.DER))
        self.assertEqual(ours, {"tls-server-end-point": digest.finalize()})

    def test_weak_or_no_signature_hash_means_sha256(self) -> None:
        """RFC 5929 §4.1: MD5 and SHA-1 become SHA-256; so does Ed25519's "no single hash"."""

        class Signed:
            def __init__(self, algorithm: object) -> None:
                self.signature_hash_algorithm = algorithm

            def public_bytes(self, encoding: Encoding) -> bytes:
                return b"DER of a certificate"

        sha256 = hashes.Hash(hashes.SHA256())
        sha256.update(b"DER of a certificate")
        expected = sha256.finalize()
        for algorithm in (hashes.MD5(), hashes.SHA1(), None):
            self.assertEqual(_binding.end_point_hash(Signed(algorithm)), expected, algorithm)

    def test_client_der_entry_point_agrees_with_scramp(self) -> None:
        """``sasl_client.tls_server_end_point`` (public) reads a DER certificate as scramp does."""
        from scramp.core import CBindData

        der = _certificate(hashes.SHA512())[1].public_bytes(Encoding.DER)
        self.assertEqual(sasl_client.tls_server_end_point(der),
                         ("tls-server-end-point", bytes(CBindData.from_der(der))))

    def test_not_a_tls_connection(self) -> None:
        self.assertEqual(_binding.channel_bindings(object(), server_side=True), {})


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


class PEMTests(unittest.TestCase):
    def test_blocks_in_order_without_the_text_between(self) -> None:
        first, second = _certificate(hashes.SHA256())[1], _certificate(hashes.SHA256())[1]
        data = (b"# leaf\n" + _pem(first) + b"some comment\n-----BEGIN PRIVATE KEY-----\nxx\n"
                b"-----END PRIVATE KEY-----\n" + _pem(second).rstrip(b"\n"))
        self.assertEqual(pem_blocks(data), [_pem(first), _pem(second)])
        self.assertEqual(pem_blocks(data, b"PRIVATE KEY"),
                         [b"-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n"])
        self.assertEqual(pem_blocks(b"-----BEGIN CERTIFICATE-----\nunterminated"), [])

    def test_trust_root_takes_every_certificate_of_a_cafile(self) -> None:
        first, second = _certificate(hashes.SHA256())[1], _certificate(hashes.SHA256())[1]
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"# two CAs\n" + _pem(first) + _pem(second))
        root = trust_root(path)
        self.assertEqual(len(root._caCerts), 2)
        with open(path, "wb") as f:
            f.write(b"no certificate here\n")
        self.assertRaises(ValueError, trust_root, path)
