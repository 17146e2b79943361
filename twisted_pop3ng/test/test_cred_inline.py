"""Cheap password schemes are checked on the reactor thread; slow hashes still go to the pool."""

from __future__ import annotations

import os

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.trial import unittest

from twisted_pop3ng.auth import checkers as cred
from twisted_pop3ng.auth import passwords


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


class LoginNowTests(unittest.TestCase):
    """``cred.login_now``: the portal's answer without Deferreds when the checker is cheap."""

    def portal(self, lines: str, realm=None):
        from twisted.cred.portal import Portal

        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(lines)
        self.opened = []

        class Realm:
            def requestAvatar(inner, avatar_id, mind, *interfaces):
                self.opened.append(avatar_id)
                return interfaces[0], "mailbox of " + avatar_id, lambda: None

        return Portal(realm or Realm(), [cred.PasswdFileChecker(path)])

    def test_cheap_scheme_answers_with_the_realms_tuple(self) -> None:
        from twisted_pop3ng.interfaces import IMailbox

        portal = self.portal("alice:{PLAIN}pass word\n")
        result = cred.login_now(portal, UsernamePassword(b"alice", b"pass word"), IMailbox)
        self.assertEqual(result[:2], (IMailbox, "mailbox of alice"))
        self.assertRaises(UnauthorizedLogin, cred.login_now, portal,
                          UsernamePassword(b"alice", b"wrong"), IMailbox)
        self.assertRaises(UnauthorizedLogin, cred.login_now, portal,
                          UsernamePassword(b"mallory", b"pass word"), IMailbox)
        self.assertEqual(self.opened, ["alice"])  # the realm is asked only after a good password

    def test_slow_scheme_goes_through_the_portal(self) -> None:
        from twisted.internet import defer

        from twisted_pop3ng.interfaces import IMailbox

        self.patch(cred, "hash_in_thread", lambda *a: defer.succeed(True))
        portal = self.portal("bob:%s\n" % passwords.generate("SHA512-CRYPT", b"secret"))
        d = cred.login_now(portal, UsernamePassword(b"bob", b"secret"), IMailbox)
        self.assertIsInstance(d, defer.Deferred)
        self.assertEqual(self.successResultOf(d)[1], "mailbox of bob")

    def test_only_a_declared_inline_checker_is_asked_at_once(self) -> None:
        """``avatar_id_now`` is the IInlineChecker extension point: a checker that merely has a
        method of that name is asked through the portal (``requestAvatarId``)."""
        from twisted.cred.checkers import ICredentialsChecker
        from twisted.cred.credentials import IUsernamePassword
        from twisted.cred.portal import Portal
        from twisted.internet import defer
        from zope.interface import implementer

        from twisted_pop3ng.interfaces import IInlineChecker, IMailbox

        class Realm:
            def requestAvatar(self, avatar_id, mind, *interfaces):
                return interfaces[0], "mailbox of " + avatar_id, lambda: None

        @implementer(ICredentialsChecker)
        class Undeclared:
            credentialInterfaces = (IUsernamePassword,)

            def avatar_id_now(self, credentials):
                return "alice"

            def requestAvatarId(self, credentials):
                return defer.Deferred()  # never answers

        @implementer(IInlineChecker)
        class Declared(Undeclared):
            pass

        credentials = UsernamePassword(b"alice", b"pw")
        result = cred.login_now(Portal(Realm(), [Declared()]), credentials, IMailbox)
        self.assertEqual(result[:2], (IMailbox, "mailbox of alice"))
        pending = cred.login_now(Portal(Realm(), [Undeclared()]), credentials, IMailbox)
        self.assertNoResult(pending)
