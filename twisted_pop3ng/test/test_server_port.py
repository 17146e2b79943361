"""The lean listening port (``fastpath.port.LeanPort``): real sockets on 127.0.0.1; its fallbacks
are in test_fastpath."""

from __future__ import annotations

import errno
import os
import socket

from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.task import deferLater
from twisted.trial import unittest

from twisted_pop3ng.fastpath import port as server_port
from twisted_pop3ng.service import build as tap
from twisted_pop3ng.test.test_fastpath import force_fast


class Greeter(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.made.append(self.transport.getPeer())
        self.factory.names.append((self.transport.logPrefix(), repr(self.transport)))
        self.transport.write(b"+OK hello\r\n")
        self.transport.loseConnection()


def greeter_factory() -> protocol.Factory:
    factory = protocol.Factory.forProtocol(Greeter)
    factory.made = []
    factory.names = []
    return factory


def read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while True:
        chunk = sock.recv(100)
        if not chunk:
            return data
        data += chunk


def greeting(port: int, send: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(send)
        return read_to_eof(sock)


class LeanPortTests(unittest.TestCase):
    def setUp(self) -> None:
        force_fast(self)  # about the lean port: on even in the POP3NG_STOCK_TWISTED=1 leg

    def listen(self, factory: protocol.Factory) -> server_port.LeanPort:
        port = server_port.LeanTCPReactor(reactor).listenTCP(0, factory, 50, "127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, server_port.LeanPort)
        return port

    @defer.inlineCallbacks
    def test_serves_a_burst_of_connections_with_twisteds_transport(self) -> None:
        factory = greeter_factory()
        port = self.listen(factory)
        number = port.getHost().port
        sockets = [socket.create_connection(("127.0.0.1", number)) for _ in range(30)]
        try:
            got = yield defer.gatherResults([
                deferLater(reactor, 0, lambda: None)] + [
                reactor_read(sock) for sock in sockets])
        finally:
            for sock in sockets:
                sock.close()
        self.assertEqual(got[1:], [b"+OK hello\r\n"] * 30)
        self.assertEqual(len(factory.made), 30)
        self.assertEqual({addr.host for addr in factory.made}, {"127.0.0.1"})
        # Twisted's transport class, without its per-connection log strings (made on demand).
        self.assertTrue(issubclass(port.transport, tcp.Server))
        self.assertEqual(port.transport, server_port.LeanServer)
        # ... which are what tcp.Server formats: "Protocol,session,peer" and "<Protocol #n on port>".
        self.assertEqual(sorted(factory.names), sorted(
            ("Greeter,%d,127.0.0.1" % n, "<Greeter #%d on %d>" % (n, number)) for n in range(30)))

    @defer.inlineCallbacks
    def test_an_accept_error_goes_to_twisteds_own_handling(self) -> None:
        """ECONNABORTED (or EMFILE...) is not "no more connections": tcp.Port.doRead takes over,
        and the connection waiting behind the error is still served."""
        factory = greeter_factory()
        port = self.listen(factory)
        real = port.socket
        calls = []

        class Flaky:
            # LeanPort calls the raw _accept, Twisted's tcp.Port the socket's accept().
            def _accept(self):
                calls.append("_accept")
                if len(calls) == 1:
                    raise OSError(errno.ECONNABORTED, os.strerror(errno.ECONNABORTED))
                return real._accept()

            def accept(self):
                calls.append("accept")
                return real.accept()

            def __getattr__(self, name):
                return getattr(real, name)

        port.socket = Flaky()
        self.addCleanup(setattr, port, "socket", real)
        stock = []
        original = tcp.Port.doRead
        self.patch(tcp.Port, "doRead", lambda self: stock.append(1) or original(self))
        data = yield deferToThreadGreeting(port.getHost().port)
        self.assertEqual(data, b"+OK hello\r\n")
        self.assertGreaterEqual(len(calls), 2)
        self.assertEqual(len(stock), 1)  # the error went to Twisted's own accept loop
        self.assertEqual(len(factory.made), 1)

    @defer.inlineCallbacks
    def test_nagle_is_off_on_every_connection(self) -> None:
        """The protocol's setTcpNoDelay(True) holds: a one-line reply must not wait for the ACK of
        the last one. Linux hands TCP_NODELAY down from the listening socket, which has it, so
        the lean port sees that on the first connection and then spares the call; where it
        does not (or until then), the call is made."""
        class NoDelay(Greeter):
            def connectionMade(self) -> None:
                self.transport.setTcpNoDelay(True)
                self.factory.seen.append(self.transport.getTcpNoDelay())  # (getsockopt)
                self.transport.setTcpNoDelay(False)  # and it can still be turned off
                self.factory.seen.append(self.transport.getTcpNoDelay())
                Greeter.connectionMade(self)

        for handed_down in (None, False):
            factory = greeter_factory()
            factory.protocol = NoDelay
            factory.seen = []
            port = self.listen(factory)
            self.assertIs(port._lean_no_delay, None)  # (not known before a connection)
            if handed_down is False:  # as where the kernel does not hand it down:
                port.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
                port._lean_no_delay = False
            for _ in range(2):
                data = yield deferToThreadGreeting(port.getHost().port)
                self.assertEqual(data, b"+OK hello\r\n")
            self.assertEqual(factory.seen, [True, False, True, False])
            self.assertIs(port._lean_no_delay, handed_down is None)

    @defer.inlineCallbacks
    def test_an_adopted_listening_socket_gets_the_lean_port(self) -> None:
        """What a --workers process does with the socket it inherits."""
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(50)
        listening.setblocking(False)
        self.addCleanup(listening.close)
        factory = greeter_factory()
        port = server_port.LeanTCPReactor(reactor).adoptStreamPort(
            listening.fileno(), socket.AF_INET, factory)
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, server_port.LeanPort)
        self.assertEqual(port.transport, server_port.LeanServer)
        data = yield deferToThreadGreeting(listening.getsockname()[1])
        self.assertEqual(data, b"+OK hello\r\n")
        self.assertEqual(factory.names[0][0], "Greeter,0,127.0.0.1")

    @defer.inlineCallbacks
    def test_twistd_listens_with_the_lean_port(self) -> None:
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        users = os.path.join(root, "users")
        with open(users, "w") as f:
            f.write("alice:{PLAIN}pw\n")
        options = tap.Options()
        options.parseOptions(["--auth", "passwd-file:" + users,
                              "--mailbox", "maildir:" + root + "/{user}/Maildir",
                              "--listen", "tcp:0:interface=127.0.0.1"])
        top = tap.makeService(options)
        top.privilegedStartService()
        self.addCleanup(top.stopService)
        port = list(top)[0].port
        self.assertIsInstance(port, server_port.LeanPort)
        self.assertEqual(port.backlog, tap.DEFAULT_BACKLOG)
        data = yield deferToThreadGreeting(port.getHost().port, b"QUIT\r\n")
        self.assertEqual(data, b"+OK POP3 server ready.\r\n+OK Bye.\r\n")


def reactor_read(sock: socket.socket) -> defer.Deferred:
    """Read ``sock`` to EOF in a thread (the reactor must keep running to accept)."""
    from twisted.internet import threads

    return threads.deferToThread(read_to_eof, sock)


def deferToThreadGreeting(port: int, send: bytes = b"") -> defer.Deferred:
    from twisted.internet import threads

    return threads.deferToThread(greeting, port, send)
