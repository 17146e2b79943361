"""Password schemes against Dovecot's own ``doveadm pw``, ``pop3ng passwd``, and logins with each scheme."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.trial import unittest

from tests.integration.support import ROOT, Session, start_server
from twisted_pop3ng.auth import cram
from twisted_pop3ng.auth import passwords
from twisted_pop3ng.auth.checkers import PasswdFileChecker

PASSWORD = "pässword with spaces"
SCHEMES = list(passwords.GENERATORS)
#: Deliberately slow schemes (~0.2-0.5 s here): checked once each where they add nothing new.
SLOW = {"CRYPT", "BLF-CRYPT", "ARGON2I", "ARGON2ID"}


def doveadm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["doveadm", "pw", *args], capture_output=True, text=True, timeout=60)


def dovecot_hash(scheme: str, password: str = PASSWORD) -> str:
    result = doveadm("-s", scheme, "-p", password)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class SchemeTests(unittest.TestCase):
    def test_dovecot_hashes_verify(self) -> None:
        for scheme in SCHEMES:
            stored = dovecot_hash(scheme)
            self.assertTrue(stored.startswith("{%s}" % scheme), stored)
            self.assertTrue(passwords.verify(stored, PASSWORD.encode()), stored)
            if scheme not in SLOW or scheme == "ARGON2I":
                self.assertFalse(passwords.verify(stored, b"wrong"), stored)

    def test_our_hashes_verify_in_dovecot(self) -> None:
        for scheme in SCHEMES:
            ours = passwords.generate(scheme, PASSWORD.encode())
            self.assertTrue(ours.startswith("{%s}" % scheme), ours)
            self.assertEqual(doveadm("-t", ours, "-p", PASSWORD).returncode, 0, ours)
            if scheme not in SLOW:
                self.assertNotEqual(doveadm("-t", ours, "-p", "wrong").returncode, 0, ours)

    def test_crypt_accepts_every_crypt_format(self) -> None:
        for scheme in ("MD5-CRYPT", "SHA256-CRYPT", "SHA512-CRYPT", "BLF-CRYPT"):
            _, secret = passwords.split_scheme(dovecot_hash(scheme))
            self.assertTrue(passwords.verify("{CRYPT}" + secret, PASSWORD.encode()))
            self.assertTrue(passwords.verify(secret, PASSWORD.encode()))  # no {SCHEME}: CRYPT

    def test_malformed_secrets_are_false_not_errors(self) -> None:
        for scheme in SCHEMES:
            if scheme == "PLAIN":
                continue
            for junk in ("", "$", "!!!", "1,2,3", "$1$x$y$z"):
                self.assertFalse(passwords.verify("{%s}%s" % (scheme, junk), b"x"), (scheme, junk))
        with self.assertRaises(passwords.UnknownScheme):
            passwords.verify("{NOPE}x", b"x")

    def test_cram_md5_context(self) -> None:
        for data in (b"", b"abc", b"x" * 200):
            self.assertEqual(cram.md5_resume(cram._INIT, data, 0), hashlib.md5(data).digest())
        context = cram.cram_context(b"long" * 30)  # a key over 64 bytes is hashed first, as HMAC does
        self.assertEqual(cram.hmac_from_context(context, b"<1.2@x>").hex(), cram.cram_digest(b"long" * 30, b"<1.2@x>"))


class PasswdCommandTests(unittest.TestCase):
    def run_passwd(self, *args: str, stdin: bytes = PASSWORD.encode() + b"\n") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "twisted_pop3ng.cli", "passwd", *args], input=stdin,
                              capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))

    def test_prints_a_hash_dovecot_accepts(self) -> None:
        for scheme in ("SHA512-CRYPT", "ARGON2ID", "SCRAM-SHA-256"):
            result = self.run_passwd("-s", scheme.lower())
            self.assertEqual(result.returncode, 0, result.stderr)
            stored = result.stdout.decode().strip()
            self.assertTrue(stored.startswith("{%s}" % scheme))
            self.assertEqual(doveadm("-t", stored, "-p", PASSWORD).returncode, 0)
        self.assertTrue(self.run_passwd().stdout.startswith(b"{SHA512-CRYPT}$6$"))

    def test_test_mode_and_errors(self) -> None:
        stored = dovecot_hash("SSHA512")
        self.assertEqual(self.run_passwd("-t", stored).returncode, 0)
        self.assertEqual(self.run_passwd("-t", stored, stdin=b"wrong\n").returncode, 1)
        result = self.run_passwd("-s", "NOPE")
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"unknown scheme", result.stderr)
        self.assertNotIn(b"Traceback", result.stderr)
        result = doveadm("-s", "DIGEST-MD5", "-u", "alice", "-p", PASSWORD)
        self.assertEqual(result.returncode, 0, result.stderr)
        digest = result.stdout.strip()
        result = self.run_passwd("-t", digest)  # (without -u: it can never match, and says why)
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"give it with -u USER", result.stderr)
        self.assertEqual(self.run_passwd("-t", digest, "-u", "alice").returncode, 0)

    def test_an_empty_password_gets_no_hash(self) -> None:
        # Nothing piped in (or an empty line) once printed a hash of "" that anyone could log in with.
        for stdin in (b"", b"\n", b"\r\n"):
            result = self.run_passwd("--stdin", stdin=stdin)
            self.assertEqual(result.returncode, 1, stdin)
            self.assertEqual(result.stdout, b"")
            self.assertIn(b"empty password", result.stderr)

    def test_a_crlf_line_is_the_password_without_its_cr(self) -> None:
        stored = self.run_passwd("-s", "SHA512-CRYPT", stdin=PASSWORD.encode() + b"\r\n").stdout.strip()
        self.assertEqual(doveadm("-t", stored.decode(), "-p", PASSWORD).returncode, 0)

    def test_a_password_in_argv_is_refused_without_repeating_it(self) -> None:
        # doveadm pw's -p habit: refused, pointing to the prompt and --stdin, the value not echoed.
        for form in (["-p", "typed-secret"], ["--password", "typed-secret"], ["--password=typed-secret"],
                     ["typed-secret"], ["--bogus", "typed-secret"]):
            result = self.run_passwd(*form)
            self.assertEqual(result.returncode, 2, form)
            self.assertIn(b"--stdin" if form[0].startswith(("-p", "--password")) else b"--help",
                          result.stderr)
            self.assertNotIn(b"typed-secret", result.stderr + result.stdout)


class CheckerTests(unittest.TestCase):
    """The passwd-file checker verifies in a thread, re-reads the file, and hides unknown users."""

    def setUp(self) -> None:
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        self.path = os.path.join(root, "users")
        with open(self.path, "w") as f:
            f.write("# comment\nalice:%s:1000:1000::/home/alice::\n" % dovecot_hash("ARGON2ID"))

    def test_verify_and_reload(self):
        checker = PasswdFileChecker(self.path)
        d = checker.requestAvatarId(UsernamePassword(b"alice", PASSWORD.encode()))
        d.addCallback(self.assertEqual, "alice")

        def change(_):
            with open(self.path, "w") as f:
                f.write("alice:{PLAIN}new\nbob:{PLAIN}x\n")
            return checker.requestAvatarId(UsernamePassword(b"bob", b"x"))

        d.addCallback(change)
        d.addCallback(self.assertEqual, "bob")
        return d

    def test_unknown_user_and_wrong_password_fail_alike(self):
        checker = PasswdFileChecker(self.path)
        d1 = self.assertFailure(checker.requestAvatarId(UsernamePassword(b"alice", b"x")), UnauthorizedLogin)
        d2 = self.assertFailure(checker.requestAvatarId(UsernamePassword(b"nobody", PASSWORD.encode())),
                                UnauthorizedLogin)
        return d1.addCallback(lambda _: d2)


class LoginWithEverySchemeTests(unittest.TestCase):
    """A Dovecot-format passwd-file with one user per scheme (hashes made by doveadm), USER/PASS each."""

    def test_each_scheme_logs_in(self) -> None:
        root = os.path.abspath(self.mktemp())
        server = start_server(root, {}, tls=False)
        self.addCleanup(server.stop)
        users = {"u-" + scheme.lower(): dovecot_hash(scheme) for scheme in SCHEMES}
        with open(os.path.join(root, "users"), "w") as f:
            for user, stored in users.items():
                f.write("%s:%s::::::\n" % (user, stored))
        for user in users:
            os.makedirs(server.maildir(user), exist_ok=True)
            s = Session(server.connect())
            self.addCleanup(s.close)
            s.line()
            self.assertTrue(s.command(b"USER " + user.encode()).startswith(b"+OK"))
            self.assertEqual(s.command(b"PASS " + PASSWORD.encode()), b"+OK Logged in.\r\n", user)
            s.command(b"QUIT")
