"""AUTH, APOP, UTF8 and the security policy byte for byte over StringTransport with a fake clock."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import address, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from twisted_pop3ng import server
from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.server.policy import SecurityConfig, parse_network
from twisted_pop3ng.server.realm import MailboxRealm

FAILED = b"-ERR [AUTH] Authentication failed.\r\n"
REFUSED = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class ProtocolTests(unittest.TestCase):
    def make(self, peer: str = "192.0.2.7", host: str = "192.0.2.1", **security) -> None:
        self.clock = task.Clock()
        store = MemoryStore()
        store.deliver("alice", b"Subject: x\r\n\r\nbody\r\n")
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"alice", b"secret pass")
        config = server.ServerConfig(auth_failure_delay=2.0, security=SecurityConfig(**security))
        self.factory = server.POP3ServerFactory(Portal(MailboxRealm(store), [checker]), config, clock=self.clock)
        self.transport = StringTransport(hostAddress=address.IPv4Address("TCP", host, 110),
                                         peerAddress=address.IPv4Address("TCP", peer, 40000))
        self.proto = self.factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self.greeting = self.transport.value()
        self.transport.clear()

    def talk(self, data: bytes) -> bytes:
        self.transport.clear()
        self.proto.dataReceived(data)
        return self.transport.value()

    def test_pipelined_auth_exchange_then_commands(self) -> None:
        self.make(allow_plaintext_auth=True)
        self.assertEqual(self.talk(b"AUTH PLAIN\r\n" + b64(b"\0alice\0secret pass") + b"\r\nSTAT\r\n"),
                         b"+ \r\n+OK Logged in.\r\n+OK 1 20\r\n")
        self.assertTrue(self.talk(b"AUTH PLAIN\r\n").startswith(b"-ERR AUTH is not valid"))

    def test_failure_waits_for_the_delay_and_grows(self) -> None:
        self.make(allow_plaintext_auth=True)
        self.assertEqual(self.talk(b"AUTH PLAIN " + b64(b"\0alice\0nope") + b"\r\nNOOP\r\n"), b"")
        self.clock.advance(1.9)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.transport.value(), FAILED + b"-ERR NOOP is not valid in the AUTHORIZATION state\r\n")
        self.talk(b"USER alice\r\nPASS nope\r\n")
        self.clock.advance(3.9)
        self.assertEqual(self.transport.value(), b"+OK Send your password.\r\n")
        self.clock.advance(0.1)
        self.assertEqual(self.transport.value(), b"+OK Send your password.\r\n" + FAILED)

    def test_plaintext_refused_for_remote_peer(self) -> None:
        self.make()
        capa = self.talk(b"CAPA\r\n")
        self.assertNotIn(b"\r\nUSER\r\n", capa)
        self.assertNotIn(b"PLAIN", capa)
        self.assertEqual(self.talk(b"USER alice\r\n"), REFUSED)
        self.assertEqual(self.talk(b"AUTH LOGIN\r\n"), REFUSED)
        self.assertEqual(self.talk(b"AUTH\r\n"), b"+OK Supported authentication mechanisms follow\r\n.\r\n")

    def test_local_and_trusted_peers(self) -> None:
        self.make(peer="192.0.2.1")
        self.assertEqual(self.talk(b"USER alice\r\n"), b"+OK Send your password.\r\n")
        self.make(peer="10.1.2.3", trusted_networks=[parse_network("10.0.0.0/8")])
        self.assertIn(b"SASL PLAIN LOGIN", self.talk(b"CAPA\r\n"))
        self.assertEqual(self.talk(b"USER alice\r\n"), b"+OK Send your password.\r\n")

    def test_auth_wire_errors_keep_the_session(self) -> None:
        self.make(allow_plaintext_auth=True)
        self.assertEqual(self.talk(b"AUTH PLAIN not*base64\r\n"), b"-ERR Invalid base64 data\r\n")
        self.assertEqual(self.talk(b"AUTH PLAIN\r\n*\r\n"), b"+ \r\n-ERR Authentication cancelled.\r\n")
        self.assertEqual(self.talk(b"AUTH PLAIN\r\n" + b"A" * 17000 + b"\r\n"),
                         b"+ \r\n-ERR AUTH response line too long\r\n")
        self.assertEqual(self.talk(b"AUTH X-UNKNOWN\r\n"), b"-ERR Unsupported authentication mechanism\r\n")
        self.assertEqual(self.talk(b"AUTH PLAIN a b\r\n"),
                         b"-ERR AUTH takes a mechanism and an optional initial response\r\n")
        self.assertEqual(self.talk(b"AUTH PLAIN " + b64(b"\0alice\0secret pass") + b"\r\n"), b"+OK Logged in.\r\n")

    def test_long_initial_response_accepted(self) -> None:
        self.make(allow_plaintext_auth=True)
        reply = self.talk(b"AUTH PLAIN " + b64(b"\0alice\0" + b"x" * 3000) + b"\r\n")
        self.assertEqual(reply, b"")  # a failed login, answered after the delay (not "line too long")
        self.clock.advance(2)
        self.assertEqual(self.transport.value(), FAILED)

    def test_apop(self) -> None:
        self.make(apop=True, hostname="pop.example")
        stamp = self.greeting.split(b" ")[-1].strip()
        self.assertRegex(stamp, rb"^<\d+\.[0-9a-f]+@pop\.example>$")
        digest = hashlib.md5(stamp + b"secret pass").hexdigest().encode()
        # twisted's memory checker stores plaintext, so IUsernameHashedPassword checks work with it.
        self.assertEqual(self.talk(b"APOP alice " + digest + b"\r\n"), b"+OK Logged in.\r\n")

    def test_utf8_and_capabilities(self) -> None:
        self.make(login_delay=900, expire="NEVER")
        capa = self.talk(b"CAPA\r\n")
        for cap in (b"UTF8 USER", b"LOGIN-DELAY 900", b"EXPIRE NEVER"):
            self.assertIn(b"\r\n" + cap + b"\r\n", capa)
        self.assertNotIn(b"STLS", capa)  # no certificate on this factory
        self.assertEqual(self.talk(b"UTF8\r\n"), b"+OK UTF8 enabled\r\n")
        self.assertEqual(self.talk(b"STLS\r\n"), b"-ERR STLS is not available: no certificate configured\r\n")

    def test_connection_limit_per_address(self) -> None:
        self.make(max_connections_per_address=1)
        other = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=address.IPv4Address("TCP", "192.0.2.7", 40001))
        other.makeConnection(transport)
        self.assertEqual(transport.value(), b"-ERR [SYS/TEMP] Too many connections from your address\r\n")
        self.assertTrue(transport.disconnecting)
        other.connectionLost(None)
        self.proto.connectionLost(None)
        again = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=address.IPv4Address("TCP", "192.0.2.7", 40002))
        again.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"+OK"))


class AddressPolicyTests(unittest.TestCase):
    """Which peers count as local or trusted, with IPv6 and IPv4-mapped addresses."""

    def allowed(self, peer, host, **security) -> bool:
        from twisted_pop3ng.server import policy

        proto: Any = server.POP3ServerFactory(Portal(MailboxRealm(MemoryStore()), []),
                                         server.ServerConfig(security=SecurityConfig(**security)),
                                         clock=task.Clock()).buildProtocol(None)
        proto.transport = StringTransport(hostAddress=host, peerAddress=peer)
        return policy.plaintext_allowed(proto)

    def test_addresses(self) -> None:
        v6 = lambda host: address.IPv6Address("TCP", host, 110)  # noqa: E731
        v4 = lambda host: address.IPv4Address("TCP", host, 110)  # noqa: E731
        self.assertTrue(self.allowed(v6("::1"), v6("::1")))
        self.assertFalse(self.allowed(v6("2001:db8::2"), v6("2001:db8::1")))
        nets = [parse_network("10.0.0.0/8"), parse_network("2001:db8::/32")]
        self.assertTrue(self.allowed(v6("::ffff:10.1.2.3"), v6("::1"), trusted_networks=nets))
        self.assertTrue(self.allowed(v6("2001:db8::2"), v6("::1"), trusted_networks=nets))
        self.assertFalse(self.allowed(v4("11.1.2.3"), v4("10.0.0.1"), trusted_networks=nets))
        self.assertTrue(self.allowed(address.UNIXAddress(b"/run/pop3.sock"), address.UNIXAddress(None)))
