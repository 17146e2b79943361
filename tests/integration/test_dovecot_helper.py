"""The private-Dovecot helper works: plain login, RETR of a delivered message, STLS and POP3S --
from a test directory below a 0700 one, without changing the mode of anything the test does not own."""

from __future__ import annotations

import os
import poplib
import ssl
import stat
from typing import Dict

from twisted.trial import unittest

from .dovecot import dovecot_available, start_dovecot
from .support import make_certificates

PASSWORD = "correct horse battery staple"
MESSAGE = b"Subject: hello\r\n\r\nfirst line\r\n.dotted line\r\n"


def ancestor_modes(path: str) -> Dict[str, int]:
    """The mode of every directory from ``path``'s parent up to ``/``."""
    modes = {}
    path = os.path.dirname(os.path.abspath(path))
    while True:
        modes[path] = stat.S_IMODE(os.stat(path).st_mode)
        parent = os.path.dirname(path)
        if parent == path:
            return modes
        path = parent


class DovecotHelperTests(unittest.TestCase):
    def setUp(self) -> None:
        self.assertTrue(dovecot_available(), "these tests need dovecot-pop3d and root (the CI has both)")
        private = os.path.abspath(self.mktemp())
        os.makedirs(private, mode=0o700)
        os.chmod(private, 0o700)  # whatever the umask: Dovecot's users cannot pass through it
        self.root = os.path.join(private, "dovecot")
        os.mkdir(self.root, 0o700)
        self.modes = ancestor_modes(self.root)
        self.certs = make_certificates(self.root)
        self.dovecot = start_dovecot(self.root, {"alice": PASSWORD}, certs=self.certs)
        self.addCleanup(self.dovecot.stop)
        self.dovecot.deliver("alice", MESSAGE)

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.certs["ca"])

    def test_login_retr_stls_pop3s(self) -> None:
        client = poplib.POP3("127.0.0.1", self.dovecot.port, timeout=10)
        self.assertIn("STLS", client.capa())
        client.stls(self.context())
        client.user("alice")
        self.assertTrue(client.pass_(PASSWORD).startswith(b"+OK"))
        self.assertEqual(client.stat(), (1, len(MESSAGE)))
        _, lines, octets = client.retr(1)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", MESSAGE)
        client.quit()

        assert self.dovecot.tls_port is not None  # certs were given
        secure = poplib.POP3_SSL("127.0.0.1", self.dovecot.tls_port, context=self.context(),
                                 timeout=10)
        secure.user("alice")
        self.assertTrue(secure.pass_(PASSWORD).startswith(b"+OK"))
        self.assertEqual(secure.stat()[0], 1)
        secure.quit()

    def test_modes_outside_the_test_directory_never_change(self) -> None:
        """The helper used to add o+x to every ancestor up to / and never take it back."""
        self.assertEqual(ancestor_modes(self.root), self.modes)  # while Dovecot runs
        client = poplib.POP3("127.0.0.1", self.dovecot.port, timeout=10)
        client.user("alice")
        self.assertTrue(client.pass_(PASSWORD).startswith(b"+OK"))  # and it can read the mail
        self.assertEqual(client.stat(), (1, len(MESSAGE)))
        client.dele(1)
        client.quit()
        home = self.dovecot.home
        self.dovecot.stop()
        self.assertEqual(ancestor_modes(self.root), self.modes)
        # The maildir (with Dovecot's changes) and the passwd-file are back in the test's
        # directory, and nothing is left under /tmp.
        maildir = os.path.join(self.root, "mail", "alice", "Maildir")
        self.assertFalse(os.path.islink(os.path.join(self.root, "mail")))
        self.assertEqual(os.listdir(os.path.join(maildir, "new")) + os.listdir(os.path.join(maildir, "cur")), [])
        with open(os.path.join(self.root, "users")) as f:
            self.assertEqual(f.read(), "alice:{PLAIN}%s\n" % PASSWORD)
        self.assertFalse(os.path.exists(home))
        self.assertFalse(os.path.exists(self.dovecot.base_dir))

    def test_restart_on_the_same_directory_keeps_the_mail(self) -> None:
        self.dovecot.stop()
        again = start_dovecot(self.root, {"alice": PASSWORD})
        self.addCleanup(again.stop)
        client = poplib.POP3("127.0.0.1", again.port, timeout=10)
        client.user("alice")
        self.assertTrue(client.pass_(PASSWORD).startswith(b"+OK"))
        self.assertEqual(client.stat(), (1, len(MESSAGE)))
        client.quit()
        self.assertEqual(ancestor_modes(self.root), self.modes)
