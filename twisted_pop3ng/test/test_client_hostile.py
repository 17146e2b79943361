"""The client against scripted hostile servers over real loopback sockets: a bearer token offered
a plaintext channel (finding F13), a command queued behind STLS (F15), an endless or absurd
listing (F16). Each server is a few lines of script in this process; the client is the real one
with the real reactor."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.trial import unittest

from twisted_pop3ng import client as pop3
from twisted_pop3ng.client.connect import connect

TOKEN = "ya29.secret-bearer-token"
Reply = Union[bytes, Callable[["Scripted"], None]]


class Scripted(protocol.Protocol):
    """Greets, then answers each command line from ``factory.script`` (verb -> bytes or a
    function of the protocol); records every byte received, and what came after STLS apart."""

    transport: Any
    factory: "ScriptedFactory"

    def connectionMade(self) -> None:
        self.factory.sessions.append(self)
        self.received = b""
        self.after_stls: Optional[bytes] = None
        self._unread = b""
        self.transport.write(b"+OK scripted\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self.after_stls is None:
            self.received += data
            self._unread += data
            while self.after_stls is None and b"\r\n" in self._unread:
                line, self._unread = self._unread.split(b"\r\n", 1)
                self._answer(line)
            if self.after_stls is None:
                return
            data, self._unread = self._unread, b""
        if self.after_stls is not None and data:
            self.after_stls += data
            if not self.factory.after_stls.called:
                self.factory.after_stls.callback(self)

    def _answer(self, line: bytes) -> None:
        verb = line.split(b" ")[0].upper()
        if verb == b"STLS":
            self.transport.write(b"+OK Begin TLS\r\n")
            self.after_stls = b""  # from here on, only a TLS ClientHello is acceptable
            return
        reply = self.factory.script.get(verb, b"-ERR unknown\r\n")
        if callable(reply):
            reply(self)
        else:
            self.transport.write(reply)


class ScriptedFactory(protocol.Factory):
    protocol = Scripted  # type: ignore[assignment]

    def __init__(self, script: Dict[bytes, Reply]) -> None:
        self.script = script
        self.sessions: List[Scripted] = []
        self.after_stls: defer.Deferred = defer.Deferred()

    def all_received(self) -> bytes:
        return b"".join(s.received for s in self.sessions)


class HostileServerTests(unittest.TestCase):
    async def serve(self, script: Dict[bytes, Reply]) -> Any:
        factory = ScriptedFactory(script)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return factory, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

    async def raw_client(self, endpoint: Any) -> pop3.POP3Client:
        client = await endpoint.connect(pop3.POP3ClientFactory(timeout=30))
        self.addCleanup(lambda: client.transport.abortConnection() if client.transport else None)
        await client.ready
        return client

    def test_bearer_token_is_not_sent_over_plain_tcp(self):
        """F13: a plain-TCP server offering XOAUTH2 and OAUTHBEARER gets no token."""
        async def go():
            factory, endpoint = await self.serve({
                b"CAPA": b"+OK\r\nSASL XOAUTH2 OAUTHBEARER PLAIN\r\nUSER\r\n.\r\n",
                b"AUTH": b"+OK welcome\r\n"})
            for mechanism in (None, "XOAUTH2"):
                try:
                    await connect(reactor, endpoint, "alice", token=TOKEN, mechanism=mechanism)
                except pop3.CapabilityError as e:
                    self.assertIn("TLS", str(e))
                else:
                    self.fail("the token was used over plain TCP")
            self.assertNotIn(b"AUTH", factory.all_received())
            self.assertNotIn(TOKEN.encode(), factory.all_received())
        return defer.ensureDeferred(go())

    def test_nothing_queued_behind_stls_goes_out_in_plaintext(self):
        """F15: ``starttls()`` then ``noop()`` without waiting: what follows the +OK to STLS on
        the wire is the TLS handshake, not ``NOOP``."""
        async def go():
            factory, endpoint = await self.serve({b"CAPA": b"+OK\r\nSTLS\r\n.\r\n"})
            client = await self.raw_client(endpoint)
            tls = client.starttls(ssl.optionsForClientTLS("localhost"))
            noop = client.noop()
            session = await factory.after_stls
            session.transport.loseConnection()
            for d in (tls, noop):
                d.addErrback(lambda _: None)
                await d
            self.assertNotIn(b"NOOP", session.received)
            self.assertEqual(session.after_stls[:1], b"\x16", session.after_stls[:40])  # a TLS record
            self.assertNotIn(b"NOOP", session.after_stls)
        return defer.ensureDeferred(go())

    def test_ten_megabyte_uidl_line(self):
        """F16: a 10 MB UIDL line is refused once it passes the bound, with a clear error."""
        async def go():
            line = b"+OK\r\n1 " + b"u" * (10 << 20) + b"\r\n.\r\n"
            factory, endpoint = await self.serve({b"UIDL": line})
            client = await self.raw_client(endpoint)
            error = await self.assertFailure(client.uidl(), pop3.ProtocolError)
            self.assertIn("listing line longer than", str(error))
            await client.when_closed()
        return defer.ensureDeferred(go())

    def test_endless_capa(self):
        """F16: a CAPA listing that never ends is refused at the listing bound."""
        def endless(session: Scripted) -> None:
            session.transport.write(b"+OK\r\n")

            class Flood:
                def resumeProducing(self) -> None:
                    session.transport.write(b"X-FILLER some capability text\r\n" * 2000)

                def pauseProducing(self) -> None:
                    pass

                def stopProducing(self) -> None:
                    pass

            session.transport.registerProducer(Flood(), False)

        async def go():
            factory, endpoint = await self.serve({b"CAPA": endless})
            client = await self.raw_client(endpoint)
            client.max_listing_octets = 1 << 20
            error = await self.assertFailure(client.capa(), pop3.ProtocolError)
            self.assertIn("listing longer than", str(error))
            await client.when_closed()
        return defer.ensureDeferred(go())

    def test_invalid_values_in_listings(self):
        """F16: control characters in a UIDL, a negative or absurd size: clear errors."""
        async def go():
            factory, endpoint = await self.serve({
                b"UIDL": b"+OK\r\n1 good\r\n2 bad\x1b[2Jid\r\n.\r\n",
                b"LIST": b"+OK\r\n1 -5\r\n.\r\n",
                b"STAT": b"+OK 1 100000000000000000000000000000\r\n",
                b"NOOP": b"+OK\r\n"})
            client = await self.raw_client(endpoint)
            for call, text in ((client.uidl, "invalid UIDL"), (client.list, "malformed LIST"),
                               (client.stat, "STAT reply")):
                error = await self.assertFailure(call(), pop3.ProtocolError)
                self.assertIn(text, str(error))
                self.assertNotIn("\x1b", str(error))
            await client.noop()  # a bad value fails its command; the session goes on
        return defer.ensureDeferred(go())
