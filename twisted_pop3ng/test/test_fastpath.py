"""The fast path's contract (:mod:`twisted_pop3ng.fastpath`): its probes, and that every fallback
works and puts the same bytes on the wire as the fast piece it replaces (real loopback sockets)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from typing import Any, Dict, List, Optional, Tuple

from OpenSSL import SSL
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import abstract, base, defer, protocol, reactor, task, tcp, threads
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.trial import unittest
from zope.interface import implementer

import twisted_pop3ng.fastpath as fastpath
from twisted_pop3ng import server, wire
from twisted_pop3ng.fastpath import _compat, port as fast_port, send as fast_send, tls as fast_tls
from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.server.io import STOCK_SENDER, SessionIO, stock_connection_info
from twisted_pop3ng.server.policy import SecurityConfig
from twisted_pop3ng.server.realm import MailboxRealm
from twisted_pop3ng.service import build

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The module attributes of _compat the pieces read, and the probe each one comes from.
_RESULTS = {"TIMED_CALL_STATE_PRESENT": "timed_call_state", "EPOLL_INTERNALS": "epoll_internals",
            "LEAN_SERVER": "lean_server", "LEAN_PORT": "lean_port",
            "ADOPT_LEAN_PORT": "adopt_lean_port", "DIRECT_SEND": "direct_send",
            "BATCHED_TLS": "batched_tls"}


def use_probes(case: unittest.TestCase, probes: _compat.Probes) -> None:
    """Make the pieces see ``probes`` (as _compat's module attributes, which they read)."""
    case.patch(_compat, "TOP_HANDLER", base._topHandler if probes.top_handler else None)
    for name, field in _RESULTS.items():
        case.patch(_compat, name, getattr(probes, field))


def force_fast(case: unittest.TestCase) -> None:
    """What the probes find on this Twisted, even when the tests run with POP3NG_STOCK_TWISTED=1."""
    use_probes(case, _compat.probe({}))


def force_stock(case: unittest.TestCase, **only: bool) -> None:
    """Make the pieces see what the probes report under ``POP3NG_STOCK_TWISTED=1`` (or, with
    ``only``, the fast path with just those results changed)."""
    if only:
        force_fast(case)
        for name, value in only.items():
            case.patch(_compat, name, value)
        return
    use_probes(case, _compat.probe({_compat.STOCK_ENV: "1"}))


class ProbeTests(unittest.TestCase):
    def test_this_twisted_is_supported_and_every_piece_is_on(self) -> None:
        """The Twisted installed here is the newest in SUPPORTED_TWISTED: every probe passes. A new
        Twisted that fails here is the alarm to look at its changes (the server still works: the
        fallbacks below are tested)."""
        self.assertTrue(_compat.twisted_in_tested_range())
        self.assertEqual(_compat.probe({}).as_dict(),
                         {name: True for name in _compat.Probes.__dataclass_fields__})
        force_fast(self)
        self.assertTrue(fastpath.available())
        self.assertNotIn("(stock)", fastpath.describe())

    def test_the_environment_variable_turns_every_probe_off(self) -> None:
        probes = _compat.probe({"POP3NG_STOCK_TWISTED": "1"})
        self.assertEqual(set(probes.as_dict().values()), {False})
        self.assertEqual(_compat.probe({"POP3NG_STOCK_TWISTED": "0"}), _compat.probe({}))
        force_stock(self)
        self.assertFalse(fastpath.available())
        description = fastpath.describe()
        self.assertIn("reactor: Twisted's EPollReactor (stock)", description)
        self.assertIn("replies: transport.writeSequence (stock)", description)
        self.assertEqual(description.count("(stock)"), len(fastpath.active()))

    def test_the_version_range(self) -> None:
        self.assertTrue(_compat.twisted_in_tested_range("26.4.0"))
        self.assertTrue(_compat.twisted_in_tested_range("26.10.0rc1"))
        self.assertFalse(_compat.twisted_in_tested_range("26.3.0"))
        self.assertFalse(_compat.twisted_in_tested_range("27.1.0"))
        self.assertFalse(_compat.twisted_in_tested_range("trunk"))

    def test_a_field_added_to_the_constructor_leanserver_unrolls_turns_it_off(self) -> None:
        original = tcp.Server.__init__

        def init(self: Any, *args: Any) -> None:
            original(self, *args)
            self._newOutputState = []

        self.patch(tcp.Server, "__init__", init)
        self.assertFalse(_compat.probe({}).lean_server)

    def test_another_output_queue_turns_the_direct_sender_off(self) -> None:
        """If a Twisted keeps unsent bytes elsewhere than dataBuffer/_tempDataBuffer, "the transport
        holds nothing" would be a lie and replies could be reordered: the probe catches it."""
        original = abstract.FileDescriptor.writeSequence

        def writeSequence(self: Any, data: Any) -> None:
            self._pendingVectors = list(data)
            original(self, data)

        self.patch(abstract.FileDescriptor, "writeSequence", writeSequence)
        self.assertFalse(_compat.probe({}).direct_send)
        self.assertTrue(_compat.probe({}).lean_port)  # the others are not affected

    def test_missing_private_names_turn_their_piece_off(self) -> None:
        for owner, name, field in [
                (TLSMemoryBIOProtocol, "_bufferedWrite", "batched_tls"),
                (tcp.Port, "_fromListeningDescriptor", "adopt_lean_port"),
                (tcp.Port, "_buildAddr", "lean_port"),
                (base, "_topHandler", "top_handler")]:
            saved = owner.__dict__[name]
            delattr(owner, name)
            try:
                self.assertFalse(getattr(_compat.probe({}), field), name)
            finally:
                setattr(owner, name, saved)
            self.assertTrue(getattr(_compat.probe({}), field), name)


# -- a POP3 server over real sockets, fast and stock ----------------------------------------------

BIG = b"Subject: big\r\n\r\n" + b"".join(b".line %d of a large message\r\n" % i
                                          for i in range(12_000))
MESSAGES = [b"Subject: one\n\nfirst body\n.dotted\n", b"Subject: two\r\n\r\nsecond\r\n", BIG] + [
    b"Subject: %d\n\nsmall\n" % i for i in range(40)]
#: One session: (command, multi-line reply?).
SCRIPT = [(b"CAPA", True), (b"USER alice", False), (b"PASS pw", False), (b"STAT", False),
          (b"LIST", True), (b"UIDL", True), (b"RETR 1", True), (b"TOP 2 1", True),
          (b"RETR 3", True), (b"BOGUS", False), (b"DELE 4", False), (b"LIST 4", False),
          (b"NOOP", False), (b"RETR 3", True), (b"QUIT", False)]


def pop3_factory(**strategies: Any) -> server.POP3ServerFactory:
    store = MemoryStore()
    for message in MESSAGES:
        store.deliver("alice", message)
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(b"alice", b"pw")
    config = server.ServerConfig(security=SecurityConfig(allow_plaintext_auth=True))
    return server.POP3ServerFactory(Portal(MailboxRealm(store), [checker]), config, **strategies)


def _read_reply(sock: socket.socket, pending: bytes, multi: bool) -> Tuple[bytes, bytes]:
    end = b"\r\n.\r\n" if multi else b"\r\n"
    data = pending
    while True:
        index = data.find(end)
        if index != -1 and not (multi and data.startswith(b"-ERR")):
            return data[:index + len(end)], data[index + len(end):]
        if multi and data.startswith(b"-ERR") and b"\r\n" in data:
            index = data.find(b"\r\n")
            return data[:index + 2], data[index + 2:]
        chunk = sock.recv(65536)
        if not chunk:
            return data, b""
        data += chunk


def run_session(port: int, pipelined: bool) -> bytes:
    """The SCRIPT against 127.0.0.1:port; everything received until the server closed."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(20)
        sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if pipelined:
            sock.sendall(b"".join(command + b"\r\n" for command, _ in SCRIPT))
            received = b""
        else:
            received, pending = _read_reply(sock, b"", False)
            for command, multi in SCRIPT:
                sock.sendall(command + b"\r\n")
                reply, pending = _read_reply(sock, pending, multi)
                received += reply
            received += pending
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


class SenderTests(unittest.TestCase):
    """The direct sender and the stock one give byte-identical sessions over real sockets."""

    def setUp(self) -> None:
        force_fast(self)

    def serve(self, factory: protocol.Factory, lean: bool) -> int:
        listener = fast_port.LeanTCPReactor(reactor) if lean else reactor
        listening = listener.listenTCP(0, factory, 50, "127.0.0.1")
        self.addCleanup(listening.stopListening)
        # Accepted sockets inherit a small send buffer: a large reply is only partly taken at a
        # time, so the direct sender's "rest to the transport" paths run too.
        listening.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        return listening.getHost().port

    def count_direct_sends(self) -> List[int]:
        calls: List[int] = []
        original = fast_send._sent

        def counting(*args: Any) -> int:
            calls.append(1)
            return original(*args)

        self.patch(fast_send, "_sent", counting)
        return calls

    @defer.inlineCallbacks
    def test_fast_and_stock_sessions_are_byte_identical(self) -> None:
        direct = self.count_direct_sends()
        fast = pop3_factory(sender=fast_send.DirectSender(),
                            connection_info=fast_send.direct_connection_info)
        stock = pop3_factory()  # what an embedding application gets
        self.assertIs(stock.sender, STOCK_SENDER)
        self.assertIs(stock.connection_info, stock_connection_info)
        fast_port_number = self.serve(fast, lean=True)
        stock_port_number = self.serve(stock, lean=False)
        for pipelined in (False, True):
            before = len(direct)
            fast_bytes = yield threads.deferToThread(run_session, fast_port_number, pipelined)
            used = len(direct) - before
            stock_bytes = yield threads.deferToThread(run_session, stock_port_number, pipelined)
            self.assertEqual(len(direct) - before, used)  # the stock server never sent directly
            self.assertGreater(used, 0)  # ... and the fast one did
            self.assertEqual(fast_bytes, stock_bytes)
            # The session really ran: the big message (twice, > 32 KiB: the sendmsg path), the
            # error reply, the goodbye.
            encoded = wire.encode_message(BIG)
            self.assertEqual(fast_bytes.count(encoded), 2)
            self.assertIn(b"\r\n-ERR", fast_bytes)
            self.assertTrue(fast_bytes.endswith(b"\r\n.\r\n+OK Logging out, messages deleted.\r\n"),
                            fast_bytes[-100:])

    @defer.inlineCallbacks
    def test_the_direct_sender_never_overtakes_bytes_the_transport_holds(self) -> None:
        sender = fast_send.DirectSender()

        class Writer(protocol.Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"first ")  # queued until the reactor reports writable
                sender.send(self.transport, [b"second ", b"third"], False)
                sender.send(self.transport, [b" fourth"], True)
                self.transport.loseConnection()

        for lean in (True, False):
            number = self.serve(protocol.Factory.forProtocol(Writer), lean)
            data = yield threads.deferToThread(_talk, number, b"")
            self.assertEqual(data, b"first second third fourth")

    @defer.inlineCallbacks
    def test_both_connection_infos_read_the_same_addresses(self) -> None:
        seen: List[Tuple[Any, Any]] = []

        class Probe(protocol.Protocol):
            def connectionMade(self) -> None:
                seen.append((fast_send.direct_connection_info(self.transport),
                             stock_connection_info(self.transport)))
                self.transport.loseConnection()

        for interface in ("127.0.0.1", "0.0.0.0"):  # the bound address, and the wildcard's
            listening = fast_port.LeanTCPReactor(reactor).listenTCP(
                0, protocol.Factory.forProtocol(Probe), 50, interface)
            self.addCleanup(listening.stopListening)
            yield threads.deferToThread(_connect_and_read, listening.getHost().port)
        self.assertEqual(len(seen), 2)
        for direct, stock in seen:
            self.assertEqual(direct, stock)
            self.assertEqual(direct, ("127.0.0.1", "127.0.0.1"))
        # Not an accepted TCP connection: the stock answer.
        transport = StringTransport()
        self.assertEqual(fast_send.direct_connection_info(transport),
                         stock_connection_info(transport))

    def test_twistd_passes_the_fast_strategies_unless_stock_is_forced(self) -> None:
        force_fast(self)
        options = _options(self)
        factory = build.make_factory(options)
        self.assertIsInstance(factory.sender, fast_send.DirectSender)
        self.assertIs(factory.connection_info, fast_send.direct_connection_info)
        force_stock(self)
        factory = build.make_factory(options)
        self.assertIs(factory.sender, STOCK_SENDER)
        self.assertIs(factory.connection_info, stock_connection_info)


def _connect_and_read(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.recv(100)


def _options(case: unittest.TestCase, *extra: str) -> build.Options:
    root = os.path.abspath(case.mktemp())
    os.makedirs(root)
    users = os.path.join(root, "users")
    with open(users, "w") as f:
        f.write("alice:{PLAIN}pw\n")
    options = build.Options()
    options.parseOptions(["--auth", "passwd-file:" + users,
                          "--mailbox", "maildir:" + root + "/{user}/Maildir",
                          "--listen", "tcp:0:interface=127.0.0.1"] + list(extra))
    return options


class PortFallbackTests(unittest.TestCase):
    def greet(self) -> Tuple[Any, List[type]]:
        kinds: List[type] = []

        class Greeter(protocol.Protocol):
            def connectionMade(self) -> None:
                kinds.append(type(self.transport))
                self.transport.write(b"+OK hi\r\n")
                self.transport.loseConnection()

        return protocol.Factory.forProtocol(Greeter), kinds

    @defer.inlineCallbacks
    def test_stock_port_and_transport(self) -> None:
        force_stock(self)
        factory, kinds = self.greet()
        listening = fast_port.LeanTCPReactor(reactor).listenTCP(0, factory, 50, "127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.assertIs(type(listening), tcp.Port)
        data = yield threads.deferToThread(_connect_and_read, listening.getHost().port)
        self.assertEqual(data, b"+OK hi\r\n")
        self.assertEqual(kinds, [tcp.Server])

    @defer.inlineCallbacks
    def test_lean_port_with_twisteds_transport(self) -> None:
        force_stock(self, LEAN_SERVER=False)
        factory, kinds = self.greet()
        listening = fast_port.LeanTCPReactor(reactor).listenTCP(0, factory, 50, "127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.assertIs(type(listening), fast_port.LeanPort)
        data = yield threads.deferToThread(_connect_and_read, listening.getHost().port)
        self.assertEqual(data, b"+OK hi\r\n")
        self.assertEqual(kinds, [tcp.Server])

    @defer.inlineCallbacks
    def test_adopted_socket_gets_twisteds_port(self) -> None:
        force_stock(self, ADOPT_LEAN_PORT=False)
        listening_socket = socket.socket()
        listening_socket.bind(("127.0.0.1", 0))
        listening_socket.listen(50)
        listening_socket.setblocking(False)
        self.addCleanup(listening_socket.close)
        factory, kinds = self.greet()
        listening = fast_port.LeanTCPReactor(reactor).adoptStreamPort(
            listening_socket.fileno(), socket.AF_INET, factory)
        self.addCleanup(listening.stopListening)
        self.assertIs(type(listening), tcp.Port)
        data = yield threads.deferToThread(_connect_and_read, listening_socket.getsockname()[1])
        self.assertEqual(data, b"+OK hi\r\n")
        self.assertEqual(kinds, [tcp.Server])

    @defer.inlineCallbacks
    def test_twistd_pop3ng_on_stock_twisted(self) -> None:
        """The whole service with every probe failed: Twisted's port, transport and sender."""
        force_stock(self)
        top = build.makeService(_options(self))
        top.privilegedStartService()
        self.addCleanup(top.stopService)
        listening = list(top)[0].port
        self.assertIs(type(listening), tcp.Port)
        number = listening.getHost().port
        data = yield threads.deferToThread(_talk, number, b"CAPA\r\nQUIT\r\n")
        self.assertTrue(data.startswith(b"+OK POP3 server ready.\r\n+OK"), data)
        self.assertTrue(data.endswith(b"\r\n.\r\n+OK Bye.\r\n"), data)

    def test_tls_factory_fallback(self) -> None:
        force_fast(self)
        wrapped = protocol.Factory()
        context = _Context(SSL.Context(SSL.TLS_METHOD))
        self.assertIs(type(fast_tls.tls_factory(context, wrapped)), fast_tls.BatchedTLSFactory)
        force_stock(self)
        self.assertIs(type(fast_tls.tls_factory(context, wrapped)), TLSMemoryBIOFactory)


def _talk(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


class ReactorFallbackTests(unittest.TestCase):
    """A reactor is installed once per process: each check runs in a fresh interpreter."""

    def run_program(self, source: str, env: Optional[Dict[str, str]] = None) -> str:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True,
                              text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=ROOT,
                                       **(env or {_compat.STOCK_ENV: "0"})))
        if done.returncode != 0:
            raise AssertionError("program failed:\n%s%s" % (done.stdout, done.stderr))
        return done.stdout.strip()

    def test_stock_twisted_gets_the_stock_reactor(self) -> None:
        out = self.run_program("""
            from twisted_pop3ng.fastpath.reactor import install, install_default
            print(install_default())
            print(type(install()).__name__)
        """, env={"POP3NG_STOCK_TWISTED": "1"})
        self.assertEqual(out.split(), ["None", "EPollReactor"])

    def test_the_lean_reactor_without_its_loop_shortcuts(self) -> None:
        """LeanEPollReactor with _topHandler and the timed-call state reported missing: Twisted's
        mainLoop runs it; timers, a socket and an error in a timed call behave as before."""
        out = self.run_program("""
            import socket, threading
            from twisted_pop3ng.fastpath import _compat
            _compat.TOP_HANDLER = None
            _compat.TIMED_CALL_STATE_PRESENT = False
            from twisted_pop3ng.fastpath.reactor import install_default, LeanEPollReactor
            reactor = install_default()
            assert type(reactor) is LeanEPollReactor and not reactor._lean_turns
            from twisted.internet import protocol
            from twisted.internet.base import ReactorBase
            calls = []
            original = ReactorBase.runUntilCurrent
            def counted(self):
                calls.append(1)
                return original(self)
            ReactorBase.runUntilCurrent = counted

            class Echo(protocol.Protocol):
                def dataReceived(self, data):
                    self.transport.write(data.upper())
                    self.transport.loseConnection()

            from twisted_pop3ng.fastpath.port import LeanTCPReactor
            port = LeanTCPReactor(reactor).listenTCP(0, protocol.Factory.forProtocol(Echo),
                                                     interface="127.0.0.1")
            results = []

            def client():
                with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10) as s:
                    s.sendall(b"hello")
                    results.append(s.recv(100))
                reactor.callFromThread(reactor.callLater, 0.05, reactor.stop)

            def boom():
                raise RuntimeError("boom in a timed call")

            reactor.callLater(0, boom)
            reactor.callLater(0.01, results.append, "timer")
            reactor.callWhenRunning(threading.Thread(target=client, daemon=True).start)
            reactor.callLater(20, reactor.stop)
            reactor.run()
            print(sorted(map(repr, results)), bool(calls))
        """)
        self.assertEqual(out, "[\"'timer'\", \"b'HELLO'\"] True")


