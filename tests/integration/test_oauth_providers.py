"""OAuth against a real identity provider's protocols, end to end with ``twistd pop3ng``.

A stand-in provider (twisted.web on 127.0.0.1, run as a separate process by :func:`start_idp`:
the tests talk to the server over blocking sockets) serves a JWKS and an RFC 7662 introspection
endpoint from files the tests rewrite. Tokens are minted here with ``cryptography`` and a few
lines of JOSE (:func:`make_jwt`), independently of the library the server uses. Logins go over
TLS with raw ``AUTH OAUTHBEARER`` / ``AUTH XOAUTH2`` lines.

Run this module as a script (``python -m tests.integration.test_oauth_providers DIR``) to get
the stand-in provider alone.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Optional

from twisted.trial import unittest

from tests.integration.sasl_clients import b64, challenge, connect_from
from tests.integration.support import ROOT, _die_with_parent, start_server, stop_process

ISSUER = "https://idp.example.org/realms/mail"
AUDIENCE = "pop3ng"
CLIENT_ID, CLIENT_SECRET = "pop3ng-client", "s3cret/with:odd&chars"
USER = "alice@example.org"
FAILED = b"-ERR [AUTH] Authentication failed.\r\n"


# -- tokens, made here --------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk_of(key: Any, kid: str) -> Dict[str, str]:
    numbers = key.public_key().public_numbers()

    def as_b64(value: int) -> str:
        return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": as_b64(numbers.n),
            "e": as_b64(numbers.e)}


def public_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def make_jwt(header: Dict[str, Any], claims: Dict[str, Any], key: Any = None,
             hmac_secret: Optional[bytes] = None) -> str:
    """A compact JWS: RS256 with ``key``, HS256 with ``hmac_secret``, or unsigned (``alg: none``)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = (_b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode()))
    if key is not None:
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    elif hmac_secret is not None:
        signature = hmac.new(hmac_secret, signing_input.encode(), hashlib.sha256).digest()
    else:
        signature = b""
    return signing_input + "." + _b64url(signature)


def claims(**changes: Any) -> Dict[str, Any]:
    now = int(time.time())
    base: Dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "f81d4fae", "email": USER,
                            "email_verified": True, "iat": now, "nbf": now - 5, "exp": now + 300}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def oauthbearer(token: str, user: str = USER) -> bytes:
    return b64(("n,a=%s,\x01host=localhost\x01port=995\x01auth=Bearer %s\x01\x01" % (user, token)).encode())


def xoauth2(token: str, user: str = USER) -> bytes:
    return b64(("user=%s\x01auth=Bearer %s\x01\x01" % (user, token)).encode())


# -- the stand-in identity provider -------------------------------------------------------------


