"""Abuse limits seen by one session, byte for byte (StringTransport, fake clock): issue 14.

F1 (the delay after thousands of failures), F4 (absolute login deadline, global cap), F2/F5
(a login still hashing when the client leaves: dropped, its slot never taken; the server's
hashing time is not the client's inactivity), the per-connection failure limit, and the audit log.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer

from twisted_pop3ng import server
from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.server import audit
from twisted_pop3ng.server.policy import SecurityConfig
from twisted_pop3ng.server.realm import MailboxRealm

FAILED = b"-ERR [AUTH] Authentication failed.\r\n"


@implementer(ICredentialsChecker)
class HashingChecker:
    """Answers when the test says, like a slow hash in the pool; records cancellations."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.pending: List[defer.Deferred] = []
        self.cancelled = 0

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        def cancel(_: Any) -> None:
            self.cancelled += 1

        d: defer.Deferred = defer.Deferred(cancel)
        self.pending.append(d)
        if credentials.password == b"right":
            return d.addCallback(lambda _: credentials.username)
        return d.addCallback(lambda _: defer.fail(UnauthorizedLogin()))


class AbuseTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store = MemoryStore()
        self.store.deliver("alice", b"Subject: x\n\nbody\n")
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def factory(self, checker: Any = None, **security: Any) -> server.POP3ServerFactory:
        if checker is None:
            checker = InMemoryUsernamePasswordDatabaseDontUse()
            checker.addUser(b"alice", b"right")
        portal = Portal(MailboxRealm(self.store), [checker])
        config = server.ServerConfig(
            auth_failure_delay=0.001,
            security=SecurityConfig(allow_plaintext_auth=True, max_failure_delay=0.05,
                                    log_successful_logins=True, **security))
        return server.POP3ServerFactory(portal, config, clock=self.clock)

    def connect(self, factory: server.POP3ServerFactory, peer: str = "192.0.2.1") -> Any:
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=_address(peer))
        proto.makeConnection(transport)
        return proto, transport

    def talk(self, proto: Any, transport: Any, data: bytes, wait: float = 0.0) -> bytes:
        transport.clear()
        proto.dataReceived(data)
        if wait:
            self.clock.advance(wait)
        return transport.value()

    def audit_lines(self) -> List[str]:
        return [formatEvent(e) for e in self.events if e.get("log_namespace") == audit.NAMESPACE]


def _address(host: str) -> Any:
    from twisted.internet.address import IPv4Address, IPv6Address

    return IPv6Address("TCP", host, 40110) if ":" in host else IPv4Address("TCP", host, 40110)


