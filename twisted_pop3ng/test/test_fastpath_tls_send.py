"""POP3S replies leave at once: :class:`~twisted_pop3ng.fastpath.tls.BatchedTLSProtocol` over a real
TCP connection hands its records to the socket during the write, not at the reactor's next turn."""

from __future__ import annotations

import select
import socket
import ssl
from typing import Any, List

from twisted.internet import protocol, reactor, threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest

from twisted_pop3ng.fastpath import _compat
from twisted_pop3ng.fastpath import tls as fast_tls
from twisted_pop3ng.test.test_fastpath import _Context


class _Greeter(protocol.Protocol):
    """Writes a greeting when connected; ``ready`` fires with the protocol then."""

    def __init__(self, ready: Deferred) -> None:
        self.ready = ready

    def connectionMade(self) -> None:
        # As the POP3 server does: without it, Nagle's algorithm may hold a reply back until
        # the client acknowledges the last one, whoever sends it.
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.transport.write(b"+OK ready\r\n")  # type: ignore[union-attr]
        self.ready.callback(self)


class DirectTLSSendTests(unittest.TestCase):
    def setUp(self) -> None:
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("localhost")
        from OpenSSL import SSL

        context = SSL.Context(SSL.TLS_METHOD)
        leaf.configure_cert(context)
        options = _Context(context)
        self.connected: Deferred = Deferred()
        wrapped = protocol.Factory.forProtocol(lambda: _Greeter(self.connected))
        self.port = reactor.listenTCP(0, fast_tls.tls_factory(options, wrapped), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.client_context = ssl.create_default_context()
        ca.configure_trust(self.client_context)

    def connect(self) -> Any:
        raw = socket.create_connection(("127.0.0.1", self.port.getHost().port), timeout=30)
        tls = self.client_context.wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(tls.close)
        return tls

    @inlineCallbacks
    def test_a_reply_is_on_the_wire_when_write_returns(self) -> Any:
        client = yield threads.deferToThread(self.connect)
        server = yield self.connected
        greeting = yield threads.deferToThread(client.recv, 100)
        self.assertEqual(greeting, b"+OK ready\r\n")
        # What the application sees of its transport: TLS, and all the TCP connection offers.
        from twisted.internet.interfaces import ISSLTransport, ITCPTransport
        from zope.interface import providedBy

        self.assertTrue(ISSLTransport.providedBy(server.transport))
        self.assertTrue(ITCPTransport.providedBy(server.transport))
        self.assertLessEqual(set(providedBy(server.transport.transport)), set(providedBy(server.transport)))
        sent: List[bool] = []
        for n in range(3):
            server.transport.write(b"+OK reply %d\r\n" % n)
            # Loopback TCP queues the bytes at the receiver within the send: readable now, in
            # this reactor turn. Twisted's own transport would send only at the next turn.
            sent.append(bool(select.select([client], [], [], 0)[0]))
            line = yield threads.deferToThread(client.recv, 100)  # (the stock path sends meanwhile)
            self.assertEqual(line, b"+OK reply %d\r\n" % n)
        # Where the probes say no (POP3NG_STOCK_TWISTED=1), Twisted's transport queues them.
        fast = _compat.BATCHED_TLS and _compat.DIRECT_SEND
        self.assertEqual(sent, [fast] * 3)
        # The ordinary close still follows: close_notify, then the end of the stream.
        server.transport.loseConnection()
        rest = yield threads.deferToThread(client.recv, 100)
        self.assertEqual(rest, b"")