def serve(directory: str) -> None:
    """The provider: GET /jwks (``jwks.json``), POST /introspect (``introspection.json``: token ->
    answer; anything else is inactive). Every request is appended to ``requests.log``."""
    from twisted.internet import reactor
    from twisted.web import resource, server

    def record(what: str) -> None:
        with open(os.path.join(directory, "requests.log"), "a") as f:
            f.write(what + "\n")

    class JWKS(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            record("jwks")
            request.setHeader(b"content-type", b"application/json")
            with open(os.path.join(directory, "jwks.json"), "rb") as f:
                return f.read()

    class Introspect(resource.Resource):
        isLeaf = True

        def render_POST(self, request: Any) -> bytes:
            from urllib.parse import quote

            expected = "%s:%s" % (quote(CLIENT_ID, safe=""), quote(CLIENT_SECRET, safe=""))
            if request.getHeader(b"authorization") != b"Basic " + base64.b64encode(expected.encode()):
                record("introspect unauthorised")
                request.setResponseCode(401)
                return b'{"error": "invalid_client"}'
            token = request.args.get(b"token", [b""])[0].decode()
            record("introspect")
            with open(os.path.join(directory, "introspection.json")) as f:
                answers = json.load(f)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(answers.get(token, {"active": False})).encode()

    root = resource.Resource()
    root.putChild(b"jwks", JWKS())
    root.putChild(b"introspect", Introspect())
    port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
    with open(os.path.join(directory, "port.tmp"), "w") as f:
        f.write(str(port.getHost().port))
    os.rename(os.path.join(directory, "port.tmp"), os.path.join(directory, "port"))
    reactor.run()


class IdentityProvider:
    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="pop3ng-idp-")
        self.keys = {"kid-1": rsa_key()}
        self.write_jwks()
        self.set_introspection({})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_oauth_providers", self.directory],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        port_file = os.path.join(self.directory, "port")
        while not os.path.exists(port_file):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the stand-in identity provider did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            self.url = "http://127.0.0.1:%s" % f.read().strip()

    def write_jwks(self) -> None:
        document = {"keys": [jwk_of(key, kid) for kid, key in self.keys.items()]}
        with open(os.path.join(self.directory, "jwks.json.tmp"), "w") as f:
            json.dump(document, f)
        os.rename(os.path.join(self.directory, "jwks.json.tmp"), os.path.join(self.directory, "jwks.json"))

    def set_introspection(self, answers: Dict[str, Any]) -> None:
        with open(os.path.join(self.directory, "introspection.json.tmp"), "w") as f:
            json.dump(answers, f)
        os.rename(os.path.join(self.directory, "introspection.json.tmp"),
                  os.path.join(self.directory, "introspection.json"))

    def requests(self, kind: str) -> int:
        try:
            with open(os.path.join(self.directory, "requests.log")) as f:
                return sum(1 for line in f if line.strip() == kind)
        except FileNotFoundError:
            return 0

    def token(self, kid: str = "kid-1", **changes: Any) -> str:
        return make_jwt({"alg": "RS256", "typ": "JWT", "kid": kid}, claims(**changes), self.keys[kid])

    def stop(self) -> None:
        """Stop the provider and remove its directory (its signing keys' JWKS, its request log)."""
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


# -- the tests ----------------------------------------------------------------------------------


class _ProviderTests(unittest.TestCase):
    """One provider and one server per class (trial has no setUpClass: made at the first test,
    stopped at exit). Each failing login comes from its own source address."""

    idp: Optional[IdentityProvider] = None
    server: Any = None
    sources = iter("127.0.%d.%d" % (a, b) for a in range(20, 40) for b in range(1, 250))

    def server_args(self, idp: IdentityProvider, root: str) -> list:
        raise NotImplementedError

    def setUp(self) -> None:
        cls = type(self)
        if cls.server is None:
            cls.idp = IdentityProvider()
            atexit.register(cls.idp.stop)
            cls.root = tempfile.mkdtemp(prefix="pop3ng-oauth-")
            atexit.register(shutil.rmtree, cls.root, True)  # atexit is LIFO: after the server stops
            cls.server = start_server(cls.root, {USER: "unused password"}, extra_args=[
                "--auth-failure-delay", "0.05", "--max-auth-failure-delay", "0.1"]
                + self.server_args(cls.idp, cls.root))
            atexit.register(cls.server.stop)
            os.makedirs(cls.server.maildir(USER), exist_ok=True)

    def session(self, source: Optional[str] = None):
        s = connect_from(self.server, source or next(self.sources), tls=True)
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))
        return s

    def assertLoggedIn(self, line: bytes, session: Any) -> None:
        self.assertEqual(line, b"+OK Logged in.\r\n")
        self.assertTrue(session.command(b"STAT").startswith(b"+OK"))
        self.assertTrue(session.command(b"QUIT").startswith(b"+OK"))
        self.assertTrue(session.closed())

    def assertRefused(self, token: str) -> None:
        """OAUTHBEARER with ``token``: the RFC 7628 error challenge, then -ERR [AUTH]."""
        s = self.session()
        error = json.loads(challenge(s.command(b"AUTH OAUTHBEARER " + oauthbearer(token))))
        self.assertEqual(error["status"], "invalid_token")
        self.assertEqual(s.command(b"AQ=="), FAILED)
        self.assertIsNone(self.server.process.poll())

    def assertNoTraceback(self) -> None:
        self.assertNotIn("Traceback", self.server.log())