class FailureTests(AbuseTestCase):
    def test_thousands_of_failures_stay_auth_failures(self) -> None:
        """F1: after 1,024 failures from one address the delay raised OverflowError: an
        immediate -ERR [SYS/TEMP] and a logged traceback (trial fails on a logged error)."""
        factory = self.factory()
        for _ in range(1200):
            proto, transport = self.connect(factory)
            reply = self.talk(proto, transport, b"USER alice\r\nPASS wrong\r\n", wait=0.05)
            self.assertEqual(reply, b"+OK Send your password.\r\n" + FAILED)
            proto.connectionLost(None)
        proto, transport = self.connect(factory)
        self.assertEqual(self.talk(proto, transport, b"USER alice\r\nPASS right\r\n"),
                         b"+OK Send your password.\r\n+OK Logged in.\r\n")

    def test_connection_closed_after_three_failures(self) -> None:
        proto, transport = self.connect(self.factory())
        for _ in range(2):
            self.assertTrue(self.talk(proto, transport, b"USER alice\r\nPASS x\r\n", 1).endswith(FAILED))
            self.assertFalse(transport.disconnecting)
        self.assertTrue(self.talk(proto, transport, b"USER alice\r\nPASS x\r\nCAPA\r\n", 1)
                        .endswith(FAILED))  # the third: its reply, then the end
        self.assertTrue(transport.disconnecting)
        proto, transport = self.connect(self.factory(max_auth_failures=0))  # 0: no limit
        for _ in range(5):
            self.talk(proto, transport, b"USER alice\r\nPASS x\r\n", 1)
        self.assertFalse(transport.disconnecting)

    def test_a_client_gone_before_its_delayed_failure_is_answered(self) -> None:
        """The third failure's answer comes after the failure delay; a client that left (or was
        closed by the login deadline) meanwhile gets nothing, and no close or abort is scheduled
        for the lost connection (on TLS that abort broke on the dead transport: a logged
        AttributeError, any client could repeat)."""
        for leaves in ("client", "deadline"):
            factory = self.factory(login_deadline=15)
            factory.config.security.max_failure_delay = 5.0
            factory.config.auth_failure_delay = 5.0
            proto, transport = self.connect(factory)
            for _ in range(2):
                self.talk(proto, transport, b"USER alice\r\nPASS x\r\n", 6)
            transport.clear()
            proto.dataReceived(b"USER alice\r\nPASS x\r\n")  # the third: answered in 5 s
            if leaves == "deadline":
                self.clock.advance(3)  # 15 s since connect: the deadline closes it first
                self.assertIn(b"Login time exceeded", transport.value())
            proto.connectionLost(None)
            transport.clear()
            self.clock.advance(30)
            self.assertEqual(transport.value(), b"", leaves)
            self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [], leaves)

    def test_successful_logins_are_logged_only_when_asked(self) -> None:
        factory = self.factory()
        factory.config.security.log_successful_logins = False
        proto, transport = self.connect(factory)
        self.talk(proto, transport, b"USER alice\r\nPASS wrong\r\n", 1)
        self.talk(proto, transport, b"USER alice\r\nPASS right\r\n")
        lines = self.audit_lines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("auth failed: user=alice "), lines)

    def test_audit_log_one_line_per_attempt(self) -> None:
        proto, transport = self.connect(self.factory())
        self.talk(proto, transport, b"USER al\tice\r\r\nPASS secret-guess\r\n", 1)
        self.talk(proto, transport, b"USER alice\r\nPASS right\r\n")
        lines = self.audit_lines()
        self.assertEqual(lines, [
            "auth failed: user=al\\x09ice\\x0d mechanism=USER rip=192.0.2.1 lip=10.0.0.1 tls=no "
            "reason=password",
            "auth ok: user=alice mechanism=USER rip=192.0.2.1 lip=10.0.0.1 tls=no"])
        failed = [e for e in self.events if e.get("audit") == "auth failed"][0]
        self.assertEqual((failed["user"], failed["mechanism"], failed["rip"], failed["reason"]),
                         ("al\\x09ice\\x0d", "USER", "192.0.2.1", "password"))
        self.assertFalse(any("secret-guess" in repr(e) for e in self.events))

    def test_audit_log_of_sasl_plain(self) -> None:
        import base64

        proto, transport = self.connect(self.factory())
        self.talk(proto, transport, b"AUTH PLAIN " + base64.b64encode(b"\0bob\0nope") + b"\r\n", 1)
        self.assertEqual(self.audit_lines(), [
            "auth failed: user=bob mechanism=PLAIN rip=192.0.2.1 lip=10.0.0.1 tls=no reason=password"])


class DeadlineTests(AbuseTestCase):
    def test_keepalives_do_not_extend_the_login_deadline(self) -> None:
        """F4: each line pushed the inactivity deadline; CAPA every 50 s held a connection forever."""
        proto, transport = self.connect(self.factory(login_deadline=100))
        for _ in range(3):
            self.clock.advance(30)
            self.assertTrue(self.talk(proto, transport, b"CAPA\r\n").startswith(b"+OK"))
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.value().endswith(b"-ERR Login time exceeded, closing connection.\r\n"))
        self.assertTrue(transport.disconnecting)

    def test_the_deadline_ends_at_login(self) -> None:
        proto, transport = self.connect(self.factory(login_deadline=100))
        self.talk(proto, transport, b"USER alice\r\nPASS right\r\n")
        self.clock.advance(500)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(100)  # the 600 s idle timeout
        self.assertTrue(transport.disconnecting)

    def test_global_connection_cap(self) -> None:
        factory = self.factory(max_connections=2)
        first, _ = self.connect(factory)
        self.connect(factory, "127.0.0.1")  # local ones count too
        proto, transport = self.connect(factory, "192.0.2.9")
        self.assertEqual(transport.value(),
                         b"-ERR [SYS/TEMP] Server is busy, too many connections, try again later\r\n")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)  # a refused one releases nothing it did not take
        self.assertEqual(factory.abuse_guard.total, 2)
        first.connectionLost(None)
        proto, transport = self.connect(factory, "192.0.2.9")
        self.assertTrue(transport.value().startswith(b"+OK"))

    def test_ipv6_per_address_limit_counts_the_64(self) -> None:
        factory = self.factory(max_connections_per_address=2)
        self.connect(factory, "2001:db8::1")
        self.connect(factory, "2001:db8::2")
        _, transport = self.connect(factory, "2001:db8::3")
        self.assertEqual(transport.value(), b"-ERR [SYS/TEMP] Too many connections from your address\r\n")
        _, transport = self.connect(factory, "2001:db8:0:1::3")
        self.assertTrue(transport.value().startswith(b"+OK"))


