"""Authentication for :class:`twisted_pop3ng.client.POP3Client`: picking and running a method.

The strongest method both sides support wins (issue 4): SCRAM-SHA-256-PLUS > SCRAM-SHA-256 >
SCRAM-SHA-1(-PLUS) > CRAM-MD5 > PLAIN > LOGIN > USER/PASS. Methods that reveal the password go
only over TLS unless the caller allows plaintext; APOP only on request; OAuth with a token.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Optional, Tuple

from twisted.internet import defer

from twisted_pop3ng.auth import _binding, sasl_client
from twisted_pop3ng.client.errors import AuthError, CapabilityError


class LoginMixin:
    """Mixed into the client protocol; uses its ``send``, ``capa``, ``capabilities`` and ``tls``."""

    capabilities: dict
    tls: bool
    greeting: str
    transport: Any
    mechanism: Optional[str]
    logged_in: bool

    def _channel_binding(self) -> Optional[Tuple[str, bytes]]:
        """SCRAM-PLUS data (RFC 9266): ``tls-exporter`` on TLS 1.3, ``tls-server-end-point`` before."""
        if not self.tls:
            return None
        try:
            bindings = _binding.channel_bindings(self.transport.getHandle(), server_side=False)
        except Exception:
            return None  # no binding: the -PLUS mechanisms are simply not chosen
        return next(iter(bindings.items()), None)

    def login(self, username: str, password: Optional[str] = None, *, token: Optional[str] = None,
              mechanism: Optional[str] = None, allow_plaintext: bool = False,
              apop: bool = False) -> defer.Deferred:
        """Authenticate with the strongest method both sides support; fires with the new capabilities.

        Order: SCRAM-SHA-256-PLUS > SCRAM-SHA-256 > SCRAM-SHA-1(-PLUS) > CRAM-MD5 > PLAIN > LOGIN >
        USER/PASS; the plaintext ones only over TLS unless ``allow_plaintext``. APOP only with
        ``apop=True``; OAUTHBEARER/XOAUTH2 with ``token``.
        """
        secret = token if token is not None else password
        if secret is None:
            return defer.fail(ValueError("a password or a token is needed"))
        if apop:
            self.mechanism = "APOP"
            d = self._apop(username, secret)
        else:
            offered = self.capabilities.get("SASL", [])
            binding = self._channel_binding()
            secure = self.tls or allow_plaintext
            if mechanism is not None:
                names = [mechanism.upper()]
                if names[0] in sasl_client.PLAINTEXT and not secure:
                    return defer.fail(CapabilityError("refusing to send a password in the clear"))
            else:
                names = sasl_client.choose(offered, secure=self.tls, allow_plaintext=allow_plaintext,
                                           token=token is not None, channel_binding=binding is not None)
            attempts = list(names[:1])
            user_ok = token is None and secure and (
                "USER" in self.capabilities or not self.capabilities)
            if mechanism is None:
                # A challenge-response mechanism fails when the server stores only a hash it cannot
                # use for it (Dovecot offering SCRAM for {SHA512-CRYPT} users): then, over TLS (or
                # when plaintext is allowed), fall back once to the best plaintext method.
                plain = [n for n in names if n in sasl_client.PLAINTEXT] + (["USER"] if user_ok else [])
                if plain and (not attempts or attempts[0] not in sasl_client.PLAINTEXT):
                    attempts.append(plain[0])
            if not attempts:
                why = "the server offers no authentication method we accept"
                if not (self.tls or allow_plaintext):
                    why += " without TLS (plaintext passwords are refused)"
                return defer.fail(CapabilityError(why))
            d = self._attempt(attempts, username, secret, binding)

        def logged_in(_: Any) -> defer.Deferred:
            self.logged_in = True
            return self.capa()

        return d.addCallback(logged_in)

    def _attempt(self, attempts: list, username: str, secret: str,
                 binding: Optional[Tuple[str, bytes]]) -> defer.Deferred:
        """Try ``attempts[0]``; on an authentication failure go on with the rest."""
        name, rest = attempts[0], attempts[1:]
        self.mechanism = name
        if name == "USER":
            d = self._user_pass(username, secret)
        else:
            d = self.authenticate(name, username, secret, binding)
        if rest:
            def next_one(failure: Any) -> defer.Deferred:
                failure.trap(AuthError)
                return self._attempt(rest, username, secret, binding)
            d.addErrback(next_one)
        return d

    def authenticate(self, name: str, username: str, secret: str,
                     channel_binding: Optional[Tuple[str, bytes]] = None) -> defer.Deferred:
        """``AUTH name`` (RFC 5034) with the initial response when the mechanism has one."""
        try:
            mech = sasl_client.make(name, username, secret, channel_binding)
        except sasl_client.SASLError as e:
            return defer.fail(e)
        initial = mech.initial()
        line = b"AUTH " + name.encode("ascii")
        if initial is not None:
            line += b" " + (base64.b64encode(initial) if initial else b"=")
        return self.send(line, barrier=True, mechanism=mech, is_auth=True)

    def _user_pass(self, username: str, password: str) -> defer.Deferred:
        d = self.send(b"USER " + username.encode("utf-8"), barrier=True, is_auth=True)
        return d.addCallback(lambda _: self.send(b"PASS " + password.encode("utf-8"),
                                                 barrier=True, is_auth=True))

    def _apop(self, username: str, password: str) -> defer.Deferred:
        match = re.search(r"<[^<>]*@[^<>]*>", self.greeting)
        if not match:
            return defer.fail(CapabilityError("the server greeting has no APOP timestamp"))
        digest = sasl_client.apop_digest(match.group(0).encode("utf-8"), password)
        return self.send(b"APOP " + username.encode("utf-8") + b" " + digest, barrier=True,
                         is_auth=True)
