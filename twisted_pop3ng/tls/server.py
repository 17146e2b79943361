"""TLS for the server: certificate chain + key from PEM, TLS 1.2+, reloadable, self-signed for --demo."""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from twisted_pop3ng.tls.pem import pem_blocks


class TLSConfigError(ValueError):
    """A certificate or key that cannot be used; the text is meant for the command line."""


#: TLS 1.3 suites in the server's order of preference.
TLS13_CIPHERSUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise TLSConfigError("cannot read %s %s: %s" % (what, path, error.strerror))


def load_options(cert_path: str, key_path: Optional[str] = None) -> ssl.CertificateOptions:
    """CertificateOptions for a PEM chain (leaf first) and its key; TLS 1.2 is the minimum."""
    chain_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "key") if key_path else chain_pem
    blocks = pem_blocks(chain_pem, b"CERTIFICATE")
    if not blocks:
        raise TLSConfigError("no PEM certificate found in %s" % cert_path)
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from OpenSSL import crypto

    try:
        # Key types pyOpenSSL cannot take (DH, post-quantum) raise here and are reported below.
        key = crypto.PKey.from_cryptography_key(
            load_pem_private_key(key_pem, password=None))  # type: ignore[arg-type]
        certs = [crypto.X509.from_cryptography(x509.load_pem_x509_certificate(b)) for b in blocks]
    except Exception as error:  # cryptography raises several error types
        raise TLSConfigError("cannot load certificate/key (%s, %s): %s" % (cert_path, key_path, error))
    leaf, extra = certs[0], certs[1:]
    try:
        options = ssl.CertificateOptions(
            privateKey=key,
            certificate=leaf,
            extraCertChain=extra,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        context = options.getContext()  # built once and kept by the options
    except Exception as error:
        raise TLSConfigError("certificate and key do not match (%s, %s): %s" % (cert_path, key_path, error))
    # Mozilla's "intermediate" TLS 1.3 order, chosen by the server (CertificateOptions sets server
    # preference): AES-128-GCM first, ~1.4x the throughput of OpenSSL's default AES-256-GCM.
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES)
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """A server connection creator whose certificate and key can be re-read (SIGHUP) in place.

    Sessions already running keep their context; new handshakes use the new one.
    """

    def __init__(self, cert_path: str, key_path: Optional[str] = None) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.options = load_options(cert_path, key_path)

    def reload(self) -> None:
        self.options = load_options(self.cert_path, self.key_path)

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        # What CertificateOptions.serverConnectionForTLS does (Twisted >= 26; no ALPN here).
        return SSL.Connection(self.options.getContext(), None)

    def getContext(self) -> SSL.Context:
        return self.options.getContext()


def make_self_signed(cert_path: str, key_path: str, hostname: str = "localhost") -> None:
    """Write a self-signed certificate for ``hostname``, 127.0.0.1 and ::1 (used by --demo)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    old_umask = os.umask(0o077)
    try:
        with open(key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    finally:
        os.umask(old_umask)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