class PendingLoginTests(AbuseTestCase):
    def test_hashing_time_is_not_inactivity(self) -> None:
        """F2/F5: the login timeout ran while the server hashed; a slow queue timed out logins."""
        checker = HashingChecker()
        factory = self.factory(checker)
        proto, transport = self.connect(factory)
        self.talk(proto, transport, b"USER alice\r\nPASS right\r\n")
        self.clock.advance(factory.config.login_timeout + 30)
        self.assertFalse(transport.disconnecting)
        transport.clear()
        checker.pending[0].callback(None)
        self.assertEqual(transport.value(), b"+OK Logged in.\r\n")

    def test_login_finishing_after_the_client_left_takes_no_slot(self) -> None:
        """F5: each such login leaked a per-user slot; after 10, the user was locked out.

        The connection is closing (the server closed it, as its timeout did) but connectionLost
        has not run, so nothing was cancelled: the hash completes, and is undone."""
        checker = HashingChecker()
        factory = self.factory(checker, max_connections_per_user=1)
        for _ in range(3):
            proto, transport = self.connect(factory)
            self.talk(proto, transport, b"USER alice\r\nPASS right\r\n")
            proto.close("Bye.")
            checker.pending[-1].callback(None)  # the hash finished after all: undone
            proto.connectionLost(None)
        self.assertEqual(factory.abuse_guard.users, {})
        proto, transport = self.connect(factory)
        self.talk(proto, transport, b"USER alice\r\nPASS right\r\n")
        transport.clear()
        checker.pending[-1].callback(None)
        self.assertEqual(transport.value(), b"+OK Logged in.\r\n")  # not [IN-USE]: no lock left

    def test_queued_hash_of_a_client_that_left_is_cancelled(self) -> None:
        checker = HashingChecker()
        factory = self.factory(checker)
        proto, transport = self.connect(factory)
        self.talk(proto, transport, b"USER alice\r\nPASS wrong\r\n")
        proto.connectionLost(None)
        self.assertEqual(checker.cancelled, 1)
        self.assertEqual(self.audit_lines(), [
            "auth failed: user=alice mechanism=USER rip=192.0.2.1 lip=10.0.0.1 tls=no "
            "reason=disconnected"])

    def test_full_hash_queue_answers_sys_temp_at_once(self) -> None:
        from twisted_pop3ng.auth import checkers

        @implementer(ICredentialsChecker)
        class Busy:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials: Any) -> defer.Deferred:
                return defer.fail(checkers.HashPoolFull())

        proto, transport = self.connect(self.factory(Busy()))
        self.assertEqual(self.talk(proto, transport, b"USER alice\r\nPASS x\r\n"),
                         b"+OK Send your password.\r\n-ERR [SYS/TEMP] Server busy, try again later\r\n")
        self.assertTrue(self.audit_lines()[0].endswith(" reason=busy"))

    def test_overlong_password_is_refused_unhashed(self) -> None:
        """F2: SHA-crypt's cost grows with the password's length; AUTH PLAIN carries up to 16 KB."""
        import base64

        checker = HashingChecker()
        proto, transport = self.connect(self.factory(checker))
        reply = self.talk(proto, transport, b"AUTH PLAIN " + base64.b64encode(
            b"\0alice\0" + b"x" * (server.protocol.MAX_PASSWORD + 1)) + b"\r\n", wait=1)
        self.assertEqual(reply, FAILED)
        self.assertEqual(checker.pending, [])
