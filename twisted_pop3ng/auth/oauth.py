"""Bearer-token validation for OAUTHBEARER (RFC 7628) and XOAUTH2.

The protocol never speaks to an identity provider itself: it asks an :class:`ITokenValidator`,
handed to :class:`~twisted_pop3ng.server.POP3ServerFactory` as ``token_validator``. Shipped:
:class:`HMACTokenValidator` here, self-contained signed tokens for services that mint their own
(``--oauth-hmac-key FILE``); :mod:`twisted_pop3ng.auth.jwt_validator`, a provider's JWTs checked
against its JWKS (``--oauth-jwks-url``); :mod:`twisted_pop3ng.auth.introspection`, RFC 7662
introspection (``--oauth-introspection-url``). The user a token names must still be known to the
``--auth`` checkers (:class:`~twisted_pop3ng.auth.checkers.PreauthenticatedChecker`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any, Callable, Optional

from zope.interface import Interface, implementer


class ITokenValidator(Interface):
    def validate(username, token):
        """The user (str) that ``token`` authorises, or None; may return a Deferred.

        ``username`` is what the client claimed ("" if it claimed nothing); the mechanism refuses
        the login if the result differs from a non-empty claim. Raise (or fail with)
        :class:`~twisted_pop3ng.errors.TemporaryFailure` when the provider cannot answer: the
        client gets ``-ERR [SYS/TEMP]`` rather than an authentication failure.
        """


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(key: bytes, username: str, lifetime: float = 3600.0, now: Optional[float] = None) -> str:
    """A token for :class:`HMACTokenValidator`: ``base64url(claims).base64url(HMAC-SHA256)``."""
    issued = time.time() if now is None else now
    claims = _b64(json.dumps({"sub": username, "exp": int(issued + lifetime)}).encode())
    return claims + "." + _b64(hmac.new(key, claims.encode(), hashlib.sha256).digest())


@implementer(ITokenValidator)
class HMACTokenValidator:
    """Accepts tokens from :func:`issue_token` with this key that have not expired."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("the token key must be at least 16 bytes")
        self.key = key
        self.clock = clock

    @classmethod
    def from_file(cls, path: str) -> "HMACTokenValidator":
        with open(path, "rb") as f:
            return cls(f.read().strip())

    def validate(self, username: str, token: str) -> Optional[str]:
        claims, sep, signature = token.partition(".")
        if not sep:
            return None
        expected = _b64(hmac.new(self.key, claims.encode("ascii", "replace"), hashlib.sha256).digest())
        if not hmac.compare_digest(expected.encode(), signature.encode("ascii", "replace")):
            return None
        try:
            payload: Any = json.loads(_unb64(claims))
            subject, expires = str(payload["sub"]), float(payload["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < self.clock():
            return None
        return subject