class JWKSTests(_ProviderTests):
    """``--oauth-jwks-url``: tokens validated locally with the provider's published keys."""

    def server_args(self, idp: IdentityProvider, root: str) -> list:
        return ["--oauth-jwks-url", idp.url + "/jwks", "--oauth-issuer", ISSUER,
                "--oauth-audience", AUDIENCE]

    def test_valid_token_oauthbearer_and_xoauth2(self) -> None:
        s = self.session("127.0.0.1")
        s.send(b"CAPA\r\n")
        s.line()
        self.assertIn(b"OAUTHBEARER", s.body())
        self.assertLoggedIn(s.command(b"AUTH OAUTHBEARER " + oauthbearer(self.idp.token())), s)
        s = self.session("127.0.0.1")
        self.assertEqual(s.command(b"AUTH XOAUTH2"), b"+ \r\n")
        self.assertLoggedIn(s.command(xoauth2(self.idp.token())), s)

    def test_claimed_user_must_match_the_token(self) -> None:
        s = self.session()
        challenge(s.command(b"AUTH XOAUTH2 " + xoauth2(self.idp.token(), user="bob@example.org")))
        self.assertEqual(s.command(b""), FAILED)

    def test_expired_token(self) -> None:
        now = int(time.time())
        self.assertRefused(self.idp.token(exp=now - 600, iat=now - 900, nbf=now - 900))

    def test_not_yet_valid_token(self) -> None:
        self.assertRefused(self.idp.token(nbf=int(time.time()) + 600))

    def test_wrong_audience_and_missing_audience(self) -> None:
        self.assertRefused(self.idp.token(aud="another-app"))
        self.assertRefused(self.idp.token(aud=None))

    def test_wrong_issuer(self) -> None:
        self.assertRefused(self.idp.token(iss="https://evil.example.net/"))

    def test_unverified_email_and_missing_claim(self) -> None:
        self.assertRefused(self.idp.token(email_verified=False))
        self.assertRefused(self.idp.token(email=None))

    def test_tampered_token(self) -> None:
        header, payload, signature = self.idp.token().split(".")
        forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
        forged["email"] = "bob@example.org"
        self.assertRefused(".".join([header, _b64url(json.dumps(forged).encode()), signature]))

    def test_key_of_another_provider(self) -> None:
        self.assertRefused(make_jwt({"alg": "RS256", "kid": "kid-1"}, claims(), rsa_key()))

    def test_alg_confusion_hs256_with_the_public_key(self) -> None:
        pem = public_pem(self.idp.keys["kid-1"])
        for secret in (pem, pem.strip()):
            self.assertRefused(make_jwt({"alg": "HS256", "kid": "kid-1"}, claims(), hmac_secret=secret))
        self.assertNoTraceback()

    def test_alg_none(self) -> None:
        self.assertRefused(make_jwt({"alg": "none", "kid": "kid-1"}, claims()))
        self.assertRefused(make_jwt({"alg": "None"}, claims()))
        self.assertNoTraceback()

    def test_garbage_tokens(self) -> None:
        for token in ("x", "a.b.c", "a.b.c.d.e", "eyJhbGciOiJSUzI1NiJ9.e30.", "\u00e9.\u00e9.\u00e9"):
            self.assertRefused(token)
        self.assertNoTraceback()

    def test_rotated_key_is_fetched(self) -> None:
        """A token signed with a new key (new kid) makes the server refetch the JWKS."""
        s = self.session("127.0.0.1")
        self.assertLoggedIn(s.command(b"AUTH OAUTHBEARER " + oauthbearer(self.idp.token())), s)
        before = self.idp.requests("jwks")
        # Rotation: a new key is published beside the old one. (No test before this one may
        # send an unknown kid: that refetch would make this one wait a minute.)
        self.idp.keys["kid-2"] = rsa_key()
        self.idp.write_jwks()
        s = self.session("127.0.0.1")
        self.assertLoggedIn(s.command(b"AUTH OAUTHBEARER " + oauthbearer(self.idp.token("kid-2"))), s)
        self.assertEqual(self.idp.requests("jwks"), before + 1)
        # Unknown kids again and again: at most one refetch a minute.
        for _ in range(3):
            self.assertRefused(make_jwt({"alg": "RS256", "kid": "kid-%s" % os.urandom(4).hex()},
                                        claims(), rsa_key()))
        self.assertEqual(self.idp.requests("jwks"), before + 1)

    def test_removed_user_cannot_log_in_with_a_token(self) -> None:
        """F6: the token's user must be in the passwd-file (and not disabled)."""
        users = os.path.join(self.root, "users")
        with open(users) as f:
            original = f.read()
        self.addCleanup(_rewrite, users, original)
        _rewrite(users, "someone.else@example.org:{PLAIN}x\n")
        self.assertRefusedAfterValidation(self.idp.token())
        _rewrite(users, "%s:{PLAIN}x::::::nologin\n" % USER)  # extra fields: the 8th
        self.assertRefusedAfterValidation(self.idp.token())

    def assertRefusedAfterValidation(self, token: str) -> None:
        """The token is valid, the user is not: no error challenge, -ERR [AUTH] at once."""
        s = self.session()
        self.assertEqual(s.command(b"AUTH OAUTHBEARER " + oauthbearer(token)), FAILED)


