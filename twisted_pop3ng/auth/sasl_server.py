"""Server-side SASL mechanisms: each gathers credentials; a checker (or validator) decides.

A mechanism is a small state machine: :meth:`Mechanism.start` takes the initial response (None if
the client sent none) and every :meth:`Mechanism.respond` takes one decoded client line. Each
returns (or returns a Deferred of) a :class:`Challenge` to send as ``+ base64`` or a :class:`Done`
carrying ``twisted.cred`` credentials for the portal. :class:`AuthFailed` means "wrong credentials"
(answered ``-ERR [AUTH]`` after the failure delay); the wire handling (base64, ``*``, ``=``) lives
in :mod:`twisted_pop3ng.server.auth_verbs`.

Challenge-response mechanisms need stored secrets: CRAM-MD5 a plaintext-equivalent one, SCRAM a
SCRAM verifier (``{SCRAM-SHA-*}``, or derived from ``{PLAIN}``). They get them through
:attr:`SASLContext.lookup_secret`; an unknown user runs the same exchange against fake keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

from twisted.cred.credentials import IUsernameHashedPassword, UsernamePassword
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from twisted_pop3ng.auth import cram
from twisted_pop3ng.auth import passwords
from twisted_pop3ng.auth.digests import cram_digest
from twisted_pop3ng.auth.mechanisms import PLAINTEXT
from twisted_pop3ng.auth.checkers import Preauthenticated, hash_in_thread
from twisted_pop3ng.auth.scram_server import ScramError, ServerExchange, unescape_name

_log = Logger()


@dataclass(frozen=True)
class Challenge:
    data: bytes


@dataclass(frozen=True)
class Done:
    credentials: Any


Step = Union[Challenge, Done]


class AuthFailed(Exception):
    """The client's credentials are wrong (or malformed): ``-ERR [AUTH]`` after the failure delay."""


@dataclass
class SASLContext:
    """What a mechanism may know about its session."""

    hostname: str = "localhost"
    #: ``username -> "{SCHEME}secret" | None`` (or a Deferred of it); None: no secret store.
    lookup_secret: Optional[Callable[[str], Any]] = None
    #: Channel-binding data by type ("tls-exporter", "tls-server-end-point") on TLS connections;
    #: the client's GS2 header picks one, the first is the default.
    channel_bindings: Dict[str, bytes] = field(default_factory=dict)
    #: SCRAM-SHA-256-PLUS is offered: a SCRAM-SHA-256 client saying "y" is then a downgrade.
    plus_offered: bool = False
    #: Identities of a verified TLS client certificate (EXTERNAL).
    client_identities: Sequence[str] = ()
    #: ``(username_hint, token) -> authorised user | None`` (or a Deferred); None: no OAuth.
    validate_token: Optional[Callable[[str, str], Any]] = None
    #: Key for deterministic fake salts (unknown users) and derived SCRAM salts: the same in
    #: every process and after restarts for the same configuration (F7), see
    #: ``server.auth_verbs``; random (one exchange) only where nobody has a secret.
    secret_key: bytes = field(default_factory=lambda: os.urandom(32))
    #: ``mechanism -> (iterations, derived)`` an unknown user's fake SCRAM exchange copies (see
    #: ``PasswdFileChecker.scram_profile``); None: 4096 iterations, no derivation.
    scram_profile: Optional[Callable[[str], Tuple[int, bool]]] = None


class Mechanism:
    name = ""

    def __init__(self, context: SASLContext) -> None:
        self.context = context

    def start(self, initial: Optional[bytes]) -> Any:
        return self.respond(initial) if initial is not None else Challenge(b"")

    def respond(self, data: bytes) -> Any:
        raise NotImplementedError


class Plain(Mechanism):
    """RFC 4616: ``authzid NUL authcid NUL passwd``; no proxy authorisation."""

    name = "PLAIN"

    def respond(self, data: bytes) -> Step:
        parts = data.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise AuthFailed("malformed PLAIN response")
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            raise AuthFailed("proxy authorisation is not supported")
        return Done(UsernamePassword(authcid, password))


class Login(Mechanism):
    """The de-facto LOGIN mechanism (draft-murchison-sasl-login): user name, then password."""

    name = "LOGIN"

    def __init__(self, context: SASLContext) -> None:
        super().__init__(context)
        self.username: Optional[bytes] = None

    def start(self, initial: Optional[bytes]) -> Step:
        return self.respond(initial) if initial else Challenge(b"Username:")

    def respond(self, data: bytes) -> Step:
        if self.username is None:
            if not data:
                raise AuthFailed("empty user name")
            self.username = data
            return Challenge(b"Password:")
        return Done(UsernamePassword(self.username, data))