# -- TLS: the batched protocol against Twisted's --------------------------------------------------


class _Recorder(StringTransport):
    """Counts the transport writes (each ``write`` or ``writeSequence`` call is one)."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        StringTransport.write(self, data)

    def writeSequence(self, data: List[bytes]) -> None:
        self.writes += 1
        StringTransport.write(self, b"".join(data))


@implementer(IOpenSSLContextFactory)
class _Context:
    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def getContext(self) -> SSL.Context:
        return self.context


class _PlainTLSFactory(TLSMemoryBIOFactory):
    """The protocol BatchedTLSProtocol overrides, without Twisted's write aggregation."""

    protocol = TLSMemoryBIOProtocol


class BatchedTLSTests(unittest.TestCase):
    """:class:`BatchedTLSProtocol` against ``TLSMemoryBIOProtocol``: a real handshake in memory
    with a pyOpenSSL client; the same writes, decrypted by the client, give the same bytes."""

    def setUp(self) -> None:
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("localhost")
        self.server_context = SSL.Context(SSL.TLS_METHOD)
        leaf.configure_cert(self.server_context)
        self.client_context = SSL.Context(SSL.TLS_METHOD)
        ca.configure_trust(self.client_context)
        self.client_context.set_verify(SSL.VERIFY_PEER, lambda *args: args[-1])

    def exchange(self, factory_class: type, writes: List[Any]) -> Tuple[bytes, int]:
        """Handshake, then ``writes`` (bytes: ``write``, a list: ``writeSequence``) by the wrapped
        protocol; what the client decrypts, and how many transport writes carried it."""
        wrapped = protocol.Protocol()
        clock = task.Clock()  # Twisted's own factory flushes small writes at the next turn
        factory = factory_class(_Context(self.server_context), False,
                                protocol.Factory.forProtocol(lambda: wrapped), clock)
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        tls = factory.buildProtocol(None)
        transport = _Recorder()
        tls.makeConnection(transport)
        client = SSL.Connection(self.client_context, None)
        client.set_connect_state()
        client.set_tlsext_host_name(b"localhost")
        # A write before the handshake (Twisted buffers it), then the handshake.
        wrapped.transport.write(b"early\r\n")
        received = b""
        for _ in range(20):
            clock.advance(0)
            received += self.pump(client, tls, transport)
            if received:
                break
        self.assertEqual(received, b"early\r\n")  # the handshake is done on both sides
        transport.writes = 0
        for data in writes:
            if isinstance(data, list):
                wrapped.transport.writeSequence(data)
            else:
                wrapped.transport.write(data)
        clock.advance(0)
        count = transport.writes
        for _ in range(5):
            received += self.pump(client, tls, transport)
        return received, count

    def pump(self, client: SSL.Connection, tls: Any, transport: _Recorder) -> bytes:
        """Move bytes both ways once; what the client could decrypt."""
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        while True:
            try:
                tls.dataReceived(client.bio_read(65536))
            except SSL.WantReadError:
                break
        if transport.value():
            client.bio_write(transport.value())
            transport.clear()
        received = b""
        while True:
            try:
                received += client.recv(65536)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                return received

    def test_same_plaintext_on_the_wire_in_fewer_writes(self) -> None:
        writes: List[Any] = [b"+OK small\r\n"] * 50 + [
            os.urandom(100_000), [b"+OK status\r\n", b"x" * 40_000, b".\r\n"],
            b"y" * (2 ** 14), b"z" * (2 ** 14 + 1)] + [b"tail %d\r\n" % i for i in range(30)]
        expected = b"early\r\n" + b"".join(b"".join(w) if isinstance(w, list) else w
                                         for w in writes)
        batched, batched_writes = self.exchange(fast_tls.BatchedTLSFactory, writes)
        plain, plain_writes = self.exchange(_PlainTLSFactory, writes)
        self.assertEqual(plain, expected)
        self.assertEqual(batched, expected)
        self.assertLess(batched_writes, plain_writes)
        # One transport write per application write, whatever its size (Twisted: one per record).
        self.assertEqual(batched_writes, len(writes))
        # Twisted's own factory (what tls_factory falls back to) aggregates small writes until
        # the next reactor turn: the same bytes again.
        stock, _ = self.exchange(TLSMemoryBIOFactory, writes)
        self.assertEqual(stock, expected)