class IntrospectionTests(_ProviderTests):
    """``--oauth-introspection-url``: the provider is asked about each token (RFC 7662)."""

    def server_args(self, idp: IdentityProvider, root: str) -> list:
        secret_file = os.path.join(root, "client-secret")
        with open(secret_file, "w") as f:
            f.write(CLIENT_SECRET + "\n")
        return ["--oauth-introspection-url", idp.url + "/introspect", "--oauth-client-id", CLIENT_ID,
                "--oauth-client-secret-file", secret_file, "--oauth-audience", AUDIENCE]

    def answer(self, token: str, **changes: Any) -> None:
        answer = dict(claims(**changes), active=True, client_id=AUDIENCE, token_type="Bearer")
        answers = {token: {k: v for k, v in answer.items() if v is not None}}
        self.idp.set_introspection(answers)

    def test_active_token_logs_in_and_is_cached(self) -> None:
        token = "opaque-" + os.urandom(8).hex()
        self.answer(token)
        before = self.idp.requests("introspect")
        for _ in range(2):
            s = self.session("127.0.0.1")
            self.assertLoggedIn(s.command(b"AUTH XOAUTH2 " + xoauth2(token)), s)
        self.assertEqual(self.idp.requests("introspect"), before + 1)
        self.assertEqual(self.idp.requests("introspect unauthorised"), 0)

    def test_inactive_token_refused(self) -> None:
        token = "opaque-" + os.urandom(8).hex()
        self.idp.set_introspection({token: {"active": False}})
        self.assertRefused(token)
        self.assertRefused("unknown-" + os.urandom(8).hex())

    def test_expired_or_wrong_audience_refused(self) -> None:
        token = "opaque-" + os.urandom(8).hex()
        self.answer(token, exp=int(time.time()) - 600)
        self.assertRefused(token)
        self.answer(token, aud="another-app")
        self.assertRefused(token)


def _rewrite(path: str, text: str) -> None:
    """Replace a passwd-file so that the server sees a change even within one timestamp tick."""
    stamp = os.stat(path).st_mtime_ns
    with open(path, "w") as f:
        f.write(text)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))


if __name__ == "__main__":
    serve(sys.argv[1])
