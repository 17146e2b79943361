"""IntrospectionValidator (RFC 7662), hermetic: the provider is a function the test controls."""

from __future__ import annotations

import base64
from typing import Any, Dict, List

from twisted.internet import defer
from twisted.trial import unittest

from twisted_pop3ng.auth import introspection
from twisted_pop3ng.auth.introspection import IntrospectionValidator
from twisted_pop3ng.errors import TemporaryFailure

NOW = 1_800_000_000.0


class Provider:
    def __init__(self) -> None:
        self.answers: Dict[str, Any] = {}
        self.asked: List[str] = []
        self.error: Any = None

    def post(self, token: str) -> defer.Deferred:
        self.asked.append(token)
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed(self.answers.get(token, {"active": False}))


class IntrospectionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.now = [NOW]
        self.provider = Provider()
        self.validator = IntrospectionValidator(self.provider.post, "test", audience="pop3ng",
                                                clock=lambda: self.now[0])

    def active(self, token: str, **fields: Any) -> None:
        answer = {"active": True, "email": "alice@example.org", "aud": "pop3ng", "exp": NOW + 3600}
        answer.update(fields)
        self.provider.answers[token] = {k: v for k, v in answer.items() if v is not None}

    def check(self, token: str) -> Any:
        return self.successResultOf(self.validator.validate("", token))

    def test_active_and_inactive(self) -> None:
        self.active("good")
        self.provider.answers["off"] = {"active": False, "email": "alice@example.org"}
        self.provider.answers["truthy"] = {"active": "true", "email": "alice@example.org"}
        self.assertEqual(self.check("good"), "alice@example.org")
        self.assertIsNone(self.check("off"))
        self.assertIsNone(self.check("truthy"))  # "active" must be the JSON true
        self.assertIsNone(self.check("unknown"))

    def test_positive_answers_are_cached_briefly(self) -> None:
        self.active("good")
        self.check("good")
        self.check("good")
        self.assertEqual(self.provider.asked, ["good"])
        self.now[0] += introspection.CACHE_SECONDS
        self.check("good")
        self.assertEqual(self.provider.asked, ["good", "good"])

    def test_cache_never_outlives_the_token(self) -> None:
        self.active("short", exp=NOW + 5)
        self.check("short")
        self.now[0] += 6
        self.provider.answers["short"] = {"active": False}
        self.assertIsNone(self.check("short"))

    def test_refusals_are_not_cached(self) -> None:
        self.check("late")
        self.active("late")
        self.assertEqual(self.check("late"), "alice@example.org")

    def test_claims_checked(self) -> None:
        self.active("expired", exp=NOW - 61)
        self.active("future", nbf=NOW + 120)
        self.active("other-app", aud="webmail")
        self.active("listed", aud=["webmail", "pop3ng"])
        self.active("nameless", email=None)
        self.assertIsNone(self.check("expired"))
        self.assertIsNone(self.check("future"))
        self.assertIsNone(self.check("other-app"))
        self.assertEqual(self.check("listed"), "alice@example.org")
        self.assertIsNone(self.check("nameless"))

    def test_issuer_when_configured(self) -> None:
        validator = IntrospectionValidator(self.provider.post, "test", issuer="https://idp",
                                           clock=lambda: self.now[0])
        self.active("a", iss="https://idp")
        self.active("b", iss="https://elsewhere")
        self.assertEqual(self.successResultOf(validator.validate("", "a")), "alice@example.org")
        self.assertIsNone(self.successResultOf(validator.validate("", "b")))

    def test_provider_trouble_is_a_temporary_failure(self) -> None:
        self.provider.error = ConnectionRefusedError()
        self.failureResultOf(self.validator.validate("", "x"), TemporaryFailure)
        self.provider.error = None
        self.provider.answers["list"] = ["not", "an", "object"]
        self.failureResultOf(self.validator.validate("", "list"), TemporaryFailure)

    def test_client_authentication_header(self) -> None:
        """RFC 6749 §2.3.1: client id and secret are form-encoded before HTTP Basic."""
        header = introspection._basic("my client", "p@ss:word")
        self.assertEqual(base64.b64decode(header[6:]), b"my%20client:p%40ss%3Aword")
