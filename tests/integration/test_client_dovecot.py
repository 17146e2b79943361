"""Our client against a real Dovecot (Debian's dovecot-pop3d), over real sockets and real TLS."""

from __future__ import annotations

import os
from typing import List

import trustme
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from twisted_pop3ng import client as pop3
from twisted_pop3ng.client.connect import connect, tls_options
from twisted_pop3ng.mailbox.maildir import deliver

from .dovecot import start_dovecot
from .fetch_support import maildir_messages
from .support import make_certificates

PASSWORD = "correct horse battery staple"


def sample(i: int) -> bytes:
    return (b"From: a@example.org\r\nSubject: message %d\r\n\r\n.leading dot\r\n"
            b"..two dots\r\n.\r\nbody %d\r\n" % (i, i)) + b"x" * (i * 37) + b"\r\n"


class DovecotClientTests(unittest.TestCase):
    def setUp(self):
        root = self.mktemp()
        os.makedirs(root)
        self.certs = make_certificates(root)
        self.dovecot = start_dovecot(os.path.join(root, "dovecot"), {"bob": PASSWORD}, certs=self.certs)
        self.addCleanup(self.dovecot.stop)
        self.messages = [sample(i) for i in range(1, 41)]
        for message in self.messages:
            deliver(self.dovecot.maildir("bob"), message)
        self.url = "pop3://bob@localhost:%d" % self.dovecot.port

    def remaining(self) -> List[bytes]:
        """The messages left in bob's maildir, in delivery order (Dovecot keeps a message's bytes
        as delivered; only its file name changes)."""
        order = {message: n for n, message in enumerate(self.messages)}
        # a message that is not one of ours (changed bytes) sorts last and shows in the diff
        return sorted(maildir_messages(self.dovecot.maildir("bob")), key=lambda m: order.get(m, len(order)))

    async def _stls_session(self):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.dovecot.port)
        client = await endpoint.connect(pop3.POP3ClientFactory())
        await client.ready
        before = await client.capa()
        self.assertIn("STLS", before)
        self.assertFalse(client.tls)
        after_tls = await client.starttls(tls_options("localhost", self.certs["ca"]))
        self.assertTrue(client.tls)
        self.assertNotIn("STLS", after_tls)
        self.assertIn("SCRAM-SHA-256", after_tls["SASL"])
        after_login = await client.login("bob", PASSWORD)
        self.assertEqual(client.mechanism, "SCRAM-SHA-256")
        self.assertNotIn("SASL", after_login)
        self.assertEqual(client.capabilities, after_login)
        count, _ = await client.stat()
        self.assertEqual(count, len(self.messages))
        await client.quit()

    def test_stls_with_test_ca_scram_and_capabilities_reread(self):
        return defer.ensureDeferred(self._stls_session())

    async def _expect_tls_failure(self, **kwargs):
        try:
            client = await connect(reactor, kwargs.pop("url", self.url), password=PASSWORD, **kwargs)
        except pop3.TLSVerificationError as e:
            return str(e)
        await client.quit()
        self.fail("TLS should have failed")

    def test_untrusted_ca_is_refused(self):
        other = trustme.CA()
        path = os.path.join(self.mktemp())
        other.cert_pem.write_to_path(path)

        async def go():
            text = await self._expect_tls_failure(cafile=path)
            self.assertIn("not trusted", text)
        return defer.ensureDeferred(go())

    def test_wrong_host_name_is_refused(self):
        async def go():
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.dovecot.port)
            try:
                await connect(reactor, endpoint, "bob", PASSWORD, cafile=self.certs["ca"],
                              hostname="pop.example.org")
            except pop3.TLSVerificationError as e:
                self.assertIn("does not match", str(e))
            else:
                self.fail("host name mismatch accepted")
        return defer.ensureDeferred(go())

    def test_every_mechanism(self):
        async def go():
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN"):
                client = await connect(reactor, self.url, password=PASSWORD, cafile=self.certs["ca"],
                                       mechanism=mechanism)
                self.assertEqual(client.mechanism, mechanism)
                self.assertEqual((await client.stat())[0], len(self.messages))
                await client.quit()
        return defer.ensureDeferred(go())

    def test_scram_wrong_password(self):
        async def go():
            try:
                await connect(reactor, self.url, password="wrong", cafile=self.certs["ca"])
            except pop3.AuthError as e:
                self.assertEqual(e.code, "AUTH")
            else:
                self.fail("wrong password accepted")
        return defer.ensureDeferred(go())

    def test_pop3s_pipelined_retrieve_top_delete(self):
        async def go():
            client = await connect(reactor, "pop3s://bob@localhost:%d" % self.dovecot.tls_port,
                                   password=PASSWORD, cafile=self.certs["ca"])
            self.assertIn("PIPELINING", client.capabilities)
            uids, sizes = await defer.gatherResults([client.uidl(), client.list()])
            bodies = await defer.gatherResults([client.retrieve(n) for n in sorted(uids)])
            self.assertEqual(bodies, self.messages)
            self.assertEqual([len(b) for b in bodies], [sizes[n] for n in sorted(sizes)])
            self.assertEqual(await client.uidl(3), uids[3])
            top = await client.top(2, 1)
            self.assertEqual(top, b"From: a@example.org\r\nSubject: message 2\r\n\r\n.leading dot\r\n")
            await defer.gatherResults([client.delete(n) for n in (1, 2, 3)])
            await client.quit()
            self.assertEqual(self.remaining(), self.messages[3:])  # exactly messages 1 to 3 deleted
        return defer.ensureDeferred(go())

    def test_dropped_connection_deletes_nothing(self):
        async def go():
            client = await connect(reactor, self.url, password=PASSWORD, cafile=self.certs["ca"])
            await client.delete(1)
            client.transport.abortConnection()
            await client.when_closed()
            self.assertEqual(self.remaining(), self.messages)
        return defer.ensureDeferred(go())


class DovecotWithoutTLSTests(unittest.TestCase):
    """Finding F18: over a connection without TLS (an endpoint, no ``hostname``), the client does
    not use CRAM-MD5, whose exchange an observer can crack offline, unless plaintext is allowed.
    Dovecot counts loopback as secured, so it offers everything here."""

    def setUp(self):
        root = self.mktemp()
        os.makedirs(root)
        self.dovecot = start_dovecot(os.path.join(root, "dovecot"), {"bob": PASSWORD},
                                     extra_config="auth_mechanisms = plain cram-md5\n")
        self.addCleanup(self.dovecot.stop)
        deliver(self.dovecot.maildir("bob"), sample(1))

    def endpoint(self):
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.dovecot.port)

    def test_cram_md5_only_when_plaintext_is_allowed(self):
        async def go():
            for mechanism in (None, "CRAM-MD5"):
                try:
                    client = await connect(reactor, self.endpoint(), "bob", PASSWORD,
                                           mechanism=mechanism)
                except pop3.CapabilityError as e:
                    self.assertIn("TLS", str(e))
                else:
                    await client.quit()
                    self.fail("logged in with %s without TLS" % client.mechanism)
            client = await connect(reactor, self.endpoint(), "bob", PASSWORD, allow_plaintext=True)
            self.assertEqual(client.mechanism, "CRAM-MD5")
            self.assertEqual((await client.stat())[0], 1)
            await client.quit()
        return defer.ensureDeferred(go())
