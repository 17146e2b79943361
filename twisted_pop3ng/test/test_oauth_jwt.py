"""JWTValidator and KeyCache (twisted_pop3ng.auth.jwt_validator), hermetic: keys in memory, a fake
clock, a fetch function the test controls. Tokens are made here with ``cryptography``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, Dict, List, Optional

from twisted.internet import defer
from twisted.trial import unittest

from twisted_pop3ng.auth import jwt_validator
from twisted_pop3ng.auth.jwt_validator import JWTValidator, KeyCache, parse_algorithms, parse_jwks
from twisted_pop3ng.auth.oauth import ITokenValidator
from twisted_pop3ng.errors import TemporaryFailure

NOW = 1_800_000_000
ISS, AUD = "https://idp.example.org", "pop3ng"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class Keys:
    """Test signing keys (made once: RSA generation is slow) and their JWKS entries."""

    _cache: Dict[str, Any] = {}

    @classmethod
    def rsa(cls, name: str) -> Any:
        if name not in cls._cache:
            from cryptography.hazmat.primitives.asymmetric import rsa

            cls._cache[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls._cache[name]

    @classmethod
    def ec(cls, name: str) -> Any:
        if name not in cls._cache:
            from cryptography.hazmat.primitives.asymmetric import ec

            cls._cache[name] = ec.generate_private_key(ec.SECP256R1())
        return cls._cache[name]


def rsa_jwk(key: Any, kid: str, **extra: str) -> Dict[str, str]:
    numbers = key.public_key().public_numbers()
    return dict({"kty": "RSA", "kid": kid, "n": _int(numbers.n), "e": _int(numbers.e)}, **extra)


def ec_jwk(key: Any, kid: str) -> Dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "kid": kid, "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big"))}


def sign(header: Dict[str, Any], claims: Dict[str, Any], key: Any = None,
         secret: Optional[bytes] = None) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    data = (_b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())).encode()
    if isinstance(key, rsa.RSAPrivateKey):
        if header["alg"].startswith("PS"):
            signature = key.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        else:
            signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif secret is not None:
        signature = hmac.new(secret, data, hashlib.sha256).digest()
    else:
        signature = b""
    return data.decode() + "." + _b64(signature)


def claims(**changes: Any) -> Dict[str, Any]:
    base = {"iss": ISS, "aud": AUD, "sub": "1234", "email": "alice@example.org", "iat": NOW - 10,
            "exp": NOW + 300}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


class Provider:
    """The fetch function: serves ``self.jwks``, counts calls, can fail or hold the answer."""

    def __init__(self, *keys: Dict[str, str]) -> None:
        self.jwks: Dict[str, Any] = {"keys": list(keys)}
        self.calls = 0
        self.fail = False
        self.pending: List[defer.Deferred] = []
        self.hold = False

    def fetch(self) -> defer.Deferred:
        self.calls += 1
        if self.fail:
            return defer.fail(ConnectionRefusedError("connection refused"))
        body = json.dumps(self.jwks).encode()
        if self.hold:
            d: defer.Deferred = defer.Deferred()
            self.pending.append(d)
            return d.addCallback(lambda _: body)
        return defer.succeed(body)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class JWTValidatorTests(unittest.TestCase):
    def setUp(self) -> None:
        self.key = Keys.rsa("one")
        self.provider = Provider(rsa_jwk(self.key, "k1"), ec_jwk(Keys.ec("ec"), "e1"))
        self.monotonic = Clock()
        self.cache = KeyCache(self.provider.fetch, "test", clock=self.monotonic)
        self.validator = JWTValidator(self.cache, ISS, AUD, clock=lambda: NOW)

    def check(self, token: str, username: str = "") -> Optional[str]:
        return self.successResultOf(self.validator.validate(username, token))

    def token(self, alg: str = "RS256", kid: Optional[str] = "k1", key: Any = None, **changes: Any) -> str:
        header = {"alg": alg, "typ": "JWT"}
        if kid is not None:
            header["kid"] = kid
        return sign(header, claims(**changes), key if key is not None else self.key)

    def test_provides_the_interface(self) -> None:
        self.assertTrue(ITokenValidator.providedBy(self.validator))

    def test_valid_rs256_es256_ps256(self) -> None:
        self.assertEqual(self.check(self.token()), "alice@example.org")
        self.assertEqual(self.check(self.token("ES256", "e1", Keys.ec("ec"))), "alice@example.org")
        self.assertEqual(self.check(self.token("PS256")), "alice@example.org")
        self.assertEqual(self.provider.calls, 1)

    def test_token_without_kid_tries_the_keys_of_its_type(self) -> None:
        self.assertEqual(self.check(self.token(kid=None)), "alice@example.org")

    def test_time_claims_with_leeway(self) -> None:
        self.assertEqual(self.check(self.token(exp=NOW - 30)), "alice@example.org")  # within 60 s
        self.assertIsNone(self.check(self.token(exp=NOW - 61)))
        self.assertIsNone(self.check(self.token(exp=None)))
        self.assertIsNone(self.check(self.token(nbf=NOW + 120)))
        self.assertEqual(self.check(self.token(nbf=NOW + 30)), "alice@example.org")
        self.assertIsNone(self.check(self.token(iat=NOW + 600)))

    def test_issuer_and_audience(self) -> None:
        self.assertIsNone(self.check(self.token(iss="https://other.example")))
        self.assertIsNone(self.check(self.token(iss=None)))
        self.assertIsNone(self.check(self.token(aud="other")))
        self.assertIsNone(self.check(self.token(aud=None)))
        self.assertEqual(self.check(self.token(aud=["other", AUD])), "alice@example.org")

    def test_username_claim(self) -> None:
        self.assertIsNone(self.check(self.token(email=None)))
        self.assertIsNone(self.check(self.token(email_verified=False)))
        self.assertIsNone(self.check(self.token(email=["a", "b"])))
        by_sub = JWTValidator(self.cache, ISS, AUD, username_claim="sub", clock=lambda: NOW)
        self.assertEqual(self.successResultOf(by_sub.validate("", self.token())), "1234")

    def test_alg_none_and_hmac_confusion_refused(self) -> None:
        from cryptography.hazmat.primitives import serialization

        pem = self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        self.assertIsNone(self.check(sign({"alg": "HS256", "kid": "k1"}, claims(), secret=pem)))
        self.assertIsNone(self.check(sign({"alg": "none", "kid": "k1"}, claims())))
        self.assertIsNone(self.check(sign({"alg": "none"}, claims())[:-1] + "x"))

    def test_algorithm_must_suit_the_key(self) -> None:
        """An ES256 token naming the RSA key's kid, and an RS256 token naming a key whose JWK says
        ``alg: PS256``, are refused without trying to verify."""
        self.assertIsNone(self.check(self.token("ES256", "k1", Keys.ec("ec"))))
        self.provider.jwks["keys"].append(rsa_jwk(Keys.rsa("ps"), "p1", alg="PS256"))
        self.monotonic.now += jwt_validator.MAX_KEY_AGE
        self.assertIsNone(self.check(self.token("RS256", "p1", Keys.rsa("ps"))))
        self.assertEqual(self.check(self.token("PS256", "p1", Keys.rsa("ps"))), "alice@example.org")

    def test_algorithm_outside_the_allow_list(self) -> None:
        only_es = JWTValidator(self.cache, ISS, AUD, algorithms=["ES256"], clock=lambda: NOW)
        self.assertIsNone(self.successResultOf(only_es.validate("", self.token())))

    def test_malformed_tokens(self) -> None:
        for token in ("", "abc", "a.b", "a.b.c", "e30.e30.", "W10.e30.x", "a.b.c.d.e",
                      self.token() + ".x", "\udcff.\udcff.\udcff"):
            self.assertIsNone(self.check(token), token)
        self.assertIsNone(self.check(sign({"alg": "RS256", "kid": "k1", "crit": ["exp"]}, claims(),
                                          self.key)))
        self.assertIsNone(self.check(sign({"alg": "RS256", "kid": 7}, claims(), self.key)))

    def test_tampered_payload(self) -> None:
        header, _, signature = self.token().split(".")
        other = _b64(json.dumps(claims(email="bob@example.org")).encode())
        self.assertIsNone(self.check(".".join([header, other, signature])))

    def test_unknown_kid_refetches_rate_limited(self) -> None:
        self.assertEqual(self.check(self.token()), "alice@example.org")
        new = Keys.rsa("two")
        self.provider.jwks["keys"] = [rsa_jwk(new, "k2")]
        self.assertEqual(self.check(self.token(kid="k2", key=new)), "alice@example.org")
        self.assertEqual(self.provider.calls, 2)
        for _ in range(5):
            self.assertIsNone(self.check(self.token(kid="k-unknown", key=new)))
        self.assertEqual(self.provider.calls, 2)  # the rotation's refetch was the one a minute
        self.monotonic.now += jwt_validator.MIN_REFETCH
        self.assertIsNone(self.check(self.token(kid="k-unknown", key=new)))
        self.assertIsNone(self.check(self.token(kid="k-unknown", key=new)))
        self.assertEqual(self.provider.calls, 3)
        # The old key is gone with the rotation.
        self.assertIsNone(self.check(self.token()))

    def test_keys_refreshed_after_max_age(self) -> None:
        self.check(self.token())
        self.monotonic.now += jwt_validator.MAX_KEY_AGE - 1
        self.check(self.token())
        self.assertEqual(self.provider.calls, 1)
        self.monotonic.now += 1
        self.check(self.token())
        self.assertEqual(self.provider.calls, 2)

    def test_failed_refresh_keeps_the_keys(self) -> None:
        self.check(self.token())
        self.provider.fail = True
        self.monotonic.now += jwt_validator.MAX_KEY_AGE
        self.assertEqual(self.check(self.token()), "alice@example.org")
        self.assertEqual(self.check(self.token()), "alice@example.org")
        self.assertEqual(self.provider.calls, 2)  # not again at every login
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_no_keys_at_all_is_a_temporary_failure(self) -> None:
        self.provider.fail = True
        self.failureResultOf(self.validator.validate("", self.token()), TemporaryFailure)
        self.failureResultOf(self.validator.validate("", self.token()), TemporaryFailure)
        self.assertEqual(self.provider.calls, 1)
        self.monotonic.now += jwt_validator.MIN_REFETCH
        self.provider.fail = False
        self.assertEqual(self.check(self.token()), "alice@example.org")

    def test_concurrent_logins_share_one_fetch(self) -> None:
        self.provider.hold = True
        first = self.validator.validate("", self.token())
        second = self.validator.validate("", self.token())
        self.assertNoResult(first)
        self.assertEqual(self.provider.calls, 1)
        self.provider.pending[0].callback(None)
        self.assertEqual(self.successResultOf(first), "alice@example.org")
        self.assertEqual(self.successResultOf(second), "alice@example.org")


class JWKSAndOptionsTests(unittest.TestCase):
    def test_parse_algorithms(self) -> None:
        self.assertEqual(parse_algorithms("RS256, ES256"), ("RS256", "ES256"))
        for bad in ("none", "HS256", "RS256,hs512", "XX1", ""):
            self.assertRaises(ValueError, parse_algorithms, bad)
        self.assertRaises(ValueError, JWTValidator, KeyCache(lambda: None, "x"), ISS, AUD,
                          algorithms=["HS256"])
        self.assertRaises(ValueError, JWTValidator, KeyCache(lambda: None, "x"), "", AUD)

    def test_parse_jwks_skips_what_it_cannot_use(self) -> None:
        good = rsa_jwk(Keys.rsa("one"), "k1")
        document = {"keys": [{"kty": "oct", "k": "c2VjcmV0"}, dict(good, use="enc"), {"kty": "RSA"},
                             "junk", dict(good, d="private"), good]}
        keys = parse_jwks(json.dumps(document).encode())
        self.assertEqual([k.kid for k in keys], ["k1"])
        for bad in (b"", b"[]", b'{"keys": 1}', b'{"keys": [{"kty": "oct", "k": "eA"}]}',
                    b" " * (jwt_validator.MAX_JWKS_BYTES + 1)):
            self.assertRaises(ValueError, parse_jwks, bad)
