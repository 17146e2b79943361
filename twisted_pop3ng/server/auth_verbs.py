"""STLS (RFC 2595), AUTH (RFC 5034), APOP (RFC 1939 §7) and UTF8 (RFC 6856) for the server.

Registered in :data:`COMMANDS`, which :mod:`.protocol` merges with the core verbs; per-session
state (the pending USER name, the SASL line hook, the APOP timestamp, UTF8 mode) is on
``protocol.session``, server settings (``tls``, ``token_validator``, ``sasl_secret_key``) are
declared ``POP3ServerFactory`` attributes. The SASL wire rules live here (base64, ``=`` for an
empty initial response, ``*`` to cancel, continuation lines up to :data:`wire.MAX_AUTH_LINE`);
the mechanisms themselves (:mod:`twisted_pop3ng.auth.sasl_server`) only gather credentials, and
the portal's checkers decide.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from twisted.cred.credentials import IUsernameHashedPassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_pop3ng.server import policy
from twisted_pop3ng.auth import _binding, sasl_server as sasl
from twisted_pop3ng.auth.digests import apop_digest
from twisted_pop3ng.auth.passwords import PLAINTEXT_SCHEMES
from twisted_pop3ng import wire
from twisted_pop3ng.auth.checkers import ISecretStore
from twisted_pop3ng.errors import BadCommand
from twisted_pop3ng.server.registry import CommandSet
from twisted_pop3ng.server.session import ServerConnection
from twisted_pop3ng.server.states import AUTHORIZATION

COMMANDS = CommandSet()

#: Schemes from which each challenge-response mechanism can work.
_NEEDS = {
    "CRAM-MD5": PLAINTEXT_SCHEMES | {"CRAM-MD5"},
    "SCRAM-SHA-1": PLAINTEXT_SCHEMES | {"SCRAM-SHA-1"},
    "SCRAM-SHA-256": PLAINTEXT_SCHEMES | {"SCRAM-SHA-256"},
    "SCRAM-SHA-256-PLUS": PLAINTEXT_SCHEMES | {"SCRAM-SHA-256"},
}
_OAUTH = frozenset({"OAUTHBEARER", "XOAUTH2"})


# -- TLS facts ------------------------------------------------------------------------------------


def _tls_connection(protocol: Any) -> Any:
    if not policy.is_secure(protocol):
        return None
    try:
        return protocol.transport.getHandle()
    except Exception:
        return None


def channel_bindings(protocol: Any) -> Dict[str, bytes]:
    """SCRAM-PLUS data by type (see :func:`twisted_pop3ng.auth._binding.channel_bindings`)."""
    conn = _tls_connection(protocol)
    if conn is None:
        return {}
    try:
        return _binding.channel_bindings(conn, server_side=True)
    except Exception:
        protocol.log.failure("cannot compute channel binding data")
        return {}


def client_identities(protocol: Any) -> List[str]:
    """Names in a client certificate that OpenSSL verified: email SANs, then the subject CN."""
    conn = _tls_connection(protocol)
    if conn is None:
        return []
    try:
        peer = conn.get_peer_certificate()
    except Exception:
        return []
    if peer is None or not _chains_to_trusted_ca(conn, peer):
        return []
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = peer.to_cryptography()
    names: List[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        pass
    names += [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return names


def _chains_to_trusted_ca(conn: Any, peer: Any) -> bool:
    """The peer certificate verifies against the context's trusted CAs (F6).

    The handshake's own verification may have been overridden by a verify callback that accepts
    everything (a common embedding pattern), which would make EXTERNAL a login with any
    self-signed certificate; pyOpenSSL does not expose ``SSL_get_verify_result``, so the chain
    is verified again here, with the public ``X509StoreContext``."""
    from OpenSSL import crypto

    try:
        store = conn.get_context().get_cert_store()
        if store is None:
            return False
        # The intermediates the client sent. On a server OpenSSL's peer chain does not hold the
        # client's own certificate (on a client it does): "[1:]" dropped the first intermediate,
        # and a certificate from an intermediate CA passed the handshake but never got EXTERNAL.
        leaf = peer.to_cryptography()
        chain = [c for c in (conn.get_peer_cert_chain() or []) if c.to_cryptography() != leaf]
        crypto.X509StoreContext(store, peer, chain).verify_certificate()
    except Exception:  # X509StoreContextError, or anything odd about the connection: no identity
        return False
    return True


# -- STLS -----------------------------------------------------------------------------------------


def _stls_capability(protocol: ServerConnection) -> Optional[str]:
    if protocol.factory.tls is None or policy.is_secure(protocol):
        return None
    return "STLS" if protocol.session.state == AUTHORIZATION else None


@COMMANDS.command("STLS", AUTHORIZATION, capability=_stls_capability)
def do_STLS(protocol: ServerConnection, cmd: wire.Command) -> None:
    protocol._no_args(cmd)
    tls = protocol.factory.tls
    if tls is None:
        raise BadCommand("STLS is not available: no certificate configured")
    if policy.is_secure(protocol):
        raise BadCommand("TLS is already active")
    protocol.reply(True, "Begin TLS negotiation now.")
    # Anything the client pipelined after STLS came in plaintext: it must not be executed inside
    # TLS (CVE-2011-0411). The reply above is already buffered in plaintext ahead of the handshake.
    protocol.clearLineBuffer()
    session = protocol.session
    session.username = None
    stats = protocol.factory.stats
    if stats is not None:
        stats.stls += 1
        if session.summary is not None:
            session.summary.stls = True
    protocol.flush_output()
    protocol.transport.startTLS(tls)


# -- AUTH -----------------------------------------------------------------------------------------


def _secret_store(protocol: ServerConnection) -> Any:
    for checker in protocol.factory.portal.checkers.values():
        if ISecretStore.providedBy(checker):
            return checker
    return None


def available_mechanisms(protocol: ServerConnection) -> List[str]:
    config = policy.security(protocol)
    plaintext_ok = policy.plaintext_allowed(protocol)
    store = _secret_store(protocol)
    schemes = store.secret_schemes() if store is not None else set()
    cb = policy.is_secure(protocol)
    names = []
    for mechanism in sasl.MECHANISMS:
        name = mechanism.name
        if config.mechanisms is not None and name not in config.mechanisms:
            continue
        if name in sasl.PLAINTEXT or name in _OAUTH:
            if not plaintext_ok:
                continue
        if name in _OAUTH and protocol.factory.token_validator is None:
            continue
        if name in _NEEDS and not (_NEEDS[name] & schemes):
            continue
        if name.endswith("-PLUS") and not cb:
            continue
        if name == "EXTERNAL" and not client_identities(protocol):
            continue
        names.append(name)
    return names


def _sasl_capability(protocol: ServerConnection) -> Optional[str]:
    if protocol.session.state != AUTHORIZATION:
        return None
    names = available_mechanisms(protocol)
    return "SASL " + " ".join(names) if names else None


def _context(protocol: ServerConnection) -> sasl.SASLContext:
    factory = protocol.factory
    store = _secret_store(protocol)
    validator = factory.token_validator
    context = sasl.SASLContext(
        hostname=policy.security(protocol).hostname,
        lookup_secret=store.lookup_secret if store is not None else None,
        channel_bindings=channel_bindings(protocol),
        plus_offered="SCRAM-SHA-256-PLUS" in available_mechanisms(protocol),
        client_identities=client_identities(protocol),
        validate_token=validator.validate if validator is not None else None,
        scram_profile=getattr(store, "scram_profile", None),
    )
    key = _salt_key(factory, store)
    if key is not None:
        context.secret_key = key
    return context


def _salt_key(factory: Any, store: Any) -> Optional[bytes]:
    """The key of SCRAM's made-up and derived salts: the factory's (``--sasl-secret-file``),
    else the secret store's own stable one (``PasswdFileChecker.salt_key``), so that an unknown
    user's salt is the same in every worker and after a restart, as a stored user's is (F7).
    None (a random key per exchange) only for a store that cannot make one."""
    if factory.sasl_secret_key is not None:
        return bytes(factory.sasl_secret_key)
    salt_key = getattr(store, "salt_key", None)
    return salt_key() if salt_key is not None else None


def _decode(data: bytes) -> bytes:
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True) if data else b""
    except (binascii.Error, ValueError):
        raise BadCommand("Invalid base64 data")


class _Exchange:
    """One AUTH exchange: owns the session's line hook until it ends."""

    def __init__(self, protocol: ServerConnection, mechanism: sasl.Mechanism) -> None:
        self.protocol = protocol
        self.mechanism = mechanism

    def begin(self, initial: Optional[bytes]) -> Any:
        # The audit log's record of this attempt (the user is known once the mechanism says).
        self.protocol.session.attempt = (None, self.mechanism.name)
        return self._run(self.mechanism.start, initial)

    def line(self, line: bytes) -> Any:
        if line.strip() == b"*":
            self._end()
            if getattr(self.mechanism, "failed", False):
                # OAuth has already refused the token (its error challenge is out): a cancel
                # now is that failure, with its delay and count (F18), not a free retry.
                return self._failed(Failure(sasl.AuthFailed("cancelled after a failure")))
            self.protocol.reply(False, "Authentication cancelled.")
            return None
        if len(line) + 2 > wire.MAX_AUTH_LINE:
            self._end()
            self.protocol.bad_command("AUTH response line too long")
            return None
        try:
            data = _decode(line.strip()) if line.strip() != b"=" else b""
        except BadCommand as error:
            self._end()
            self.protocol.bad_command(error.text)
            return None
        return self._run(self.mechanism.respond, data)

    def _run(self, step: Any, data: Any) -> Any:
        self.protocol.session.line_hook = None
        d = defer.maybeDeferred(step, data)
        d.addCallbacks(self._stepped, self._failed)
        return d

    def _stepped(self, result: Any) -> Any:
        if isinstance(result, sasl.Challenge):
            if self.protocol._closing:
                return None
            self.protocol.session.line_hook = self.line
            self.protocol.write(b"+ " + binascii.b2a_base64(result.data, newline=False) + b"\r\n")
            return None
        return self.protocol.login(result.credentials, self.mechanism.name)

    def _failed(self, failure: Failure) -> Any:
        self._end()
        session = self.protocol.session
        if session.attempt is not None and session.attempt[0] is None:
            # (SCRAM and OAuth know the name the client claimed; never the secret.)
            session.attempt = (getattr(self.mechanism, "username", None), self.mechanism.name)
        if failure.check(sasl.AuthFailed):
            return self.protocol._login_failed(Failure(UnauthorizedLogin(str(failure.value))))
        return failure

    def _end(self) -> None:
        self.protocol.session.line_hook = None


