"""OAuth access tokens that are JWTs, validated locally against the identity provider's JWKS.

``twistd pop3ng --oauth-jwks-url URL --oauth-issuer ISS --oauth-audience AUD`` (or
``--oauth-jwks-file PATH``): :class:`JWTValidator` is an
:class:`~twisted_pop3ng.auth.oauth.ITokenValidator`; the user is the token's
``--oauth-username-claim`` (``email`` by default, as Dovecot's ``username_attribute``).

Rules of this module:

* The signature and the time claims are checked by joserfc; this module chooses the key and the
  algorithm. The algorithm must be in an allow-list that can never hold ``none`` or an HMAC
  algorithm (``HS256`` "signed" with the provider's *public* key is the classic confusion attack),
  and must suit the key's type and the key's own ``alg``. Only compact JWS (three parts) is
  accepted: no JWE, no ``crit`` header.
* Issuer and audience are required (:class:`JWTValidator` refuses to be made without them): a
  token the provider issued to another application must not open a mailbox.
* Keys (:class:`KeyCache`) are fetched at the first use, again after ``max_age``, and at once when
  a token names an unknown ``kid`` (key rotation) -- that last at most once per ``min_refetch``
  seconds, so random kids cannot make us hammer the provider. A failed refresh keeps the keys we
  have; with no keys at all the login gets ``-ERR [SYS/TEMP]`` (the provider is down, the
  password is not wrong).
* A refused token is None (``-ERR [AUTH]`` after the failure delay); the reason is logged, the
  token never.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from twisted_pop3ng.auth.oauth import ITokenValidator
from twisted_pop3ng.errors import TemporaryFailure

log = Logger()

#: Key type each signature algorithm needs (RFC 7518 §3.1, RFC 8037).
KEY_TYPES: Dict[str, str] = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
    "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC",
    "EdDSA": "OKP",
}
DEFAULT_ALGORITHMS: Tuple[str, ...] = ("RS256", "ES256", "PS256")
#: Clock skew tolerated on exp, nbf and iat (RFC 7519 §4.1.4: "a few minutes" at most).
LEEWAY = 60
#: Keys are refetched after this long even without an unknown kid.
MAX_KEY_AGE = 3600.0
#: An unknown kid refetches the keys at most this often (a file: much more often, it is local).
MIN_REFETCH = 60.0
MIN_REFETCH_FILE = 1.0
#: A JWKS bigger than this is refused (a provider's has a handful of keys, a few kB).
MAX_JWKS_BYTES = 1 << 20
#: Seconds an HTTP fetch of the JWKS may take.
FETCH_TIMEOUT = 10.0


def parse_algorithms(text: str) -> Tuple[str, ...]:
    """``--oauth-algorithms``: a comma-separated allow-list of asymmetric signature algorithms."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError("no algorithm given")
    for name in names:
        if name.lower() == "none" or name.upper().startswith("HS"):
            raise ValueError("%s is never allowed: tokens must be signed with the provider's "
                             "private key" % name)
        if name not in KEY_TYPES:
            raise ValueError("unknown algorithm %s; known: %s" % (name, ", ".join(KEY_TYPES)))
    return names


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def token_header(token: str) -> Optional[Dict[str, Any]]:
    """The protected header of a compact JWS, or None if ``token`` is not one."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return None
    try:
        header = json.loads(_b64decode(parts[0]))
    except (ValueError, binascii.Error):
        return None
    return header if isinstance(header, dict) else None


def parse_jwks(data: bytes) -> List[Any]:
    """The usable signature keys of a JWKS document (joserfc keys); ValueError if there are none.

    Keys for encryption (``use: enc``), symmetric keys (``oct``) and keys joserfc cannot import
    are skipped, not fatal: a provider may publish more than we use."""
    from joserfc.errors import JoseError
    from joserfc.jwk import JWKRegistry

    if len(data) > MAX_JWKS_BYTES:
        raise ValueError("JWKS larger than %d bytes" % MAX_JWKS_BYTES)
    try:
        document = json.loads(data)
    except ValueError as error:
        raise ValueError("JWKS is not JSON: %s" % error)
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('JWKS has no "keys" list')
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if entry.get("use", "sig") != "sig" or "d" in entry:  # "d": a private key, published by mistake
            continue
        try:
            keys.append(JWKRegistry.import_key(entry))
        except (JoseError, ValueError, TypeError, KeyError):
            continue
    if not keys:
        raise ValueError("JWKS holds no usable signature key")
    return keys


def url_fetcher(url: str, timeout: float = FETCH_TIMEOUT) -> Callable[[], defer.Deferred]:
    """A ``fetch`` for :class:`KeyCache`: GET ``url`` with treq."""

    def fetch() -> defer.Deferred:
        import treq
        from twisted.web.http_headers import Headers

        d = treq.get(url, timeout=timeout, headers=Headers({b"Accept": [b"application/json"]}))

        def got(response: Any) -> Any:
            if response.code != 200:
                raise ValueError("HTTP status %d" % response.code)
            return read_limited(response, MAX_JWKS_BYTES)

        return d.addCallback(got)

    return fetch


def read_limited(response: Any, limit: int) -> defer.Deferred:
    """The body of a treq response, or ValueError past ``limit`` bytes."""
    import treq

    chunks: List[bytes] = []
    size = [0]

    def collect(data: bytes) -> None:
        size[0] += len(data)
        if size[0] > limit:
            raise ValueError("response larger than %d bytes" % limit)
        chunks.append(data)

    return treq.collect(response, collect).addCallback(lambda _: b"".join(chunks))


def file_fetcher(path: str) -> Callable[[], defer.Deferred]:
    """A ``fetch`` for :class:`KeyCache`: read a JWKS file (small, local: read at once)."""

    def fetch() -> defer.Deferred:
        try:
            with open(path, "rb") as f:
                return defer.succeed(f.read(MAX_JWKS_BYTES + 1))
        except OSError as error:
            return defer.fail(error)

    return fetch


class KeyCache:
    """The provider's keys: fetched when needed, kept ``max_age``, refetched for unknown kids."""

    def __init__(self, fetch: Callable[[], defer.Deferred], source: str,
                 clock: Callable[[], float] = time.monotonic, max_age: float = MAX_KEY_AGE,
                 min_refetch: float = MIN_REFETCH) -> None:
        self.fetch = fetch
        self.source = source
        self.clock = clock
        self.max_age = max_age
        self.min_refetch = min_refetch
        self.keys: List[Any] = []
        self.fetched_at: Optional[float] = None
        #: When an unknown kid last caused a refetch (or a fetch last failed): rate limit.
        self._last_forced: Optional[float] = None
        self._waiting: Optional[List[defer.Deferred]] = None
        #: Fetches done (for tests and metrics).
        self.fetches = 0

    def current(self) -> defer.Deferred:
        """The keys, fetched first if there are none or they are older than ``max_age``."""
        now = self.clock()
        stale = self.fetched_at is None or now - self.fetched_at >= self.max_age
        if stale and self._may_force(now):  # (after a failed fetch: not again at once)
            return self._refresh()
        return defer.succeed(self.keys)

    def refetch_unknown_kid(self) -> defer.Deferred:
        """Refetch for a kid we do not know, unless one did so less than ``min_refetch`` ago;
        fires with the (possibly unchanged) keys."""
        now = self.clock()
        if not self._may_force(now):
            return defer.succeed(self.keys)
        self._last_forced = now
        return self._refresh()

    def _may_force(self, now: float) -> bool:
        return self._last_forced is None or now - self._last_forced >= self.min_refetch

    def _refresh(self) -> defer.Deferred:
        """One fetch at a time: callers that arrive meanwhile wait for the same one."""
        mine: defer.Deferred = defer.Deferred()
        if self._waiting is not None:
            self._waiting.append(mine)
            return mine
        self._waiting = [mine]
        self.fetches += 1
        d = defer.maybeDeferred(self.fetch).addCallback(parse_jwks)
        d.addCallbacks(self._fetched, self._fetch_failed)
        return mine

    def _fetched(self, keys: List[Any]) -> None:
        self.keys, self.fetched_at = keys, self.clock()
        self._wake()

    def _fetch_failed(self, failure: Any) -> None:
        log.error("cannot fetch the OAuth keys from {source}: {error}{keeping}", source=self.source,
                  error=failure.getErrorMessage(),
                  keeping=" (keeping the %d keys we have)" % len(self.keys) if self.keys else "")
        self._last_forced = self.clock()  # retry after min_refetch, not at every login
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting or [], None
        for d in waiting:
            d.callback(self.keys)


