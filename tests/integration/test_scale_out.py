"""Scale-out, shown: two ``twistd pop3ng`` front ends (two processes, two ports) on one PostgreSQL.

The maildrop lock is PostgreSQL's (a session advisory lock), so it holds across front ends and dies
with the front end that held it; mail delivered through one front end (LMTP) or by the store
appears in sessions on the other.
"""

from __future__ import annotations

import re
import signal
import smtplib
import time

from .e2e import stuffed, wire_lines
from .support import ServerProcess, Session
from .test_postgresql import MESSAGES, PASSWORD, PostgresServerCase

_LMTP_PORT_RE = re.compile(r"LMTPFactory starting on (\d+)")


class TwoFrontEndsTests(PostgresServerCase):
    def setUp(self) -> None:
        super().setUp()
        self.a = self.front_end()
        self.b = self.front_end()
        self.assertNotEqual(self.a.port, self.b.port)

    def attempt(self, server: ServerProcess, user: str = "alice") -> tuple:
        session = Session(server.connect())
        self.addCleanup(session.close)
        return session, session.login(user.encode(), PASSWORD.encode())

    def test_in_use_across_front_ends(self) -> None:
        """A login on B while A holds the maildrop: -ERR [IN-USE] at once; after QUIT on A, B logs in."""
        self.deliver("alice", MESSAGES[0])
        on_a = self.login(self.a)
        _, reply = self.attempt(self.b)
        self.assertTrue(reply.startswith(b"-ERR [IN-USE]"), reply)
        other, reply = self.attempt(self.b, "bob")  # another maildrop is not affected
        self.assertTrue(reply.startswith(b"+OK"), reply)
        other.command(b"QUIT")
        self.assertEqual(on_a.command(b"QUIT"), b"+OK Logging out.\r\n")
        on_b = self.login_when_free(self.b)
        self.assertTrue(on_b.command(b"STAT").startswith(b"+OK 1 "))

    def test_sigkill_mid_session_loses_nothing_and_frees_the_lock(self) -> None:
        """SIGKILL of A after DELE, before QUIT: nothing deleted, and B gets the maildrop at once
        (the database ends the dead connection's session, and its locks with it)."""
        uids = [self.deliver("alice", data) for data in MESSAGES]
        on_a = self.login(self.a)
        self.assertTrue(on_a.command(b"DELE 1").startswith(b"+OK"))
        self.assertTrue(on_a.command(b"DELE 2").startswith(b"+OK"))
        self.a.process.send_signal(signal.SIGKILL)
        self.a.process.wait(30)
        session = self.login_when_free(self.b)
        session.send(b"UIDL\r\n")
        session.line()
        self.assertEqual(session.body(), b"".join(b"%d %s\r\n" % (n, uid.encode())
                                                  for n, uid in enumerate(uids, 1)) + b".\r\n")
        for n, data in enumerate(MESSAGES, 1):
            session.command(b"RETR %d" % n)
            self.assertEqual(session.body(), stuffed(wire_lines(data)))

    def test_delivery_appears_on_the_other_front_end(self) -> None:
        """Mail delivered while B's session is open is in B's next session, not in this one."""
        self.deliver("alice", MESSAGES[0])
        on_b = self.login(self.b)
        self.deliver("alice", MESSAGES[1])
        self.assertTrue(on_b.command(b"STAT").startswith(b"+OK 1 "))
        on_b.command(b"QUIT")
        on_a = self.login(self.a)
        self.assertTrue(on_a.command(b"STAT").startswith(b"+OK 2 "))
        on_a.command(b"RETR 2")
        self.assertEqual(on_a.body(), stuffed(wire_lines(MESSAGES[1])))


class LMTPThroughOneFrontEndTests(PostgresServerCase):
    def test_lmtp_into_a_pop3_out_of_b(self) -> None:
        """An LMTP client (Python's smtplib.LMTP) delivers through front end A; the message comes
        out of front end B's POP3 byte for byte."""
        a = self.front_end(extra_args=["--lmtp-listen", "tcp:0:interface=127.0.0.1", "--lmtp-trace-headers", "no"])
        b = self.front_end()
        deadline = time.monotonic() + 30
        while not _LMTP_PORT_RE.search(a.log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        match = _LMTP_PORT_RE.search(a.log())
        self.assertIsNotNone(match, a.log())
        assert match is not None
        data = MESSAGES[1]
        client = smtplib.LMTP("127.0.0.1", int(match.group(1)), timeout=30)
        try:
            client.ehlo("mta.example.org")
            refused = client.sendmail("sender@example.org", ["alice@example.org", "bob@example.org"], data)
        finally:
            client.quit()
        self.assertEqual(refused, {})
        for user in ("alice", "bob"):
            session = self.login(b, user)
            self.assertTrue(session.command(b"RETR 1").startswith(b"+OK"))
            self.assertEqual(session.body(), stuffed(wire_lines(data)))
            session.command(b"QUIT")