# -- the session's own input buffer (the STLS defence) -------------------------------------------


class Lines(SessionIO):
    """SessionIO with a recording line handler; "STLS" clears the input as the server's does."""

    _closing = False  # (what the protocol class provides; see server.io)

    def __init__(self) -> None:
        self.lines: List[bytes] = []
        self.cleared: List[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        if line.rstrip(b"\r") == b"STLS":
            self.cleared.append(self.clearLineBuffer())
        elif line == b"WAIT":
            self.paused = True

    def resetTimeout(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self._split_lines(data)


class InputBufferTests(unittest.TestCase):
    def connect(self) -> Lines:
        lines = Lines()
        lines.makeConnection(StringTransport())
        return lines

    def test_lines_pipelined_after_stls_are_dropped_and_returned(self) -> None:
        lines = self.connect()
        lines.dataReceived(b"CAPA\r\nSTLS\r\nUSER evil\r\nPASS x\r\npart")
        self.assertEqual(lines.lines, [b"CAPA\r", b"STLS\r"])
        self.assertEqual(lines.cleared, [b"USER evil\r\nPASS x\r\npart"])
        lines.dataReceived(b"USER good\r\n")  # the partial "part" went too
        self.assertEqual(lines.lines[-1], b"USER good\r")

    def test_queued_input_is_cleared_too(self) -> None:
        lines = self.connect()
        lines.dataReceived(b"WAIT\nqueued 1\nqueued 2\n")
        self.assertEqual(lines.lines, [b"WAIT"])
        self.assertEqual(lines.clearLineBuffer(), b"queued 1\nqueued 2\n")
        lines.paused = False
        lines.dataReceived(b"next\n")
        self.assertEqual(lines.lines, [b"WAIT", b"next"])

    def test_clearing_twice_in_a_batch_returns_only_what_came_since(self) -> None:
        lines = self.connect()
        lines.dataReceived(b"STLS\nrest\n")
        self.assertEqual(lines.clearLineBuffer(), b"")
        self.assertEqual(lines.cleared, [b"rest\n"])

    def test_long_lines(self) -> None:
        lines = self.connect()
        exceeded: List[bytes] = []
        lines.MAX_LENGTH = 10
        lines.lineLengthExceeded = exceeded.append  # type: ignore[method-assign]
        lines.dataReceived(b"short\n" + b"x" * 11 + b"\nafter\n")
        self.assertEqual(lines.lines, [b"short"])
        self.assertEqual(exceeded, [b"x" * 11])
        lines.dataReceived(b"y" * 11)  # a partial line already too long
        self.assertEqual(exceeded[-1], b"y" * 11)
        lines.dataReceived(b"ok\n")
        self.assertEqual(lines.lines, [b"short", b"ok"])
