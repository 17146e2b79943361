"""Every scheme Dovecot verifies, against hashes the real ``doveadm pw`` made in the test.

``doveadm`` (Debian's dovecot-core) is required: without it these tests fail, they do not skip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from twisted_pop3ng.auth import passwords
from twisted_pop3ng.auth.checkers import PasswdFileChecker

PASSWORD = "pässword with spaces"
USER = "alice@example.org"
#: Deliberately slow (bcrypt, argon2): checked once, without the encoding variants.
SLOW = {"CRYPT", "BLF-CRYPT", "ARGON2I", "ARGON2ID"}
#: Dovecot's own PLAIN-TRUNC output has no ``LENGTH-`` prefix, so Dovecot cannot verify it
#: either; that scheme is checked against ``doveadm pw -t`` below instead.
NOT_ROUND_TRIPPED = {"PLAIN-TRUNC"}


def doveadm(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("doveadm") is None:
        raise AssertionError("doveadm is not installed (Debian: dovecot-core)")
    return subprocess.run(["doveadm", "pw", *args], capture_output=True, text=True, timeout=60)


def dovecot_hash(scheme: str, password: str = PASSWORD, user: str = USER) -> str:
    result = doveadm("-s", scheme, "-p", password, "-u", user)
    assert result.returncode == 0, (scheme, result.stderr)
    return result.stdout.strip()


def dovecot_schemes() -> List[str]:
    result = doveadm("-l")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


class EverySchemeTests(unittest.TestCase):
    def test_every_scheme_doveadm_lists_is_known(self) -> None:
        schemes = dovecot_schemes()
        self.assertGreaterEqual(len(schemes), 20)
        self.assertEqual([s for s in schemes if s not in passwords.SCHEMES], [])

    def test_doveadm_hashes_verify_in_every_encoding(self) -> None:
        checked = 0
        for scheme in dovecot_schemes():
            if scheme in NOT_ROUND_TRIPPED:
                continue
            suffixes = [""] if scheme in SLOW else ["", ".HEX", ".B64"]
            for suffix in suffixes:
                stored = dovecot_hash(scheme + suffix)
                self.assertTrue(stored.startswith("{%s%s}" % (scheme, suffix)), stored)
                self.assertTrue(passwords.verify(stored, PASSWORD.encode(), user=USER), stored)
                if scheme not in SLOW or scheme == "ARGON2I":
                    self.assertFalse(passwords.verify(stored, b"wrong", user=USER), stored)
                    # crypt(3)'s DES reads 8 octets of the password, in Dovecot as here
                    truncated = passwords.verify(stored, PASSWORD.encode()[:-1], user=USER)
                    self.assertEqual(truncated, scheme == "DES-CRYPT", stored)
                checked += 1
        self.assertGreater(checked, 70)

    def test_the_six_legacy_schemes_of_issue_18(self) -> None:
        for scheme in ("SHA", "SHA256", "SHA512", "PLAIN-MD5", "LDAP-MD5", "DIGEST-MD5"):
            stored = dovecot_hash(scheme)
            self.assertTrue(passwords.verify(stored, PASSWORD.encode(), user=USER), stored)

    def test_hex_digest_without_suffix_is_recognised_by_its_length(self) -> None:
        # Dovecot guesses hex for a fixed-size digest whose length is twice the digest's.
        hex_sha = dovecot_hash("SHA.HEX").replace("{SHA.HEX}", "{SHA}")
        self.assertTrue(passwords.verify(hex_sha, PASSWORD.encode()))
        b64_md5 = dovecot_hash("PLAIN-MD5.B64").replace("{PLAIN-MD5.B64}", "{PLAIN-MD5}")
        self.assertTrue(passwords.verify(b64_md5, PASSWORD.encode()))
        for stored in (hex_sha, b64_md5):
            self.assertEqual(doveadm("-t", stored, "-p", PASSWORD).returncode, 0, stored)

    def test_digest_md5_needs_the_login_name_and_realm(self) -> None:
        for user in ("alice@example.org", "alice", "alice@example.org@realm"):
            stored = dovecot_hash("DIGEST-MD5", user=user)
            self.assertTrue(passwords.verify(stored, PASSWORD.encode(), user=user), user)
            self.assertFalse(passwords.verify(stored, PASSWORD.encode(), user="bob@example.org"), user)
            self.assertFalse(passwords.verify(stored, PASSWORD.encode()), user)

    def test_plain_trunc_agrees_with_doveadm(self) -> None:
        cases = [("{PLAIN-TRUNC}6-secret", "secret"), ("{PLAIN-TRUNC}3-sec", "secretxx"),
                 ("{PLAIN-TRUNC}3-sec", "se"), ("{PLAIN-TRUNC}3-sec", "sec"),
                 ("{PLAIN-TRUNC}8-secret", "secret"), ("{PLAIN-TRUNC}secret", "secret"),
                 ("{PLAIN-TRUNC}6-secret", "secreT")]
        for stored, password in cases:
            dovecot_says = doveadm("-t", stored, "-p", password).returncode == 0
            self.assertEqual(passwords.verify(stored, password.encode()), dovecot_says, (stored, password))

    def test_otp_with_each_algorithm(self) -> None:
        # doveadm makes SHA-1 ones; RFC 2289 appendix C's vectors (pass phrase "This is a test.",
        # seed "TeSt", count 0) check the MD4, MD5 and SHA-1 folds.
        self.assertTrue(passwords.verify("{OTP}md4 0 TeSt d1854218ebbb0b51", b"This is a test."))
        self.assertTrue(passwords.verify("{OTP}md5 0 TeSt 9e876134d90499dd", b"This is a test."))
        self.assertTrue(passwords.verify("{OTP}sha1 0 TeSt bb9e6ae1979d8ff4", b"This is a test."))
        self.assertFalse(passwords.verify("{OTP}sha1 0 TeSt bb9e6ae1979d8ff5", b"This is a test."))
        stored = dovecot_hash("OTP")
        self.assertTrue(passwords.verify(stored, PASSWORD.encode()))

    def test_malformed_secrets_are_mismatches_not_errors(self) -> None:
        junk = ("", "$", "!!!", "1,2,3", "$1$x$y$z", "zz", "a" * 40, "sha1 x y z", "9-y")
        for scheme in passwords.SCHEMES:
            for secret in junk:
                stored = "{%s}%s" % (scheme, secret)
                if passwords.verify(stored, b"x", user=USER):
                    self.fail("%r matched" % stored)
        for unknown in ("{NOPE}x", "{SHA.ROT13}x"):
            self.assertRaises(passwords.UnknownScheme, passwords.verify, unknown, b"x")


class PreparedSecretTests(unittest.TestCase):
    """verify() keeps what it makes of each stored secret (the same entries are checked at every
    login); the store is bounded, and a secret checked after it was emptied is made again."""

    def test_bounded_and_right_across_emptying(self) -> None:
        self.patch(passwords, "MAX_PREPARED", 8)
        self.patch(passwords, "_PREPARED", {})
        secrets = ["{PLAIN}pw%d" % i for i in range(20)] + ["{SHA256.HEX}" + hashlib.sha256(
            b"pw%d" % i).hexdigest() for i in range(20)]
        for _ in range(2):
            for i, stored in enumerate(secrets):
                self.assertTrue(passwords.verify(stored, b"pw%d" % (i % 20)), stored)
                self.assertFalse(passwords.verify(stored, b"pw%d" % (i % 20 + 1)), stored)
                self.assertLessEqual(len(passwords._PREPARED), 8)
        # A re-read passwd-file lets go of every secret prepared before (a changed password's old
        # one need not stay in memory); the new one logs in, the old one no longer does.
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "users")
        with open(path, "w") as f:
            f.write("alice:{PLAIN}old secret::::::\n")
        checker = PasswdFileChecker(path)
        self.assertEqual(checker.avatar_id_now(UsernamePassword(b"alice", b"old secret")), "alice")
        self.assertIn(("{PLAIN}old secret", checker.default_scheme), passwords._PREPARED)
        with open(path, "w") as f:
            f.write("alice:{PLAIN}new secret::::::\n")
        os.utime(path, ns=(1, 1))  # (another mtime, whatever the clock's granularity)
        self.assertEqual(checker.avatar_id_now(UsernamePassword(b"alice", b"new secret")), "alice")
        self.assertNotIn(("{PLAIN}old secret", checker.default_scheme), passwords._PREPARED)
        self.assertRaises(UnauthorizedLogin, checker.avatar_id_now,
                          UsernamePassword(b"alice", b"old secret"))
        # An unknown scheme is an error every time, never a remembered mismatch.
        for _ in range(2):
            self.assertRaises(passwords.UnknownScheme, passwords.verify, "{NOPE}x", b"x")


class PasswdCommandTests(unittest.TestCase):
    def test_test_mode_takes_the_user_for_digest_md5(self) -> None:
        stored = dovecot_hash("DIGEST-MD5", user="alice@example.org")

        def check(*args: str) -> int:
            return subprocess.run([sys.executable, "-m", "twisted_pop3ng.cli", "passwd", "-t", stored, *args],
                                  input=PASSWORD.encode() + b"\n", capture_output=True, timeout=60).returncode

        self.assertEqual(check("-u", "alice@example.org"), 0)
        self.assertEqual(check("-u", "bob@example.org"), 1)
        self.assertEqual(check(), 1)


class WeakSchemeWarningTests(unittest.TestCase):
    def setUp(self) -> None:
        self.events: List[Dict[str, Any]] = []
        observer: Any = self.events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        passwords._warned.clear()
        self.addCleanup(passwords._warned.clear)

    def warnings(self) -> List[Dict[str, Any]]:
        return [e for e in self.events if "weak_scheme" in e]

    def test_once_per_user_and_only_after_a_match(self) -> None:
        stored = dovecot_hash("SHA512")
        self.assertFalse(passwords.verify(stored, b"wrong", user="alice"))
        self.assertEqual(self.warnings(), [])
        for _ in range(3):
            self.assertTrue(passwords.verify(stored, PASSWORD.encode(), user="alice"))
        self.assertTrue(passwords.verify(dovecot_hash("PLAIN-MD5"), PASSWORD.encode(), user="bob"))
        warned = self.warnings()
        self.assertEqual([(e["user"], e["weak_scheme"]) for e in warned], [("alice", "SHA512"), ("bob", "PLAIN-MD5")])
        self.assertIn("pop3ng passwd", warned[0]["log_format"])

    def test_strong_schemes_are_not_flagged(self) -> None:
        for scheme in ("SHA512-CRYPT", "SSHA512", "PBKDF2", "SCRAM-SHA-256", "PLAIN"):
            self.assertFalse(passwords.is_weak(dovecot_hash(scheme)), scheme)
        for scheme in ("SHA", "SHA256", "PLAIN-MD4", "LDAP-MD5", "SMD5", "MD5-CRYPT", "DES-CRYPT", "DIGEST-MD5"):
            self.assertTrue(passwords.is_weak(dovecot_hash(scheme)), scheme)
        self.assertTrue(passwords.is_weak("{CRYPT}" + dovecot_hash("DES-CRYPT").split("}", 1)[1]))
        self.assertFalse(passwords.is_weak("{CRYPT}" + dovecot_hash("SHA512-CRYPT").split("}", 1)[1]))


class PasswdFileTests(unittest.TestCase):
    """A Dovecot passwd-file of legacy hashes works through the server's checker unchanged."""

    @defer.inlineCallbacks
    def test_legacy_entries_log_in(self) -> Any:
        schemes = ["SHA", "SHA1", "SHA256", "SHA512", "PLAIN-MD5", "LDAP-MD5", "PLAIN-MD4", "SMD5", "MD5",
                   "HMAC-MD5", "DES-CRYPT", "SSHA256.HEX", "PLAIN.B64", "OTP", "CLEARTEXT"]
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "users")
        with open(path, "w", encoding="utf-8") as f:
            for scheme in schemes:
                f.write("u-%s:%s:1000:1000::/home/u::\n" % (scheme.lower(), dovecot_hash(scheme)))
        checker = PasswdFileChecker(path)
        for scheme in schemes:
            user = "u-" + scheme.lower()
            avatar = yield checker.requestAvatarId(UsernamePassword(user.encode(), PASSWORD.encode()))
            self.assertEqual(avatar, user)
            yield self.assertFailure(checker.requestAvatarId(UsernamePassword(user.encode(), b"wrong")),
                                     UnauthorizedLogin)


