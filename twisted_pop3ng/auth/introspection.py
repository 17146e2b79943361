"""OAuth access tokens checked by asking the identity provider: RFC 7662 token introspection.

``twistd pop3ng --oauth-introspection-url URL --oauth-client-id ID --oauth-client-secret-file F``:
:class:`IntrospectionValidator` is an :class:`~twisted_pop3ng.auth.oauth.ITokenValidator` for
opaque tokens (or JWTs whose revocation must take effect at once).

Rules of this module:

* One POST per token (``token=…&token_type_hint=access_token``, HTTP Basic client
  authentication as RFC 6749 §2.3.1 spells it), with treq and a timeout; the provider's answer
  must say ``"active": true`` -- anything else refuses the token.
* ``exp``/``nbf`` in the answer are checked too (with :data:`LEEWAY`), and ``iss``/``aud`` when
  ``--oauth-issuer``/``--oauth-audience`` are given (recommended: an active token the provider
  issued to another application is still active).
* Positive answers are cached for :data:`CACHE_SECONDS` (never past the token's ``exp``), keyed
  by a hash of the token, at most :data:`MAX_CACHED` of them; refusals are not cached.
* The provider unreachable, or answering other than 200 with JSON: ``-ERR [SYS/TEMP]`` (logged),
  not an authentication failure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from twisted_pop3ng.auth.oauth import ITokenValidator
from twisted_pop3ng.errors import TemporaryFailure

log = Logger()

CACHE_SECONDS = 60.0
MAX_CACHED = 10_000
LEEWAY = 60
TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 1 << 16


def _basic(client_id: str, secret: str) -> bytes:
    """RFC 6749 §2.3.1: both form-urlencoded, then HTTP Basic."""
    raw = "%s:%s" % (quote(client_id, safe=""), quote(secret, safe=""))
    return b"Basic " + base64.b64encode(raw.encode("utf-8"))


def treq_poster(url: str, client_id: str, secret: str,
                timeout: float = TIMEOUT) -> Callable[[str], defer.Deferred]:
    """``token -> Deferred(introspection answer as a dict)`` over HTTP with treq."""
    authorization = _basic(client_id, secret)

    def post(token: str) -> defer.Deferred:
        import treq
        from twisted.web.http_headers import Headers

        from twisted_pop3ng.auth.jwt_validator import read_limited

        headers = Headers({b"Authorization": [authorization], b"Accept": [b"application/json"]})
        d = treq.post(url, data={"token": token, "token_type_hint": "access_token"},
                      headers=headers, timeout=timeout)

        def got(response: Any) -> Any:
            if response.code != 200:
                raise ValueError("HTTP status %d" % response.code)
            return read_limited(response, MAX_RESPONSE_BYTES).addCallback(json.loads)

        return d.addCallback(got)

    return post


@implementer(ITokenValidator)
class IntrospectionValidator:
    def __init__(self, post: Callable[[str], Any], source: str, username_claim: str = "email",
                 issuer: Optional[str] = None, audience: Optional[str] = None,
                 cache_seconds: float = CACHE_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self.post = post
        self.source = source
        self.username_claim = username_claim
        self.issuer = issuer
        self.audience = audience
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._cache: "OrderedDict[bytes, Tuple[str, float]]" = OrderedDict()
        #: Requests made to the provider (for tests and metrics).
        self.requests = 0

    def validate(self, username: str, token: str) -> defer.Deferred:
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[1] > now:
                self._cache.move_to_end(key)
                return defer.succeed(hit[0])
            del self._cache[key]
        self.requests += 1
        d = defer.maybeDeferred(self.post, token)
        d.addCallbacks(self._decide, self._unreachable, callbackArgs=(key,))
        return d

    def _unreachable(self, failure: Any) -> None:
        log.error("OAuth token introspection at {source} failed: {error}", source=self.source,
                  error=failure.getErrorMessage())
        raise TemporaryFailure("The identity provider is not reachable, try again later")

    def _decide(self, answer: Any, key: bytes) -> Optional[str]:
        if not isinstance(answer, dict):
            log.error("OAuth token introspection at {source}: the answer is not a JSON object",
                      source=self.source)
            raise TemporaryFailure("The identity provider is not reachable, try again later")
        reason = self._refusal(answer)
        if reason is not None:
            log.info("OAuth token refused: {reason}", reason=reason)
            return None
        user = answer[self.username_claim]
        now = self.clock()
        until = now + self.cache_seconds
        if isinstance(answer.get("exp"), (int, float)):
            until = min(until, float(answer["exp"]))
        if until > now:
            self._cache[key] = (user, until)
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        return user

    def _refusal(self, answer: Dict[str, Any]) -> Optional[str]:
        """Why the answer does not authorise a login, or None if it does."""
        if answer.get("active") is not True:
            return "not active"
        now = self.clock()
        exp, nbf = answer.get("exp"), answer.get("nbf")
        if exp is not None and (not isinstance(exp, (int, float)) or exp < now - LEEWAY):
            return "expired"
        if nbf is not None and (not isinstance(nbf, (int, float)) or nbf > now + LEEWAY):
            return "not yet valid"
        if self.issuer is not None and answer.get("iss") != self.issuer:
            return "issuer %r" % (answer.get("iss"),)
        if self.audience is not None:
            aud = answer.get("aud")
            if not (aud == self.audience or (isinstance(aud, list) and self.audience in aud)):
                return "audience %r" % (aud,)
        user = answer.get(self.username_claim)
        if not isinstance(user, str) or not user:
            return "no %r in the answer" % self.username_claim
        return None


def from_options(url: str, client_id: str, secret_file: str, username_claim: str,
                 issuer: Optional[str], audience: Optional[str]) -> IntrospectionValidator:
    """The validator the ``--oauth-introspection-url`` options describe (the secret read now)."""
    with open(secret_file, encoding="utf-8") as f:
        secret = f.read().strip()
    if not secret:
        raise ValueError("the client secret file is empty")
    return IntrospectionValidator(treq_poster(url, client_id, secret), url, username_claim,
                                  issuer, audience)