@implementer(ITokenValidator)
class JWTValidator:
    """Validates JWT access tokens with :class:`KeyCache` keys (see the module's rules)."""

    def __init__(self, keys: KeyCache, issuer: str, audience: str,
                 username_claim: str = "email", algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
                 leeway: int = LEEWAY, clock: Callable[[], float] = time.time) -> None:
        if not issuer or not audience:
            raise ValueError("JWT validation needs an issuer and an audience")
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.username_claim = username_claim
        self.algorithms = parse_algorithms(",".join(algorithms))
        self.leeway = leeway
        self.clock = clock

    def validate(self, username: str, token: str) -> defer.Deferred:
        header = token_header(token)
        if header is None:
            return self._refused("not a signed JWT")
        alg = header.get("alg")
        if alg not in self.algorithms:
            return self._refused("algorithm %r is not allowed" % (alg,))
        if "crit" in header:
            return self._refused("critical header extensions are not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return self._refused("malformed kid")
        d = self.keys.current()
        d.addCallback(self._with_keys, token, alg, kid, True)
        return d

    def _with_keys(self, keys: List[Any], token: str, alg: str, kid: Optional[str],
                   may_refetch: bool) -> Any:
        if not keys:
            raise TemporaryFailure("The identity provider's keys are not available, try again later")
        candidates = [k for k in keys if kid is None or k.kid == kid]
        if not candidates and may_refetch:
            d = self.keys.refetch_unknown_kid()
            return d.addCallback(self._with_keys, token, alg, kid, False)
        candidates = [k for k in candidates if k.key_type == KEY_TYPES[alg]
                      and k.get("alg", alg) == alg]
        if not candidates:
            return self._refused("no %s key %s" % (alg, "with kid %r" % kid if kid else "at all"))
        claims = self._verified_claims(token, alg, candidates)
        if claims is None:
            return self._refused("bad signature")
        return self._user(claims)

    @staticmethod
    def _verified_claims(token: str, alg: str, keys: List[Any]) -> Optional[Dict[str, Any]]:
        from joserfc import jws
        from joserfc.errors import JoseError

        for key in keys:
            try:
                payload = jws.deserialize_compact(token, key, algorithms=[alg]).payload
            except (JoseError, ValueError, TypeError):
                continue
            try:
                claims = json.loads(payload or b"")
            except ValueError:
                return None
            return claims if isinstance(claims, dict) else None
        return None

    def _user(self, claims: Dict[str, Any]) -> Optional[str]:
        from joserfc.errors import JoseError
        from joserfc.jwt import JWTClaimsRegistry

        registry = JWTClaimsRegistry(
            now=int(self.clock()), leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True})
        try:
            registry.validate(claims)
        except JoseError as error:
            return self._refused_now("claims: %s" % (error.description or error.error))
        user = claims.get(self.username_claim)
        if not isinstance(user, str) or not user:
            return self._refused_now("no %r claim" % self.username_claim)
        if self.username_claim == "email" and claims.get("email_verified") is False:
            return self._refused_now("email not verified")
        return user

    @staticmethod
    def _refused_now(reason: str) -> None:
        log.info("OAuth token refused: {reason}", reason=reason)
        return None

    def _refused(self, reason: str) -> defer.Deferred:
        return defer.succeed(self._refused_now(reason))


def from_options(url: Optional[str], path: Optional[str], issuer: str, audience: str,
                 username_claim: str, algorithms: Sequence[str]) -> JWTValidator:
    """The validator ``--oauth-jwks-url``/``--oauth-jwks-file`` describe; a file is read now, so
    that a bad one is a usage error rather than failed logins."""
    if path is not None:
        with open(path, "rb") as f:
            parse_jwks(f.read(MAX_JWKS_BYTES + 1))
        cache = KeyCache(file_fetcher(path), os.path.abspath(path), min_refetch=MIN_REFETCH_FILE)
    else:
        assert url is not None
        cache = KeyCache(url_fetcher(url), url)
    return JWTValidator(cache, issuer, audience, username_claim, algorithms)
