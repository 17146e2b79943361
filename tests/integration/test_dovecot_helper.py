"""The private-Dovecot helper works: plain login, RETR of a delivered message, STLS and POP3S."""

from __future__ import annotations

import os
import poplib
import ssl

from twisted.trial import unittest

from .dovecot import dovecot_available, start_dovecot
from .support import make_certificates

PASSWORD = "correct horse battery staple"
MESSAGE = b"Subject: hello\r\n\r\nfirst line\r\n.dotted line\r\n"


class DovecotHelperTests(unittest.TestCase):
    def setUp(self) -> None:
        if not dovecot_available():
            raise unittest.SkipTest("dovecot is not installed, or not running as root")
        root = self.mktemp()
        os.makedirs(root)
        self.certs = make_certificates(root)
        self.dovecot = start_dovecot(root, {"alice": PASSWORD}, certs=self.certs)
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

        secure = poplib.POP3_SSL("127.0.0.1", self.dovecot.tls_port, context=self.context(),
                                 timeout=10)
        secure.user("alice")
        self.assertTrue(secure.pass_(PASSWORD).startswith(b"+OK"))
        self.assertEqual(secure.stat()[0], 1)
        secure.quit()
