"""Cheap password schemes are checked on the reactor thread; slow hashes still go to the pool."""

from __future__ import annotations

import os

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.trial import unittest

from twisted_pop3ng import cred, passwords


class InlineCheckTests(unittest.TestCase):
    def checker(self, lines: str) -> cred.PasswdFileChecker:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(lines)
        return cred.PasswdFileChecker(path)

    def test_plain_is_answered_at_once_without_the_pool(self) -> None:
        calls = []
        self.patch(cred, "hash_in_thread", lambda *a: calls.append(a))
        checker = self.checker("alice:{PLAIN}pass word\n")
        ok = checker.requestAvatarId(UsernamePassword(b"alice", b"pass word"))
        self.assertEqual(self.successResultOf(ok), "alice")
        bad = checker.requestAvatarId(UsernamePassword(b"alice", b"nope"))
        self.failureResultOf(bad, UnauthorizedLogin)
        unknown = checker.requestAvatarId(UsernamePassword(b"mallory", b"x"))
        self.failureResultOf(unknown, UnauthorizedLogin)
        self.assertEqual(calls, [])

    def test_slow_hash_uses_the_pool(self) -> None:
        calls = []
        self.patch(cred, "hash_in_thread", lambda *a: calls.append(a) or __import__(
            "twisted.internet.defer", fromlist=["succeed"]).succeed(False))
        stored = passwords.generate("SHA512-CRYPT", b"secret")
        checker = self.checker("bob:%s\n" % stored)
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"bob", b"secret")),
                             UnauthorizedLogin)
        self.assertEqual(len(calls), 1)