@implementer(IUsernameHashedPassword)
@dataclass(frozen=True)
class CramMD5Credentials:
    """A CRAM-MD5 answer; checkable against a plaintext secret or Dovecot's ``{CRAM-MD5}`` context."""

    username: bytes
    challenge: bytes
    response: bytes

    def checkPassword(self, password: bytes) -> bool:
        return hmac.compare_digest(cram_digest(password, self.challenge), self.response.lower())

    def check_stored(self, scheme: str, secret: str) -> bool:
        if scheme != "CRAM-MD5":
            return False
        try:
            expected = cram.hmac_from_context(secret, self.challenge).hex().encode()
        except ValueError:
            return False
        return hmac.compare_digest(expected, self.response.lower())


class CramMD5(Mechanism):
    name = "CRAM-MD5"

    def start(self, initial: Optional[bytes]) -> Step:
        if initial:
            raise AuthFailed("CRAM-MD5 takes no initial response")
        self.challenge = b"<%d.%d@%s>" % (int.from_bytes(os.urandom(6), "big"), int(time.time()),
                                           self.context.hostname.encode("idna"))
        return Challenge(self.challenge)

    def respond(self, data: bytes) -> Step:
        username, _, digest = data.rpartition(b" ")
        if not username or len(digest) != 32:
            raise AuthFailed("malformed CRAM-MD5 response")
        return Done(CramMD5Credentials(username, self.challenge, digest))


class Scram(Mechanism):
    """SCRAM (RFC 5802/7677), the exchange checked by :mod:`.scram_server`; the ``-PLUS`` variants
    bind to the TLS channel."""

    hash_name = "sha256"

    def __init__(self, context: SASLContext) -> None:
        super().__init__(context)
        self.exchange: Optional[ServerExchange] = None
        self.username = ""
        self.finished = False

    def start(self, initial: Optional[bytes]) -> Any:
        return self.respond(initial) if initial else Challenge(b"")

    def respond(self, data: bytes) -> Any:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthFailed("SCRAM messages are UTF-8")
        if self.exchange is None:
            return self._client_first(text)
        if not self.finished:
            return self._client_final(text)
        if text:
            raise AuthFailed("unexpected data after SCRAM server-final")
        return Done(Preauthenticated(self.username, self.name))

    def _client_first(self, text: str) -> defer.Deferred:
        plus = self.name.endswith("-PLUS") or (self.hash_name == "sha256" and self.context.plus_offered)
        bindings = dict(self.context.channel_bindings) if plus else {}
        exchange = self.exchange = ServerExchange(self.hash_name, bindings,
                                                  self.name.endswith("-PLUS"), bool(bindings))
        try:
            self.username = exchange.client_first(text)
        except ScramError as error:
            raise AuthFailed(str(error))
        d = defer.maybeDeferred(self._keys, self.username)

        def proceed(keys: passwords.ScramKeys) -> Step:
            return Challenge(exchange.server_first(keys.salt, keys.iterations, keys.stored_key,
                                                   keys.server_key).encode("utf-8"))

        return d.addCallback(proceed)

    def _client_final(self, text: str) -> Step:
        assert self.exchange is not None
        try:
            final = self.exchange.client_final(text)
        except ScramError as error:
            raise AuthFailed(str(error))
        self.finished = True
        return Challenge(final.encode("utf-8"))

    @property
    def _scheme(self) -> str:
        """The stored scheme this mechanism uses: ``SCRAM-SHA-256`` for SCRAM-SHA-256(-PLUS)."""
        return "SCRAM-" + self.hash_name.upper().replace("SHA", "SHA-")

    def _fake(self, username: str) -> Any:
        """Keys for a user who has none: a salt stable for the name (an HMAC under the context's
        key, which is stable across processes and restarts), the iteration count most users
        have, and -- where most users' keys are derived from ``{PLAIN}`` -- the same PBKDF2 in
        a thread, so that neither ``s=``, ``i=`` nor the time of the server-first tells (F7)."""
        digest = hmac.new(self.context.secret_key, b"fake\0" + username.encode(), hashlib.sha256).digest()
        size = hashlib.new(self.hash_name).digest_size
        iterations, derived = passwords.SCRAM_ITERATIONS, False
        if self.context.scram_profile is not None:
            iterations, derived = self.context.scram_profile(self._scheme)
        if derived:
            # (a random password: the keys are as unusable as random ones)
            return hash_in_thread(passwords.scram_keys, os.urandom(16).hex().encode(), self.hash_name,
                                  digest[:16], iterations)
        return passwords.ScramKeys(iterations, digest[:16], os.urandom(size), os.urandom(size))

    def _keys(self, username: str) -> Any:
        if self.context.lookup_secret is None:
            return self._fake(username)
        d = defer.maybeDeferred(self.context.lookup_secret, username)

        def derive(stored: Optional[str]) -> Any:
            if stored is None:
                return self._fake(username)
            scheme, secret = passwords.split_scheme(stored)
            if scheme == self._scheme:
                try:
                    return passwords.parse_scram(secret)
                except ValueError:  # (binascii.Error too) a damaged entry: as a user SCRAM cannot serve
                    _log.warn("the {scheme} secret of a user is damaged: SCRAM fails for it",
                              scheme=scheme)
                    return self._fake(username)
            if scheme in passwords.PLAINTEXT_SCHEMES:
                salt = hmac.new(self.context.secret_key, b"salt\0" + username.encode(),
                                hashlib.sha256).digest()[:16]
                return hash_in_thread(passwords.scram_keys, secret.encode("utf-8"),
                                      self.hash_name, salt, passwords.SCRAM_ITERATIONS)
            return self._fake(username)

        return d.addCallback(derive)


