"""Our client against our own ``twistd pop3ng`` over real loopback sockets: STLS (a command queued
behind it included), SCRAM-PLUS with both channel-binding types, IN-USE, and a connection dropped
in the middle of a RETR."""

from __future__ import annotations

import os

from twisted.internet import defer, error as ierror, protocol, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.trial import unittest

from twisted_pop3ng import client as pop3
from twisted_pop3ng.client.connect import connect, tls_options, trust_root

from .support import start_server

PASSWORD = "open sesame with spaces"


class OurServerTests(unittest.TestCase):
    def setUp(self):
        root = os.path.abspath(self.mktemp())
        self.server = start_server(root, {"alice": PASSWORD})
        self.addCleanup(self.server.stop)
        self.messages = [b"Subject: %d\r\n\r\n.dot line\r\nbody\r\n" % i for i in range(5)]
        for message in self.messages:
            self.server.deliver("alice", message)
        self.ca = self.server.certs["ca"]

    def test_stls_then_strongest_mechanism(self):
        async def go():
            client = await connect(reactor, "pop3://alice@localhost:%d" % self.server.port,
                                   password=PASSWORD, cafile=self.ca)
            self.assertTrue(client.tls)
            self.assertEqual(client.mechanism, "SCRAM-SHA-256-PLUS")  # tls-exporter over TLS 1.3
            bodies = await defer.gatherResults([client.retrieve(n) for n in range(1, 6)])
            self.assertEqual(bodies, self.messages)
            await client.quit()
        return defer.ensureDeferred(go())

    def test_command_queued_behind_stls_goes_over_tls(self):
        """Finding F15: ``starttls()`` then ``capa()`` without waiting. Before the fix CAPA went out
        in plaintext after the +OK, into the server's TLS handshake, and the session died."""
        async def go():
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port)
            client = await endpoint.connect(pop3.POP3ClientFactory())
            await client.ready
            await client.capa()
            tls = client.starttls(tls_options("localhost", self.ca))
            early = client.capa()
            self.assertIn("SASL", await early)
            self.assertIn("SASL", await tls)
            self.assertTrue(client.tls)
            await client.login("alice", PASSWORD)
            self.assertEqual((await client.stat())[0], 5)
            await client.quit()
        return defer.ensureDeferred(go())

    def test_scram_plus_over_tls_1_2(self):
        async def go():
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port)
            client = await endpoint.connect(pop3.POP3ClientFactory())
            await client.ready
            await client.capa()
            options = ssl.optionsForClientTLS("localhost", trustRoot=trust_root(self.ca),
                                              extraCertificateOptions={
                                                  "insecurelyLowerMinimumTo": ssl.TLSVersion.TLSv1_2,
                                                  "lowerMaximumSecurityTo": ssl.TLSVersion.TLSv1_2})
            await client.starttls(options)
            self.assertEqual(client.transport.getHandle().get_protocol_version_name(), "TLSv1.2")
            await client.login("alice", PASSWORD)
            self.assertEqual(client.mechanism, "SCRAM-SHA-256-PLUS")  # tls-server-end-point
            self.assertEqual((await client.stat())[0], 5)
            await client.quit()
        return defer.ensureDeferred(go())

    def test_wrong_password_and_in_use(self):
        async def go():
            url = "pop3s://alice@localhost:%d" % self.server.tls_port
            try:
                await connect(reactor, url, password="nope", cafile=self.ca)
            except pop3.AuthError:
                pass
            else:
                self.fail("wrong password accepted")
            first = await connect(reactor, url, password=PASSWORD, cafile=self.ca)
            try:
                await connect(reactor, url, password=PASSWORD, cafile=self.ca)
            except pop3.InUseError as e:
                self.assertEqual(e.code, "IN-USE")
            else:
                self.fail("second session got the maildrop")
            await first.quit()
        return defer.ensureDeferred(go())


class APOPTests(unittest.TestCase):
    def test_apop_only_when_asked(self):
        root = os.path.abspath(self.mktemp())
        server = start_server(root, {"alice": PASSWORD}, extra_args=["--apop"])
        self.addCleanup(server.stop)

        async def go():
            url = "pop3s://alice@localhost:%d" % server.tls_port
            client = await connect(reactor, url, password=PASSWORD, cafile=server.certs["ca"])
            self.assertNotEqual(client.mechanism, "APOP")
            await client.quit()
            client = await connect(reactor, url, password=PASSWORD, cafile=server.certs["ca"], apop=True)
            self.assertEqual(client.mechanism, "APOP")
            self.assertEqual(await client.stat(), (0, 0))
            await client.quit()
        return defer.ensureDeferred(go())


class OAuthTests(unittest.TestCase):
    """OAUTHBEARER and XOAUTH2 against our server's HMAC token validator."""

    def setUp(self):
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        self.key = b"k" * 32
        key_file = os.path.join(root, "oauth.key")
        with open(key_file, "wb") as f:
            f.write(self.key)
        self.server = start_server(root, {"alice": PASSWORD}, extra_args=["--oauth-hmac-key", key_file])
        self.addCleanup(self.server.stop)
        self.server.deliver("alice", b"Subject: token\r\n\r\nhi\r\n")
        self.url = "pop3s://alice@localhost:%d" % self.server.tls_port

    def test_token_login(self):
        from twisted_pop3ng.auth.oauth import issue_token

        async def go():
            token = issue_token(self.key, "alice")
            for mechanism, expected in ((None, "OAUTHBEARER"), ("XOAUTH2", "XOAUTH2")):
                client = await connect(reactor, self.url, token=token, cafile=self.server.certs["ca"],
                                       mechanism=mechanism)
                self.assertEqual(client.mechanism, expected)
                self.assertEqual((await client.stat())[0], 1)
                await client.quit()
            try:
                await connect(reactor, self.url, token=issue_token(b"x" * 32, "alice"),
                              cafile=self.server.certs["ca"])
            except pop3.AuthError:
                pass
            else:
                self.fail("a token signed with another key was accepted")
        return defer.ensureDeferred(go())


class _DropsMidRetr(protocol.Protocol):
    """Greets, logs anyone in, and closes the connection halfway through the first RETR."""

    def connectionMade(self):
        self.transport.write(b"+OK hi\r\n")

    def dataReceived(self, data):
        for line in data.split(b"\r\n"):
            verb = line.split(b" ")[0].upper()
            if verb == b"CAPA":
                self.transport.write(b"+OK\r\nUSER\r\n.\r\n")
            elif verb in (b"USER", b"PASS"):
                self.transport.write(b"+OK\r\n")
            elif verb == b"RETR":
                self.transport.write(b"+OK\r\nSubject: x\r\n\r\nhalf of the bo")
                self.transport.loseConnection()


class DroppedConnectionTests(unittest.TestCase):
    def test_drop_mid_retr_fails_the_retrieve(self):
        async def go():
            factory = protocol.Factory.forProtocol(_DropsMidRetr)
            port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
            self.addCleanup(port.stopListening)
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
            client = await connect(reactor, endpoint, "u", "p", allow_plaintext=True)
            received = []

            class Sink:
                def write(self, data):
                    received.append(data)
            try:
                await client.retrieve(1, Sink())
            except Exception as e:
                error = e
            else:
                self.fail("a truncated message was reported as complete")
            self.assertIsInstance(error, ierror.ConnectionLost)
            self.assertIn("RETR", str(error))
            self.assertEqual(b"".join(received), b"Subject: x\r\n\r\n")
        return defer.ensureDeferred(go())
