"""Authentication for :class:`twisted_pop3ng.client.POP3Client`: picking and running a method.

The strongest method both sides support wins: SCRAM-SHA-256-PLUS > SCRAM-SHA-256 >
SCRAM-SHA-1(-PLUS) > CRAM-MD5 > PLAIN > LOGIN > USER/PASS. Methods that reveal the password (or
a bearer token, or a digest crackable offline: CRAM-MD5, APOP) go only over TLS unless the caller
allows plaintext; APOP only on request; OAuth with a token; the fallback from a refused SCRAM to a
plaintext method only when the caller opts in.
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

from twisted.internet import defer
from twisted.python.failure import Failure

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

    if TYPE_CHECKING:  # provided by the protocol class
        def send(self, line: bytes, multiline: bool = False, sink: Any = None, barrier: bool = False,
                 mechanism: Any = None, is_auth: bool = False,
                 discard_rest: bool = False) -> defer.Deferred: ...

        def capa(self, _next: bool = False) -> defer.Deferred: ...

        def _send_next(self, line: bytes, **kwargs: Any) -> defer.Deferred: ...

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
              apop: bool = False, allow_plain_fallback: bool = False) -> defer.Deferred:
        """Authenticate with the strongest method both sides support; fires with the new capabilities.

        Order: SCRAM-SHA-256-PLUS > SCRAM-SHA-256 > SCRAM-SHA-1(-PLUS) > CRAM-MD5 > PLAIN > LOGIN >
        USER/PASS. Without TLS, and unless ``allow_plaintext``, only SCRAM: the plaintext methods,
        the bearer-token ones and CRAM-MD5 / APOP (crackable offline) need TLS
        (:func:`~twisted_pop3ng.auth.sasl_client.needs_tls`). APOP only with ``apop=True``;
        OAUTHBEARER/XOAUTH2 with ``token``.

        ``allow_plain_fallback``: when the first, challenge-response method is refused (a server
        that offers SCRAM but stores only a crypt hash), try once more with the best plaintext
        method. Off by default: a server that merely holds a valid certificate would get the
        password itself from a client that would otherwise only have proven it knows it.
        """
        secret = token if token is not None else password
        if secret is None:
            return defer.fail(ValueError("a password or a token is needed"))
        secure = self.tls or allow_plaintext
        if apop:
            if not secure:
                return defer.fail(CapabilityError(
                    "refusing APOP without TLS (an observer could crack the password offline)"))
            self.mechanism = "APOP"
            d = self._apop(username, secret)
        else:
            binding = self._channel_binding()
            try:
                attempts, fallback_hint = self._plan(token is not None, mechanism, allow_plaintext,
                                                     allow_plain_fallback, binding is not None)
            except CapabilityError as e:
                return defer.fail(e)
            d = self._attempt(attempts, username, secret, binding)
            if fallback_hint:
                d.addErrback(_add_hint, fallback_hint)

        def logged_in(_: Any) -> defer.Deferred:
            self.logged_in = True
            return self.capa(_next=True)  # (before what the caller queued behind login())

        return d.addCallback(logged_in)

    def _plan(self, token: bool, mechanism: Optional[str], allow_plaintext: bool,
              allow_plain_fallback: bool, channel_binding: bool) -> Tuple[List[str], str]:
        """The methods to try, in order (one, or two with the fallback), and a hint for the user
        when the fallback was possible but not allowed; :class:`CapabilityError` when none fits."""
        secure = self.tls or allow_plaintext
        if mechanism is not None:
            name = mechanism.upper()
            if sasl_client.needs_tls(name) and not secure:
                raise CapabilityError("refusing %s without TLS: it would expose the secret to an "
                                      "observer" % name)
            return [name], ""
        names = sasl_client.choose(self.capabilities.get("SASL", []), secure=self.tls,
                                   allow_plaintext=allow_plaintext, token=token,
                                   channel_binding=channel_binding)
        attempts = list(names[:1])
        user_ok = not token and secure and ("USER" in self.capabilities or not self.capabilities)
        plain = [n for n in names if n in sasl_client.PLAINTEXT] + (["USER"] if user_ok else [])
        hint = ""
        if plain and not attempts:
            attempts.append(plain[0])  # no SASL mechanism we accept: USER/PASS
        elif plain and attempts[0] not in sasl_client.PLAINTEXT:
            # A challenge-response mechanism fails when the server stores only a hash it cannot
            # use for it (Dovecot offering SCRAM for {SHA512-CRYPT} users): then, over TLS (or
            # when plaintext is allowed), fall back once to the best plaintext method -- only when
            # the caller opted in (finding F18: it hands the password to the server).
            if allow_plain_fallback:
                attempts.append(plain[0])
            else:
                hint = ("if the server holds only a password hash %s cannot use, "
                        "allow_plain_fallback (pop3ng fetch --allow-plain-fallback) would send the "
                        "password with %s over TLS" % (attempts[0], plain[0]))
        if not attempts:
            why = "the server offers no authentication method we accept"
            if not secure:
                why += (" without TLS (methods that expose the password or token are refused "
                        "unless plaintext is allowed)")
            raise CapabilityError(why)
        return attempts, hint

    def _attempt(self, attempts: list, username: str, secret: str,
                 binding: Optional[Tuple[str, bytes]], retry: bool = False) -> defer.Deferred:
        """Try ``attempts[0]``; on an authentication failure go on with the rest (``retry``: ahead
        of the commands the caller queued behind :meth:`login`)."""
        name, rest = attempts[0], attempts[1:]
        self.mechanism = name
        send = self._send_next if retry else self.send
        if name == "USER":
            d = self._user_pass(username, secret, send)
        else:
            d = self._authenticate(name, username, secret, binding, send)
        if rest:
            def next_one(failure: Any) -> defer.Deferred:
                failure.trap(AuthError)
                return self._attempt(rest, username, secret, binding, retry=True)
            d.addErrback(next_one)
        return d

    def authenticate(self, name: str, username: str, secret: str,
                     channel_binding: Optional[Tuple[str, bytes]] = None) -> defer.Deferred:
        """``AUTH name`` (RFC 5034) with the initial response when the mechanism has one."""
        return self._authenticate(name, username, secret, channel_binding, self.send)

    def _authenticate(self, name: str, username: str, secret: str,
                      channel_binding: Optional[Tuple[str, bytes]], send: Any) -> defer.Deferred:
        try:
            mech = sasl_client.make(name, username, secret, channel_binding)
        except sasl_client.SASLError as e:
            return defer.fail(e)
        initial = mech.initial()
        line = b"AUTH " + name.encode("ascii")
        if initial is not None:
            line += b" " + (base64.b64encode(initial) if initial else b"=")
        return send(line, barrier=True, mechanism=mech, is_auth=True)

    def _user_pass(self, username: str, password: str, send: Any) -> defer.Deferred:
        d = send(b"USER " + username.encode("utf-8"), barrier=True, is_auth=True)
        return d.addCallback(lambda _: self._send_next(b"PASS " + password.encode("utf-8"),
                                                       barrier=True, is_auth=True))

    def _apop(self, username: str, password: str) -> defer.Deferred:
        match = re.search(r"<[^<>]*@[^<>]*>", self.greeting)
        if not match:
            return defer.fail(CapabilityError("the server greeting has no APOP timestamp"))
        digest = sasl_client.apop_digest(match.group(0).encode("utf-8"), password)
        return self.send(b"APOP " + username.encode("utf-8") + b" " + digest, barrier=True,
                         is_auth=True)


def _add_hint(failure: Failure, hint: str) -> Failure:
    """An authentication refusal gets the hint; anything else passes unchanged."""
    if failure.check(AuthError) and not failure.value.hint:
        failure.value.hint = hint
    return failure