@COMMANDS.command("AUTH", AUTHORIZATION, capability=_sasl_capability)
def do_AUTH(protocol: ServerConnection, cmd: wire.Command) -> Any:
    words = cmd.words()
    names = available_mechanisms(protocol)
    if not words:
        # Outlook and mutt send a bare AUTH to learn the mechanisms (the pre-CAPA way).
        protocol.reply_lines("Supported authentication mechanisms follow", [n.encode() for n in names])
        return None
    if len(words) > 2:
        raise BadCommand("AUTH takes a mechanism and an optional initial response")
    name = words[0].decode("ascii", "replace").upper()
    if name not in names:
        if (name in sasl.PLAINTEXT or name in _OAUTH) and not policy.plaintext_allowed(protocol):
            policy.check_plaintext(protocol)
        raise BadCommand("Unsupported authentication mechanism")
    initial = _decode(words[1]) if len(words) == 2 else None
    # (What SASL proves is accepted by the PreauthenticatedChecker that POP3ServerFactory
    # registers on its portal when it is made.)
    return _Exchange(protocol, sasl.BY_NAME[name](_context(protocol))).begin(initial)


# -- APOP -----------------------------------------------------------------------------------------


@implementer(IUsernameHashedPassword)
@dataclass(frozen=True)
class APOPCredentials:
    username: bytes
    timestamp: bytes
    digest: bytes

    def checkPassword(self, password: bytes) -> bool:
        return hmac.compare_digest(apop_digest(self.timestamp, password), self.digest.lower())


@COMMANDS.command("APOP", AUTHORIZATION)
def do_APOP(protocol: ServerConnection, cmd: wire.Command) -> Any:
    timestamp = protocol.session.apop_timestamp
    if not policy.security(protocol).apop or timestamp is None:
        raise BadCommand("APOP is not enabled")
    words = cmd.words()
    if len(words) != 2 or len(words[1]) != 32:
        raise BadCommand("APOP needs a user name and a 32-digit MD5 digest")
    return protocol.login(APOPCredentials(words[0], timestamp.encode("ascii"), words[1]), "APOP")


# -- UTF8 -----------------------------------------------------------------------------------------


@COMMANDS.command("UTF8", AUTHORIZATION,
         capability=lambda protocol: "UTF8 USER" if protocol.session.state == AUTHORIZATION else "UTF8")
def do_UTF8(protocol: ServerConnection, cmd: wire.Command) -> None:
    """RFC 6856: names, passwords and replies are UTF-8 from now on (we accept UTF-8 anyway)."""
    protocol._no_args(cmd)
    protocol.session.utf8 = True
    protocol.reply(True, "UTF8 enabled")

