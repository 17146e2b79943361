"""The made-up SCRAM keys of unknown users (F7 part 3): a stable key, the usual iteration count,
and the usual cost. The black-box side (restarts, ``--workers``) is in
``tests/integration/test_scram_enumeration.py``."""

from __future__ import annotations

import base64
import os
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from twisted_pop3ng.auth import passwords, sasl_server
from twisted_pop3ng.auth.checkers import PasswdFileChecker


def scram_entry(iterations: int, scheme: str = "SCRAM-SHA-256") -> str:
    algorithm = "sha1" if scheme == "SCRAM-SHA-1" else "sha256"
    keys = passwords.scram_keys(b"pw", algorithm, os.urandom(16), iterations)
    encode = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return "{%s}%d,%s,%s,%s" % (scheme, iterations, encode(keys.salt), encode(keys.stored_key),
                                encode(keys.server_key))


class CheckerProfileTests(unittest.TestCase):
    def checker(self, *entries: str) -> PasswdFileChecker:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("".join("user%d:%s\n" % (i, entry) for i, entry in enumerate(entries)))
        return PasswdFileChecker(path)

    def test_most_common_iteration_count_per_mechanism(self) -> None:
        checker = self.checker(scram_entry(8192), scram_entry(8192), scram_entry(10000),
                               scram_entry(12000, "SCRAM-SHA-1"), "{SHA512-CRYPT}$6$x$y")
        self.assertEqual(checker.scram_profile("SCRAM-SHA-256"), (8192, False))
        self.assertEqual(checker.scram_profile("SCRAM-SHA-1"), (12000, False))

    def test_plain_users_count_at_4096_and_make_the_fake_derive(self) -> None:
        checker = self.checker(scram_entry(8192), "{PLAIN}a", "{PLAIN}b")
        self.assertEqual(checker.scram_profile("SCRAM-SHA-256"), (4096, True))
        self.assertEqual(checker.scram_profile("SCRAM-SHA-1"), (4096, True))

    def test_no_scram_users(self) -> None:
        self.assertEqual(self.checker("{SHA512-CRYPT}$6$x$y").scram_profile("SCRAM-SHA-256"),
                         (4096, False))

    def test_salt_key_is_stable_for_a_file_and_changes_with_it(self) -> None:
        one = self.checker("{PLAIN}a")
        other = PasswdFileChecker(one.path)
        before = one.salt_key()
        self.assertEqual(len(before), 32)
        self.assertEqual(before, other.salt_key())
        with open(one.path, "a") as f:
            f.write("new:{PLAIN}b\n")
        self.assertNotEqual(one.salt_key(), before)


class FakeKeysTests(unittest.TestCase):
    def context(self, profile: Any) -> sasl_server.SASLContext:
        return sasl_server.SASLContext(lookup_secret=lambda user: None, secret_key=b"k" * 32,
                                       scram_profile=profile)

    @defer.inlineCallbacks
    def test_fake_copies_the_profile(self) -> Any:
        context = self.context(lambda mechanism: (8192, False))
        keys = yield defer.maybeDeferred(sasl_server.ScramSha256(context)._keys, "nobody")
        again = yield defer.maybeDeferred(sasl_server.ScramSha256(context)._keys, "nobody")
        self.assertEqual(keys.iterations, 8192)
        self.assertEqual(keys.salt, again.salt)

    @defer.inlineCallbacks
    def test_fake_derives_like_plain_users(self) -> Any:
        """Where most users are {PLAIN}, their keys cost a PBKDF2 in a thread: so does the fake."""
        calls = []
        context = self.context(lambda mechanism: calls.append(mechanism) or (4096, True))
        result = sasl_server.ScramSha256(context)._fake("nobody")
        self.assertIsInstance(result, defer.Deferred)
        keys = yield result
        self.assertEqual(calls, ["SCRAM-SHA-256"])
        self.assertEqual(keys.iterations, 4096)

    def test_without_a_profile(self) -> None:
        keys = sasl_server.ScramSha1(sasl_server.SASLContext(secret_key=b"k" * 32))._fake("x")
        self.assertEqual(keys.iterations, passwords.SCRAM_ITERATIONS)
