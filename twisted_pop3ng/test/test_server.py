"""The server state machine, byte for byte, over StringTransport with a fake clock."""

from __future__ import annotations

from typing import Any, List

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from twisted.cred.checkers import ICredentialsChecker

from twisted_pop3ng import server, wire
from twisted_pop3ng.server.io import CHUNK_SIZE
from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.server.policy import SecurityConfig
from twisted_pop3ng.server.realm import MailboxRealm
from twisted_pop3ng.testing import rfc1939

#: Every test's mailbox (a tuple: a test that needs more delivers to its own store).
MESSAGES = (
    b"Subject: one\n\nfirst body\n.dotted\n",
    b"Subject: two\r\n\r\nsecond\r\n",
    b".starts with a dot",
)


def octets(raw: bytes) -> int:
    """A message's size as LIST/STAT report it, from the independent RFC 1939 oracle."""
    return len(rfc1939.wire_message(raw))


@implementer(ICredentialsChecker)
class SlowChecker:
    """Answers only when the test fires the Deferred: an asynchronous checker."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.pending: List[defer.Deferred] = []

    def requestAvatarId(self, credentials):
        d = defer.Deferred()
        self.pending.append(d)
        if credentials.password == b"secret pass":
            return d.addCallback(lambda _: credentials.username)
        return d.addCallback(lambda _: defer.fail(UnauthorizedLogin()))


class PausingTransport(StringTransport):
    """A transport whose write buffer 'fills' like a socket's: it pauses its producer."""

    limit = 100_000

    def write(self, data: bytes) -> None:
        StringTransport.write(self, data)
        if self.producer is not None and len(self.value()) > self.limit and not self._paused_producer:
            self._paused_producer = True
            self.producer.pauseProducing()

    _paused_producer = False

    def writeSequence(self, data: list) -> None:
        # StringTransport.writeSequence bypasses write(); a real transport pauses either way.
        self.write(b"".join(data))

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if self._paused_producer:
            self._paused_producer = False
            self.producer.resumeProducing()
        return data


class ProtocolTestCase(unittest.TestCase):
    transport_class = StringTransport

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store = MemoryStore()
        for message in MESSAGES:
            self.store.deliver("alice", message)
        self.checker = InMemoryUsernamePasswordDatabaseDontUse()
        self.checker.addUser(b"alice", b"secret pass")
        self.checker.addUser(b"bob", b"pw")
        portal = Portal(MailboxRealm(self.store), [self.checker])
        # StringTransport's peer (192.168.1.1) is not local: allow USER/PASS without TLS here;
        # the plaintext policy itself is tested in test_security.py.
        config = server.ServerConfig(security=SecurityConfig(allow_plaintext_auth=True))
        self.factory = server.POP3ServerFactory(portal, config, clock=self.clock)
        self.proto, self.transport = self.connect()

    def connect(self):
        proto = self.factory.buildProtocol(None)
        transport = self.transport_class()
        proto.makeConnection(transport)
        return proto, transport

    def talk(self, data: bytes, proto=None, transport=None) -> bytes:
        proto = proto or self.proto
        transport = transport or self.transport
        transport.clear()
        proto.dataReceived(data)
        return transport.value()

    def login(self) -> None:
        self.assertEqual(self.talk(b"USER alice\r\nPASS secret pass\r\n"),
                         b"+OK Send your password.\r\n+OK Logged in.\r\n")