class DuplicateAndMalformedEntryTests(unittest.TestCase):
    """As Dovecot: a user's first entry wins, and every skipped line is logged (once per version of
    the file) -- an entry appended to change a password does not take effect silently."""

    @defer.inlineCallbacks
    def test_first_entry_wins_and_the_rest_is_reported(self) -> Any:
        events: List[Dict[str, Any]] = []
        observer: Any = events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "users")
        with open(path, "w", encoding="utf-8") as f:
            f.write("# users\nalice:{PLAIN}first\njust-a-name\nbob:{PLAIN}b\nalice:{PLAIN}second\n")
        checker = PasswdFileChecker(path)
        avatar = yield checker.requestAvatarId(UsernamePassword(b"alice", b"first"))
        self.assertEqual(avatar, "alice")
        yield self.assertFailure(checker.requestAvatarId(UsernamePassword(b"alice", b"second")),
                                 UnauthorizedLogin)
        problems = [e["problem"] for e in events if "problem" in e and e.get("path") == path]
        self.assertEqual(problems, [
            "line 3: not USER:PASSWORD[:...]; skipped",
            "line 5: user alice exists more than once; the entry on line 2 is used"])
        checker.lookup("bob")  # unchanged file: read once, reported once
        self.assertEqual(len([e for e in events if e.get("path") == path and "problem" in e]), 2)
