"""TLS for the server: certificate chain + key from PEM, TLS 1.2+, reloadable, self-signed for --demo,
session resumption by tickets."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from typing import Any, Callable, List, Optional

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from twisted_pop3ng.tls.pem import pem_blocks
from twisted_pop3ng.tls.tickets import TicketKeys

#: ``installer(context, keys) -> bool``: makes a context use ``keys`` for its tickets (the
#: ``--workers``-wide keys need :func:`twisted_pop3ng.fastpath.tls_tickets.install`).
TicketInstaller = Callable[[SSL.Context, TicketKeys], bool]


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


#: The ALPN protocol ID of POP3 (IANA registry; RFC 9325 asks clients to send it).
ALPN_POP3 = b"pop3"


def load_options(cert_path: str, key_path: Optional[str] = None) -> ssl.CertificateOptions:
    """CertificateOptions for a PEM chain (leaf first) and its key; TLS 1.2 is the minimum."""
    chain_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "key") if key_path else chain_pem
    blocks = pem_blocks(chain_pem, b"CERTIFICATE")
    if not blocks:
        raise TLSConfigError("no PEM certificate found in %s" % cert_path)
    if not key_path and b"PRIVATE KEY-----" not in chain_pem:
        raise TLSConfigError("no private key: %s holds none, and no --tls-key was given" % cert_path)
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from OpenSSL import crypto

    try:
        # Key types pyOpenSSL cannot take (DH, post-quantum) raise here and are reported below.
        key = crypto.PKey.from_cryptography_key(
            load_pem_private_key(key_pem, password=None))  # type: ignore[arg-type]
        certs = [crypto.X509.from_cryptography(x509.load_pem_x509_certificate(b)) for b in blocks]
    except Exception as error:  # cryptography raises several error types
        raise TLSConfigError("cannot load certificate/key (%s, %s): %s"
                             % (cert_path, key_path or "key in the same file", error))
    leaf, extra = certs[0], certs[1:]
    try:
        options = ssl.CertificateOptions(
            privateKey=key,
            certificate=leaf,
            extraCertChain=extra,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            enableSessions=False,  # no server-side cache: stateless tickets only
            enableSessionTickets=True,
        )
        context = options.getContext()  # built once and kept by the options
    except Exception as error:
        raise TLSConfigError("certificate and key do not match (%s, %s): %s" % (cert_path, key_path, error))
    # Mozilla's "intermediate" TLS 1.3 order, chosen by the server (CertificateOptions sets server
    # preference): AES-128-GCM first, ~1.4x the throughput of OpenSSL's default AES-256-GCM.
    context.set_tls13_ciphersuites(TLS13_CIPHERSUITES)
    # Twisted draws a random session context per context: no ticket would resume in another
    # process or after a reload. A session belongs to the certificate it was authenticated with:
    # the same certificate (another worker, a reload of the same files) resumes it, a new one not.
    context.set_session_id(session_context(chain_pem))
    # ALPN: "pop3" when the client offers it (RFC 9325's advice to clients), else no ALPN at all.
    # Without a callback of ours, Twisted's (which it always installs) answered an ALPN-offering
    # client with an empty choice, and OpenSSL 3 ended every such handshake with internal_error.
    context.set_alpn_select_callback(choose_alpn)
    return options


def choose_alpn(connection: Any, offered: List[bytes]) -> Any:
    """The ALPN protocol for a client that offered ``offered``: ``pop3``, or none (the handshake
    goes on without ALPN, as for a client that offered nothing)."""
    return ALPN_POP3 if ALPN_POP3 in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def session_context(chain_pem: bytes) -> bytes:
    """The TLS session ID context for a certificate chain: a session resumes only under the
    chain its full handshake presented (OpenSSL compares it on every resumption)."""
    digest = hashlib.sha256()
    for block in pem_blocks(chain_pem, b"CERTIFICATE"):
        digest.update(hashlib.sha256(block).digest())
    return digest.hexdigest()[:32].encode("ascii")  # SSL_MAX_SID_CTX_LENGTH is 32


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """A server connection creator whose certificate and key can be re-read (SIGHUP) in place.

    Sessions already running keep their context; new handshakes use the new one. Tickets are
    sealed with :attr:`ticket_keys` when an installer can set them (they then survive a reload
    and open in every process sharing the keys), else with OpenSSL's own per-context key.
    """

    def __init__(self, cert_path: str, key_path: Optional[str] = None,
                 ticket_keys: Optional[TicketKeys] = None,
                 ticket_installer: Optional[TicketInstaller] = None) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.ticket_keys = ticket_keys if ticket_keys is not None else TicketKeys()
        self.ticket_installer = ticket_installer
        #: Whether the current context seals tickets with :attr:`ticket_keys`.
        self.shared_tickets = False
        self.connection_class: Callable[..., SSL.Connection] = SSL.Connection
        self.options = self._load()

    def _load(self) -> ssl.CertificateOptions:
        options = load_options(self.cert_path, self.key_path)
        self._install_tickets(options.getContext())
        return options

    def _install_tickets(self, context: SSL.Context) -> None:
        self.shared_tickets = bool(self.ticket_installer and self.ticket_installer(context, self.ticket_keys))
        # What a client is told about a ticket's life; the keys decide what is accepted.
        context.set_timeout(self.ticket_keys.lifetime())

    def use_ticket_keys(self, keys: TicketKeys, installer: Optional[TicketInstaller] = None,
                        connection_class: Optional[Callable[..., SSL.Connection]] = None) -> None:
        """Seal and open tickets with ``keys`` from now on (``installer``: see :data:`TicketInstaller`;
        ``connection_class``: what :meth:`serverConnectionForTLS` makes, the installer's companion)."""
        self.ticket_keys = keys
        if installer is not None:
            self.ticket_installer = installer
        if connection_class is not None:
            self.connection_class = connection_class
        self._install_tickets(self.options.getContext())

    def reload(self) -> None:
        self.options = self._load()

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        # What CertificateOptions.serverConnectionForTLS does (Twisted >= 26; no ALPN here).
        return self.connection_class(self.options.getContext(), None)

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