class AuthorizationTests(ProtocolTestCase):
    def test_greeting(self) -> None:
        self.assertEqual(self.transport.value(), b"+OK POP3 server ready.\r\n")

    def test_capa(self) -> None:
        reply = self.talk(b"CAPA\r\n")
        self.assertTrue(reply.startswith(b"+OK"))
        self.assertTrue(reply.endswith(b"\r\n.\r\n"))
        for cap in (b"TOP", b"USER", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"):
            self.assertIn(b"\r\n" + cap + b"\r\n", reply)
        self.assertIn(b"\r\nIMPLEMENTATION twisted-pop3ng", reply)
        self.login()
        self.assertNotIn(b"\r\nUSER\r\n", self.talk(b"CAPA\r\n"))

    def test_wrong_password_waits_then_fails(self) -> None:
        reply = self.talk(b"USER alice\r\nPASS nope\r\nNOOP\r\n")
        self.assertEqual(reply, b"+OK Send your password.\r\n")
        self.clock.advance(self.factory.config.auth_failure_delay)
        self.assertEqual(self.transport.value(), b"+OK Send your password.\r\n"
                         b"-ERR [AUTH] Authentication failed.\r\n"
                         b"-ERR NOOP is not valid in the AUTHORIZATION state\r\n")

    def test_unknown_user_same_reply(self) -> None:
        self.talk(b"USER mallory\r\nPASS nope\r\n")
        self.clock.advance(self.factory.config.auth_failure_delay)
        self.assertTrue(self.transport.value().endswith(b"\r\n-ERR [AUTH] Authentication failed.\r\n"))

    def test_pass_needs_user(self) -> None:
        self.assertEqual(self.talk(b"PASS x\r\n"), b"-ERR Send USER first\r\n")

    def test_transaction_commands_refused(self) -> None:
        for verb in (b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"UIDL", b"TOP 1 1", b"RSET", b"NOOP"):
            self.assertTrue(self.talk(verb + b"\r\n").startswith(b"-ERR"), verb)
        self.assertFalse(self.transport.disconnecting)

    def test_quit(self) -> None:
        self.assertEqual(self.talk(b"QUIT\r\n"), b"+OK Bye.\r\n")
        self.assertTrue(self.transport.disconnecting)

    def slow_checker_session(self) -> Any:
        """A connection whose logins wait for a :class:`SlowChecker`: (checker, proto, transport)."""
        portal = Portal(MailboxRealm(self.store), [SlowChecker()])
        self.factory.portal = portal
        proto, transport = self.connect()
        transport.clear()
        return portal.checkers[IUsernamePassword], proto, transport

    def test_pipelined_login_with_async_checker(self) -> None:
        checker, proto, transport = self.slow_checker_session()
        proto.dataReceived(b"USER alice\r\nPASS secret pass\r\nSTAT\r\nUIDL 1\r\nQUIT\r\n")
        self.assertEqual(transport.value(), b"+OK Send your password.\r\n")
        checker.pending[0].callback(None)
        self.assertEqual(transport.value(), b"+OK Send your password.\r\n+OK Logged in.\r\n"
                         b"+OK 3 %d\r\n+OK 1 m1\r\n+OK Logging out.\r\n" % self.total())

    def total(self) -> int:
        return sum(map(octets, MESSAGES))

    def test_second_login_in_use_then_free_after_disconnect(self) -> None:
        self.login()
        other, transport = self.connect()
        self.assertEqual(self.talk(b"USER alice\r\nPASS secret pass\r\n", other, transport),
                         b"+OK Send your password.\r\n-ERR [IN-USE] Mailbox is locked by another session\r\n")
        self.proto.connectionLost(None)
        self.assertEqual(self.talk(b"USER alice\r\nPASS secret pass\r\n", other, transport),
                         b"+OK Send your password.\r\n+OK Logged in.\r\n")

    def test_a_checker_that_never_answers_is_bounded_by_the_login_deadline(self) -> None:
        checker, proto, transport = self.slow_checker_session()
        proto.dataReceived(b"USER alice\r\nPASS secret pass\r\n")
        # (its time is the server's, not inactivity: past the login timeout, up to the absolute
        # login deadline from connect)
        deadline = self.factory.config.security.login_deadline
        self.clock.advance(deadline - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(transport.value(), b"+OK Send your password.\r\n-ERR [SYS/TEMP] The login "
                         b"could not be checked in time, closing connection.\r\n")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertTrue(checker.pending[0].called)  # (cancelled: the check is dropped)

    def test_without_a_login_deadline_a_pending_login_still_ends(self) -> None:
        from twisted_pop3ng.server.protocol import PENDING_LOGIN_LIMIT

        self.factory.config.security.login_deadline = None
        _, proto, transport = self.slow_checker_session()
        proto.dataReceived(b"USER alice\r\nPASS secret pass\r\n")
        self.clock.advance(PENDING_LOGIN_LIMIT - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_login_timeout(self) -> None:
        self.clock.advance(self.factory.config.login_timeout - 1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.value().endswith(b"-ERR Disconnected for inactivity.\r\n"))
        self.assertTrue(self.transport.disconnecting)

    def test_idle_timeout_after_login_is_at_least_ten_minutes(self) -> None:
        self.login()
        self.clock.advance(599)
        self.talk(b"NOOP\r\n")
        self.clock.advance(599)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_many_sessions_share_one_timer_and_each_times_out_on_time(self) -> None:
        """Idle sessions cost no DelayedCall each (memory per idle connection), yet each keeps its
        own deadline: one logged in (600 s), the others not (60 s), one active. (No absolute
        login deadline here: the active one keeps going past 120 s; see test_abuse_limits.)"""
        self.factory.config.security.login_deadline = None
        self.login()
        others = [self.connect() for _ in range(20)]
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        active_proto, active_transport = others[0]
        for _ in range(3):
            self.clock.advance(30)
            self.talk(b"CAPA\r\n", active_proto, active_transport)
        self.assertTrue(all(t.disconnecting for _, t in others[1:]))  # 60 s before login
        self.assertFalse(active_transport.disconnecting)
        self.clock.advance(59)
        self.assertFalse(active_transport.disconnecting)
        self.clock.advance(1)  # 60 s after its last command
        self.assertTrue(active_transport.disconnecting)
        self.clock.advance(449)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)  # 600 s after login
        self.assertTrue(self.transport.disconnecting)

    def test_the_timer_stays_between_sessions_while_served_and_goes_with_the_factory(self) -> None:
        """A started factory (a port serves it) keeps its one timer when the last session leaves
        (short sessions do not make and cancel a DelayedCall each); it fires, finds nobody, and is
        gone. A stopped factory, or one never started, leaves no timer behind."""
        self.proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # never started: nothing left
        self.factory.doStart()
        for _ in range(3):
            proto, _transport = self.connect()
            proto.connectionLost(None)
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(self.factory.config.login_timeout)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # fired for nobody, not rescheduled
        proto, transport = self.connect()  # a new session gets a timer again, and times out
        self.clock.advance(self.factory.config.login_timeout)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.connect()[0].connectionLost(None)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.factory.doStop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        live, live_transport = self.connect()  # stopped while a session runs: it still times out
        self.factory.doStart()
        self.factory.doStop()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(self.factory.config.login_timeout)
        self.assertTrue(live_transport.disconnecting)
        live.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_commands_limit(self) -> None:
        limit = self.factory.config.max_bad_commands
        reply = self.talk(b"BOGUS\r\n" * (limit + 1))
        self.assertEqual(reply.count(b"-ERR"), limit + 1)
        self.assertTrue(reply.endswith(b"-ERR Too many bad commands, closing connection\r\n"))
        self.assertTrue(self.transport.disconnecting)

    def test_long_line_gets_error_and_session_continues(self) -> None:
        self.assertEqual(self.talk(b"USER " + b"x" * 300 + b"\r\nNOOP\r\n"),
                         b"-ERR Command line too long\r\n"
                         b"-ERR NOOP is not valid in the AUTHORIZATION state\r\n")
        self.assertFalse(self.transport.disconnecting)

    def test_huge_line_is_abuse(self) -> None:
        reply = self.talk(b"x" * (wire.MAX_ANY_LINE + 10))
        self.assertEqual(reply, b"-ERR Line too long, closing connection\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_bare_lf_and_lowercase(self) -> None:
        self.assertEqual(self.talk(b"user alice\npass secret pass\nstat\n"),
                         b"+OK Send your password.\r\n+OK Logged in.\r\n+OK 3 %d\r\n" % self.total())


class TransactionTests(ProtocolTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.login()

    def test_stat_list_uidl(self) -> None:
        sizes = [octets(m) for m in MESSAGES]
        self.assertEqual(self.talk(b"LIST 2\r\n"), b"+OK 2 %d\r\n" % sizes[1])
        self.assertEqual(self.talk(b"UIDL 3\r\n"), b"+OK 3 m3\r\n")
        self.assertEqual(self.talk(b"LIST\r\n"), b"+OK 3 messages (%d octets)\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n"
                         % (sum(sizes), sizes[0], sizes[1], sizes[2]))
        self.assertEqual(self.talk(b"UIDL\r\n"), b"+OK Unique-ID listing follows\r\n1 m1\r\n2 m2\r\n3 m3\r\n.\r\n")

    def test_retr_and_top(self) -> None:
        self.assertEqual(self.talk(b"RETR 1\r\n"),
                         b"+OK %d octets\r\nSubject: one\r\n\r\nfirst body\r\n..dotted\r\n.\r\n"
                         % octets(MESSAGES[0]))
        self.assertEqual(self.talk(b"RETR 3\r\n"),
                         b"+OK 20 octets\r\n..starts with a dot\r\n.\r\n")
        self.assertEqual(self.talk(b"TOP 1 0\r\n"), b"+OK Message follows\r\nSubject: one\r\n\r\n.\r\n")
        self.assertEqual(self.talk(b"TOP 1 1\r\n"),
                         b"+OK Message follows\r\nSubject: one\r\n\r\nfirst body\r\n.\r\n")

    def test_argument_errors_keep_session(self) -> None:
        for line in (b"RETR 0", b"RETR 4", b"RETR x", b"RETR -1", b"RETR", b"RETR 1 2", b"LIST 1 2",
                     b"DELE", b"TOP 1", b"TOP 1 x", b"TOP 1 -1", b"STAT 1", b"NOOP x", b"UIDL 99",
                     b"USER alice", b"PASS x"):
            reply = self.talk(line + b"\r\n")
            self.assertTrue(reply.startswith(b"-ERR ") and reply.count(b"\r\n") == 1, (line, reply))
        self.assertEqual(self.talk(b"NOOP\r\n"), b"+OK\r\n")

    def test_dele_rset_and_deleted_messages(self) -> None:
        self.assertEqual(self.talk(b"DELE 1\r\n"), b"+OK Marked to be deleted.\r\n")
        for line in (b"DELE 1", b"RETR 1", b"LIST 1", b"TOP 1 0", b"UIDL 1"):
            self.assertEqual(self.talk(line + b"\r\n"), b"-ERR Message 1 is deleted\r\n")
        self.assertEqual(self.talk(b"STAT\r\n"), b"+OK 2 %d\r\n" % sum(map(octets, MESSAGES[1:])))
        self.assertNotIn(b"\r\n1 ", self.talk(b"LIST\r\n"))
        self.assertEqual(self.talk(b"RSET\r\n"), b"+OK 3 messages\r\n")
        self.assertTrue(self.talk(b"RETR 1\r\n").startswith(b"+OK"))

    def test_quit_commits_deletions(self) -> None:
        self.talk(b"DELE 2\r\n")
        self.assertEqual(self.talk(b"QUIT\r\n"), b"+OK Logging out, messages deleted.\r\n")
        self.assertEqual([u for u, _ in self.store.maildrops["alice"]], ["m1", "m3"])
        self.assertEqual(self.store._locked, set())

    def test_disconnect_commits_nothing(self) -> None:
        self.talk(b"DELE 1\r\nDELE 2\r\n")
        self.proto.connectionLost(None)
        self.assertEqual(len(self.store.maildrops["alice"]), 3)
        self.assertEqual(self.store._locked, set())

    def test_snapshot(self) -> None:
        self.store.deliver("alice", b"new mail\n")
        self.assertEqual(self.talk(b"STAT\r\n").split()[1], b"3")
        self.assertTrue(self.talk(b"RETR 4\r\n").startswith(b"-ERR"))

    def test_pipelined_transaction_in_order(self) -> None:
        reply = self.talk(b"RETR 3\r\nDELE 3\r\nLIST 3\r\nNOOP\r\n")
        self.assertEqual(reply, b"+OK 20 octets\r\n..starts with a dot\r\n.\r\n"
                                b"+OK Marked to be deleted.\r\n-ERR Message 3 is deleted\r\n+OK\r\n")


class BackpressureTests(ProtocolTestCase):
    transport_class = PausingTransport

    def setUp(self) -> None:
        super().setUp()
        # Message 4, in this test's own store (delivered before the login takes its snapshot).
        self.big = b"".join(b".%07d line of a big message\n" % i for i in range(100_000))
        self.store.deliver("alice", self.big)
        self.login()

    def test_stream_pauses_and_resumes(self) -> None:
        self.transport.clear()
        self.proto.dataReceived(b"RETR 4\r\nNOOP\r\n")
        received = self.transport.value()
        self.assertLess(len(received), 100_000 + CHUNK_SIZE * 2)
        self.assertNotIn(b"+OK\r\n", received[-10:])
        data = b""
        for _ in range(10_000):
            data += self.transport.drain()
            self.clock.advance(0)
            if data.endswith(b"\r\n.\r\n+OK\r\n"):
                break
        expected = rfc1939.stuffed(rfc1939.wire_lines(self.big))
        self.assertEqual(data, b"+OK %d octets\r\n" % octets(self.big) + expected + b"+OK\r\n")