class ScramSha1(Scram):
    name = "SCRAM-SHA-1"
    hash_name = "sha1"


class ScramSha256(Scram):
    name = "SCRAM-SHA-256"


class ScramSha256Plus(Scram):
    name = "SCRAM-SHA-256-PLUS"


class External(Mechanism):
    """RFC 4422 Appendix A: the TLS client certificate names the user; authzid may pick one of its names."""

    name = "EXTERNAL"

    def start(self, initial: Optional[bytes]) -> Step:
        return self.respond(initial) if initial is not None else Challenge(b"")

    def respond(self, data: bytes) -> Step:
        identities = list(self.context.client_identities)
        if not identities:
            raise AuthFailed("no verified client certificate")
        wanted = data.decode("utf-8", "replace")
        if not wanted:
            return Done(Preauthenticated(identities[0], self.name))
        if wanted in identities:
            return Done(Preauthenticated(wanted, self.name))
        raise AuthFailed("certificate does not name that user")


_OAUTH_ERROR = json.dumps({"status": "invalid_token", "schemes": "bearer", "scope": "mail"}).encode()


class _OAuth(Mechanism):
    """Shared by OAUTHBEARER and XOAUTH2: a failed token gets an error challenge, then ``-ERR``."""

    def __init__(self, context: SASLContext) -> None:
        super().__init__(context)
        self.failed = False

    def start(self, initial: Optional[bytes]) -> Any:
        return self.respond(initial) if initial else Challenge(b"")

    def respond(self, data: bytes) -> Any:
        if self.failed:
            raise AuthFailed("invalid token")
        user, token = self.parse(data)
        validate = self.context.validate_token
        if validate is None:
            raise AuthFailed("no token validator")
        d = defer.maybeDeferred(validate, user, token)

        def decide(authorised: Optional[str]) -> Step:
            if authorised and (not user or authorised == user):
                return Done(Preauthenticated(authorised, self.name))
            self.failed = True
            return Challenge(_OAUTH_ERROR)

        return d.addCallback(decide)

    @staticmethod
    def _kvpairs(data: bytes) -> Dict[str, str]:
        text = data.decode("utf-8", "replace")
        return dict(kv.split("=", 1) for kv in text.split("\x01") if "=" in kv)

    @staticmethod
    def _bearer(auth: str) -> str:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailed("expected a Bearer token")
        return token.strip()

    def parse(self, data: bytes) -> Tuple[str, str]:
        raise NotImplementedError


class OAuthBearer(_OAuth):
    """RFC 7628: ``n,a=user,`` GS2 header, then ``^Aauth=Bearer TOKEN^A^A``."""

    name = "OAUTHBEARER"

    def parse(self, data: bytes) -> Tuple[str, str]:
        header, sep, rest = data.partition(b"\x01")
        fields = header.decode("utf-8", "replace").split(",")
        if not sep or len(fields) < 2 or fields[0] not in ("n", "y"):
            raise AuthFailed("malformed OAUTHBEARER message")
        user = next((f[2:] for f in fields[1:] if f.startswith("a=")), "")
        try:
            user = unescape_name(user)
        except ScramError as error:  # (the same GS2 header rules)
            raise AuthFailed(str(error))
        return user, self._bearer(self._kvpairs(rest).get("auth", ""))


class XOAuth2(_OAuth):
    """Google's XOAUTH2: ``user=USER^Aauth=Bearer TOKEN^A^A``."""

    name = "XOAUTH2"

    def parse(self, data: bytes) -> Tuple[str, str]:
        pairs = self._kvpairs(data)
        if "user" not in pairs:
            raise AuthFailed("malformed XOAUTH2 message")
        return pairs["user"], self._bearer(pairs.get("auth", ""))


#: Every mechanism, in the order CAPA lists them (strongest first, plaintext last).
MECHANISMS: List[Type[Mechanism]] = [ScramSha256Plus, ScramSha256, ScramSha1, CramMD5, External,
                          OAuthBearer, XOAuth2, Plain, Login]
BY_NAME = {m.name: m for m in MECHANISMS}
__all__ = ["Challenge", "Done", "Step", "AuthFailed", "SASLContext", "Mechanism", "Plain", "Login",
           "CramMD5Credentials", "CramMD5", "Scram", "ScramSha1", "ScramSha256", "ScramSha256Plus",
           "External", "OAuthBearer", "XOAuth2", "MECHANISMS", "BY_NAME", "PLAINTEXT"]
