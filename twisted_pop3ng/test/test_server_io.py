"""The direct-socket write path, driven deterministically over real loopback TCP connections.

``twistd pop3ng`` hands the server :class:`~twisted_pop3ng.fastpath.send.DirectSender`, which
writes replies straight to the socket of a plain ``tcp.Server`` transport and leaves whatever the
kernel did not take to the transport. These tests run the real server, the real sender and a real
accepted transport; the only thing added is fault injection on the connection's socket
(:class:`InjectedSocket`): chosen ``send``/``sendmsg`` calls of the sender pass only part of their
bytes to the kernel (as a full socket buffer does), or none (EAGAIN). Every test then checks:

* the bytes the client finally receives, against the independent RFC 1939 oracle
  (:mod:`twisted_pop3ng.testing.rfc1939`, never the codec under test);
* that the partial path really ran (the injected socket counts the short results it gave).

A last test needs no injection at all: tiny socket buffers and a client that does not read until
the server's sender has met a real short write from the kernel.
"""

from __future__ import annotations

import errno
import socket
import sys
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor, task, tcp, threads
from twisted.trial import unittest

from twisted_pop3ng import server
from twisted_pop3ng.fastpath import port as fast_port, send as fast_send
from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.server.io import GATHER_MIN, stock_connection_info
from twisted_pop3ng.server.policy import SecurityConfig
from twisted_pop3ng.server.protocol import POP3ServerProtocol
from twisted_pop3ng.server.realm import MailboxRealm
from twisted_pop3ng.testing import rfc1939

#: Stored messages: a large one (its RETR batch is over GATHER_MIN: one gathered ``sendmsg`` of
#: status line and body pieces), dot lines, bare LF and CRLF, a last line without newline.
BIG = b"Subject: big\n\n" + b"".join(
    (b".dot line %d\n" if i % 5 == 0 else b"line %d of the big one\r\n") % i for i in range(3000))
MESSAGES = (BIG, b"Subject: two\n\n.starts with a dot\nplain\n", b".x\r\nno final newline")
GREETING = b"+OK POP3 server ready.\r\n"
LOGIN = b"USER alice\r\nPASS pw\r\n"
LOGGED_IN = b"+OK Send your password.\r\n+OK Logged in.\r\n"
#: A server send buffer that holds every reply below at once: the kernel then takes whatever a call
#: hands it, and the only short writes are the injected ones.
ROOMY = 1 << 20
#: A cut rule: given the lengths of the pieces a sender call hands the socket, how many octets
#: the kernel "takes" (0: none, as EAGAIN); None: the call is not cut.
Cut = Callable[[List[int]], Optional[int]]


def _read_until_reset(client: socket.socket) -> Tuple[bytes, bool]:
    """What ``client`` receives until the server's FIN or reset; and whether it was a reset."""
    data = b""
    while True:
        try:
            chunk = client.recv(65536)
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, False
        data += chunk


def retr_reply(raw: bytes) -> bytes:
    """RETR's whole reply for a stored message, from the RFC 1939 oracle."""
    return (b"+OK %d octets\r\n" % len(rfc1939.wire_message(raw))
            + rfc1939.stuffed(rfc1939.wire_lines(raw)))


class InjectedSocket:
    """A connection's real socket whose ``send``/``sendmsg`` calls made by the direct sender (and
    by it only: the transport's own writes pass untouched) are cut short by the next rule of
    ``cuts``. Records every call: (who, kind, octets asked, octets taken, flags)."""

    def __init__(self, real: socket.socket, cuts: Sequence[Cut]) -> None:
        self._real = real
        self.cuts = list(cuts)
        #: While True, the transport's own writes find the socket full: what it holds stays there.
        self.hold_transport = False
        self.calls: List[Tuple[str, str, int, int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _limit(self, lengths: List[int]) -> Tuple[str, Optional[int]]:
        # The direct sender calls the socket through fast_send._sent; the transport does not.
        who = "direct" if sys._getframe(2).f_code is fast_send._sent.__code__ else "transport"
        if who == "direct" and self.cuts:
            return who, self.cuts.pop(0)(lengths)
        return who, None

    def _record(self, who: str, kind: str, asked: int, taken: int, flags: int) -> int:
        self.calls.append((who, kind, asked, taken, flags))
        return taken

    def send(self, data: bytes, flags: int = 0) -> int:
        who, limit = self._limit([len(data)])
        if limit == 0 or (who == "transport" and self.hold_transport):
            self._record(who, "send", len(data), 0, flags)
            raise BlockingIOError(errno.EAGAIN, "injected: socket buffer full")
        view = memoryview(data) if limit is None else memoryview(data)[:limit]
        try:
            taken = self._real.send(view, flags)
        except BlockingIOError:
            self._record(who, "send", len(data), 0, flags)
            raise
        return self._record(who, "send", len(data), taken, flags)

    def sendmsg(self, buffers: List[bytes], *args: Any) -> int:
        lengths = [len(b) for b in buffers]
        who, limit = self._limit(lengths)
        if limit == 0:
            self._record(who, "sendmsg", sum(lengths), 0, 0)
            raise BlockingIOError(errno.EAGAIN, "injected: socket buffer full")
        if limit is not None:
            cut: List[Any] = []
            left = limit
            for piece in buffers:
                if left <= 0:
                    break
                cut.append(memoryview(piece)[:left])
                left -= len(piece)
            buffers = cut
        try:
            taken = self._real.sendmsg(buffers, *args)
        except BlockingIOError:
            self._record(who, "sendmsg", sum(lengths), 0, 0)
            raise
        return self._record(who, "sendmsg", sum(lengths), taken, 0)

    def short(self, kind: Optional[str] = None) -> List[Tuple[str, str, int, int, int]]:
        """The direct sender's calls that the socket took only part of (or nothing of)."""
        return [c for c in self.calls
                if c[0] == "direct" and c[3] < c[2] and (kind is None or c[1] == kind)]


class DirectSenderTests(unittest.TestCase):
    """The server with ``twistd pop3ng``'s sender on a real accepted TCP connection."""

    def setUp(self) -> None:
        self.sockets: List[InjectedSocket] = []
        #: Whether new connections start with their transport unable to send (see InjectedSocket).
        self.hold_transport = False
        #: What happened to the session, in order ("dataReceived returned", "connectionLost").
        self.events: List[str] = []
        #: The type of every accepted transport (the direct sender acts on two).
        self.transport_types: List[type] = []
        self.addresses: List[Tuple[Optional[str], Optional[str]]] = []

    def factory(self, cuts: Sequence[Cut] = (), inject: bool = True) -> server.POP3ServerFactory:
        store = MemoryStore()
        for raw in MESSAGES:
            store.deliver("alice", raw)
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"alice", b"pw")
        # Plaintext USER/PASS is refused except on a local connection (client address = server
        # address): every login below passes the policy's address check, read by the fast path.
        config = server.ServerConfig(security=SecurityConfig(allow_plaintext_auth=False))
        addresses = self.addresses

        def connection_info(transport: Any) -> Tuple[Optional[str], Optional[str]]:
            found = fast_send.direct_connection_info(transport)
            addresses.append(found)
            return found

        factory = server.POP3ServerFactory(Portal(MailboxRealm(store), [checker]), config,
                                           sender=fast_send.DirectSender(),
                                           connection_info=connection_info)
        case = self

        class Instrumented(POP3ServerProtocol):
            def makeConnection(self, transport: Any) -> None:
                if inject:
                    transport.socket = InjectedSocket(transport.socket, cuts)
                    transport.socket.hold_transport = case.hold_transport
                    case.sockets.append(transport.socket)
                case.transport_types.append(type(transport))
                super().makeConnection(transport)

            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                case.events.append("dataReceived returned")

            def connectionLost(self, reason: Any = None) -> None:
                case.events.append("connectionLost")
                super().connectionLost(reason)

        factory.protocol = Instrumented
        return factory

    def serve(self, factory: server.POP3ServerFactory, lean: bool = False,
              interface: str = "127.0.0.1", sndbuf: Optional[int] = None,
              rcvbuf: Optional[int] = None) -> int:
        listener: Any = fast_port.LeanTCPReactor(reactor) if lean else reactor
        listening = listener.listenTCP(0, factory, 50, interface)
        self.addCleanup(listening.stopListening)
        if sndbuf is not None:  # accepted sockets inherit it
            listening.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf is not None:
            listening.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        return int(listening.getHost().port)

    def connect(self, port: int, source: str = "127.0.0.1", rcvbuf: Optional[int] = None
                ) -> socket.socket:
        client = socket.socket()
        self.addCleanup(client.close)
        if rcvbuf is not None:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client.bind((source, 0))
        client.settimeout(30)
        client.connect(("127.0.0.1", port))
        return client

    @defer.inlineCallbacks
    def wait_until(self, condition: Callable[[], bool], what: str) -> Any:
        """Let the reactor run until ``condition()``; a generous deadline, no timing assertion."""
        deadline = time.monotonic() + 30
        while not condition():
            if time.monotonic() > deadline:
                self.fail("timed out waiting until " + what)
            yield task.deferLater(reactor, 0.005, lambda: None)

    def receive(self, client: socket.socket, size: int) -> defer.Deferred:
        """Read exactly ``size`` octets (fewer only if the server closes first), off the reactor."""
        def read() -> bytes:
            data = b""
            while len(data) < size:
                chunk = client.recv(min(65536, size - len(data)))
                if not chunk:
                    break
                data += chunk
            return data
        return threads.deferToThread(read)

    def receive_to_eof(self, client: socket.socket) -> defer.Deferred:
        def read() -> bytes:
            data = b""
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    return data
                data += chunk
        return threads.deferToThread(read)

    @defer.inlineCallbacks
    def session(self, cuts: Sequence[Cut], lean: bool = False) -> Any:
        """Greeting, a pipelined login and RETR of every message (one gathered batch), then QUIT
        on its own; checks every byte the client gets and returns the connection's socket."""
        port = self.serve(self.factory(cuts), lean, sndbuf=ROOMY)
        client = self.connect(port)
        client.sendall(LOGIN + b"".join(b"RETR %d\r\n" % (i + 1) for i in range(len(MESSAGES))))
        expected = GREETING + LOGGED_IN + b"".join(retr_reply(raw) for raw in MESSAGES)
        received = yield self.receive(client, len(expected))
        self.assertEqual(received, expected)
        client.sendall(b"QUIT\r\n")
        rest = yield self.receive_to_eof(client)
        self.assertEqual(rest, b"+OK Logging out.\r\n")
        self.assertEqual(len(self.sockets), 1)
        return self.sockets[0]

    def batch_pieces(self, injected: InjectedSocket) -> Tuple[str, str, int, int, int]:
        """The direct sender's call that carried the RETR batch (the largest one)."""
        return max((c for c in injected.calls if c[0] == "direct"), key=lambda c: c[2])

    # -- send: a short batch, joined ---------------------------------------------------------

    @defer.inlineCallbacks
    def test_greeting_cut_after_one_octet_the_rest_follows_in_order(self) -> None:
        for lean in (False, True):
            self.sockets.clear()
            injected = yield self.session([lambda lengths: 1], lean)
            short = injected.short("send")
            self.assertEqual([(c[2], c[3]) for c in short], [(len(GREETING), 1)])
            # The rest went to the transport, which sent it itself.
            self.assertIn("transport", [c[0] for c in injected.calls])
        # Both transports the direct sender acts on: Twisted's own, and the lean one (Twisted's
        # own again when the fast path's probes are off).
        self.assertEqual(self.transport_types[0], tcp.Server)
        self.assertTrue(set(self.transport_types) <= fast_port.SERVER_TRANSPORTS)

    @defer.inlineCallbacks
    def test_bytes_the_transport_holds_are_never_overtaken(self) -> None:
        """The greeting is cut and the transport cannot send its rest until the login batch has
        been answered: that answer must queue behind it, not go to the socket first."""
        port = self.serve(self.factory([lambda lengths: 5]), sndbuf=ROOMY)
        self.hold_transport = True
        client = self.connect(port)
        yield self.wait_until(lambda: bool(self.sockets), "the connection was accepted")
        injected = self.sockets[0]
        client.sendall(LOGIN + b"RETR 2\r\n")
        yield self.wait_until(lambda: "dataReceived returned" in self.events, "the batch was answered")
        self.assertEqual([c[0] for c in injected.calls if c[0] == "direct"], ["direct"])
        injected.hold_transport = False
        expected = GREETING + LOGGED_IN + retr_reply(MESSAGES[1])
        received = yield self.receive(client, len(expected))
        self.assertEqual(received, expected)

    @defer.inlineCallbacks
    def test_a_send_that_takes_nothing_leaves_everything_to_the_transport(self) -> None:
        injected = yield self.session([lambda lengths: 0])
        self.assertEqual([(c[1], c[3]) for c in injected.short()], [("send", 0)])

    # -- sendmsg: a large batch, gathered ------------------------------------------------------

    @defer.inlineCallbacks
    def test_gathered_batch_taken_whole_leaves_nothing_to_the_transport(self) -> None:
        injected = yield self.session([])
        batch = self.batch_pieces(injected)
        self.assertEqual(batch[1], "sendmsg")
        self.assertEqual(batch[3], batch[2])
        self.assertEqual([c for c in injected.calls if c[0] == "transport"], [])

    @defer.inlineCallbacks
    def test_gathered_batch_cut_inside_a_piece(self) -> None:
        def inside_the_third_piece(lengths: List[int]) -> Optional[int]:
            return sum(lengths[:2]) + 7 if len(lengths) > 3 else None

        injected = yield self.session([lambda lengths: None, inside_the_third_piece])
        kind, asked, taken = self.batch_pieces(injected)[1:4]
        self.assertEqual(kind, "sendmsg")
        self.assertGreaterEqual(asked, GATHER_MIN)
        self.assertEqual(len(injected.short("sendmsg")), 1)
        self.assertLess(taken, asked)

    @defer.inlineCallbacks
    def test_gathered_batch_cut_exactly_between_pieces(self) -> None:
        cut_at: List[int] = []

        def between_pieces(lengths: List[int]) -> Optional[int]:
            cut_at.append(sum(lengths[:2]))
            return cut_at[-1]

        injected = yield self.session([lambda lengths: None, between_pieces])
        self.assertEqual([(c[1], c[3]) for c in injected.short()], [("sendmsg", cut_at[0])])

    @defer.inlineCallbacks
    def test_gathered_batch_that_the_socket_takes_nothing_of(self) -> None:
        injected = yield self.session([lambda lengths: None, lambda lengths: 0])
        self.assertEqual([(c[1], c[3]) for c in injected.short()], [("sendmsg", 0)])

    @defer.inlineCallbacks
    def test_gathered_batch_short_by_one_octet(self) -> None:
        injected = yield self.session([lambda lengths: None, lambda lengths: sum(lengths) - 1])
        self.assertEqual([c[2] - c[3] for c in injected.short()], [1])

    # -- close at once: QUIT's reply with MSG_MORE, then close --------------------------------

    @defer.inlineCallbacks
    def quit_pipelined(self, cuts: Sequence[Cut]) -> Any:
        """A pipelined login, RETR 2 and QUIT: one batch, which close_at_once sends and closes."""
        port = self.serve(self.factory(cuts), sndbuf=ROOMY)
        client = self.connect(port)
        yield self.wait_until(lambda: len(self.sockets) == 1 and bool(self.sockets[0].calls),
                              "the greeting was sent")
        client.sendall(LOGIN + b"RETR 2\r\nQUIT\r\n")
        received = yield self.receive_to_eof(client)
        self.assertEqual(received, GREETING + LOGGED_IN + retr_reply(MESSAGES[1])
                         + b"+OK Logging out.\r\n")
        return self.sockets[0]

    @defer.inlineCallbacks
    def test_quit_sends_its_batch_with_msg_more_and_closes_at_once(self) -> None:
        injected = yield self.quit_pipelined([])
        last = [c for c in injected.calls if c[0] == "direct"][-1]
        self.assertEqual((last[1], last[3], last[4]), ("send", last[2], socket.MSG_MORE))
        self.assertEqual(injected.short(), [])
        # Closed inside the batch's processing, not on a later reactor turn.
        self.assertEqual(self.events, ["connectionLost", "dataReceived returned"])

    @defer.inlineCallbacks
    def test_quit_batch_cut_short_the_rest_is_flushed_before_the_close(self) -> None:
        injected = yield self.quit_pipelined([lambda lengths: None, lambda lengths: 10])
        short = injected.short()
        self.assertEqual([(c[1], c[3], c[4]) for c in short], [("send", 10, socket.MSG_MORE)])
        # Not closed at once: the transport sent the rest and closed after it.
        self.assertEqual(self.events, ["dataReceived returned", "connectionLost"])

    @defer.inlineCallbacks
    def test_quit_batch_the_socket_takes_nothing_of(self) -> None:
        injected = yield self.quit_pipelined([lambda lengths: None, lambda lengths: 0])
        self.assertEqual([(c[3], c[4]) for c in injected.short()], [(0, socket.MSG_MORE)])
        self.assertEqual(self.events, ["dataReceived returned", "connectionLost"])

    @defer.inlineCallbacks
    def test_quit_reply_arrives_even_when_unread_input_makes_the_close_a_reset(self) -> None:
        """A client that sends more after QUIT than the server reads: the close then resets the
        connection (the kernel drops unread input so), and the QUIT reply, corked with MSG_MORE,
        must leave before that: with the FIN that shutdown sends first."""
        for lean in (False, True):
            self.sockets.clear()
            self.events.clear()
            port = self.serve(self.factory(()), lean, sndbuf=ROOMY, rcvbuf=ROOMY)
            client = self.connect(port)
            greeting = yield self.receive(client, len(GREETING))
            self.assertEqual(greeting, GREETING)
            # All of it queued at the server before its reactor runs again (no yield): its one
            # read of 64 KiB then holds the commands and QUIT, and 64 KiB stay unread.
            self.assertGreater(self.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                               1 << 18)
            client.sendall(LOGIN + b"QUIT\r\n" + b"x" * (1 << 17))
            received = yield threads.deferToThread(_read_until_reset, client)
            self.assertEqual(received[0], LOGGED_IN + b"+OK Logging out.\r\n")
            yield self.wait_until(lambda: "connectionLost" in self.events, "the server closed")
            self.events.clear()

    # -- real short writes, no injection ----------------------------------------------------------

    @defer.inlineCallbacks
    def test_real_full_socket_buffer_with_a_client_that_waits(self) -> None:
        """Tiny buffers and a client that reads nothing until the kernel has refused part of a
        direct write: then every byte must still arrive, in order."""
        for lean in (False, True):
            self.sockets.clear()
            port = self.serve(self.factory(()), lean, sndbuf=4096)
            client = self.connect(port, rcvbuf=4096)
            retrs = b"".join(b"RETR %d\r\n" % (i + 1) for i in (0, 1, 2, 0, 1, 2))
            client.sendall(LOGIN + retrs + b"NOOP\r\n")
            yield self.wait_until(lambda: bool(self.sockets and self.sockets[0].short()),
                                  "the kernel took only part of a direct write")
            expected = (GREETING + LOGGED_IN
                        + b"".join(retr_reply(MESSAGES[i]) for i in (0, 1, 2, 0, 1, 2)) + b"+OK\r\n")
            received = yield self.receive(client, len(expected))
            self.assertEqual(received, expected)
            client.sendall(b"QUIT\r\n")
            rest = yield self.receive_to_eof(client)
            self.assertEqual(rest, b"+OK Logging out.\r\n")

    # -- the policy's address check through the raw-address fast path --------------------------

    @defer.inlineCallbacks
    def test_plaintext_login_allowed_only_from_the_servers_own_address(self) -> None:
        """``direct_connection_info`` reads the raw address tuples; the policy decides on them:
        127.0.0.1 -> 127.0.0.1 is local (USER accepted), 127.0.0.2 -> 127.0.0.1 is not."""
        for interface in ("127.0.0.1", "0.0.0.0"):  # a bound listener, and the wildcard
            self.addresses.clear()
            port = self.serve(self.factory(inject=False), interface=interface)
            replies = []
            for source in ("127.0.0.1", "127.0.0.2"):
                client = self.connect(port, source)
                client.sendall(b"USER alice\r\nQUIT\r\n")
                replies.append((yield self.receive_to_eof(client)))
            self.assertEqual(replies[0], GREETING + b"+OK Send your password.\r\n+OK Bye.\r\n")
            self.assertTrue(replies[1].startswith(GREETING + b"-ERR "), replies[1])
            self.assertIn(b"TLS", replies[1])  # the refusal names what is missing
            self.assertTrue(replies[1].endswith(b"\r\n+OK Bye.\r\n"), replies[1])
            self.assertEqual(self.addresses, [("127.0.0.1", "127.0.0.1"), ("127.0.0.2", "127.0.0.1")])

    def test_the_stock_addresses_agree(self) -> defer.Deferred:
        """The fast path's answer is the stock one (public API) on a real accepted connection."""
        seen: List[Any] = []

        class Probe(POP3ServerProtocol):
            def makeConnection(self, transport: Any) -> None:
                seen.append((fast_send.direct_connection_info(transport),
                             stock_connection_info(transport), type(transport)))
                transport.loseConnection()

        factory = self.factory(inject=False)
        factory.protocol = Probe
        port = self.serve(factory, interface="0.0.0.0")
        client = self.connect(port, "127.0.0.2")
        d = self.wait_until(lambda: bool(seen), "the connection was accepted")

        def check(_: Any) -> None:
            client.close()
            self.assertEqual(seen[0][:2], (("127.0.0.2", "127.0.0.1"), ("127.0.0.2", "127.0.0.1")))
            self.assertIs(seen[0][2], tcp.Server)

        return d.addCallback(check)
