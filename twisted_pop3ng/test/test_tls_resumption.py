"""TLS session resumption on the server: real handshakes over real sockets (Python's ssl client
offering ``session=``), ticket keys rotated by a clock the test moves, certificate reloads."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import tempfile
from typing import Any, List, Optional, Tuple

import trustme
from twisted.internet import protocol
from twisted.internet import reactor as _reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from twisted_pop3ng.fastpath import tls_tickets
from twisted_pop3ng.fastpath.tls import tls_factory
from twisted_pop3ng.tls.server import ReloadableServerTLS, session_context
from twisted_pop3ng.tls.tickets import TicketKeys

reactor: Any = _reactor
#: The native route probed as if POP3NG_STOCK_TWISTED were unset (the stock CI leg runs these too).
NATIVE, NATIVE_REASON = tls_tickets.probe({})


def install_native(context: Any, keys: TicketKeys) -> bool:
    return tls_tickets.install(context, keys, native=NATIVE)
TLS12 = ssl.TLSVersion.TLSv1_2
#: The start of a rotation period of the keys below (rotation 3600 s, grace 600 s).
PERIOD_START = 300 * 3600.0


class Greeting(protocol.Protocol):
    transport: Any

    def connectionMade(self) -> None:
        self.transport.write(b"+OK ready\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_certificate(directory: str, ca: trustme.CA) -> Tuple[str, str]:
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    issued.cert_chain_pems[0].write_to_path(cert)
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(cert, append=True)
    issued.private_key_pem.write_to_path(key)
    return cert, key


def handshake(port: int, context: ssl.SSLContext, session: Any = None) -> Tuple[bool, Any, bytes, str]:
    """One connection: (resumed?, the session to offer next, the server's certificate, version).
    The greeting is read first: a TLS 1.3 server's ticket comes after the handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as sock:
            greeting = sock.recv(100)
            if not greeting.startswith(b"+OK"):
                raise AssertionError("no greeting: %r" % greeting)
            result = (bool(sock.session_reused), sock.session, sock.getpeercert(binary_form=True) or b"",
                      sock.version() or "")
            sock.sendall(b"QUIT\r\n")
            return result


class ServerResumptionTests(unittest.TestCase):
    """One server (or two sharing keys, as ``--workers`` processes do) on 127.0.0.1."""

    def setUp(self) -> None:
        self.assertIsNotNone(NATIVE, NATIVE_REASON)
        self.directory = tempfile.mkdtemp(prefix="pop3ng-tls-resume-")
        self.ca = trustme.CA()
        self.cert, self.key = write_certificate(self.directory, self.ca)
        self.clock = Clock(PERIOD_START)
        self.keys = TicketKeys(rotation=3600, grace=600, clock=self.clock)

    def tearDown(self) -> None:
        for name in os.listdir(self.directory):
            os.unlink(os.path.join(self.directory, name))
        os.rmdir(self.directory)

    def serve(self, keys: Optional[TicketKeys] = None, installer: Any = install_native) -> Tuple[int, Any]:
        tls = ReloadableServerTLS(self.cert, self.key, keys or self.keys, installer)
        if installer is not None:
            tls.connection_class = tls_tickets.TicketWithFirstWrite
        factory = protocol.Factory.forProtocol(Greeting)
        port = reactor.listenTCP(0, tls_factory(tls, factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, tls

    def context(self, maximum: Optional[ssl.TLSVersion] = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if maximum is not None:
            context.maximum_version = maximum
        return context

    async def connect(self, port: int, context: ssl.SSLContext, session: Any = None) -> Tuple[bool, Any, bytes, str]:
        return await deferToThread(handshake, port, context, session)

    async def _second_connection_resumes(self, maximum: Optional[ssl.TLSVersion], version: str) -> None:
        port, tls = self.serve()
        self.assertTrue(tls.shared_tickets)
        context = self.context(maximum)
        resumed, session, _, used = await self.connect(port, context)
        self.assertEqual((resumed, used), (False, version))
        self.assertTrue(session.has_ticket)
        resumed, _, _, _ = await self.connect(port, context, session)
        self.assertTrue(resumed)

    async def test_tls13_second_connection_resumes(self) -> None:
        await self._second_connection_resumes(None, "TLSv1.3")

    async def test_tls12_second_connection_resumes(self) -> None:
        await self._second_connection_resumes(TLS12, "TLSv1.2")

    async def test_ticket_opens_in_another_server_with_the_same_keys(self) -> None:
        # What a --workers process gets: the master's exported keys, another context, another port.
        port_a, _ = self.serve()
        copy = TicketKeys.from_export(self.keys.export())
        copy.clock = self.clock
        port_b, _ = self.serve(copy)
        for maximum in (None, TLS12):
            context = self.context(maximum)
            _, session, _, _ = await self.connect(port_a, context)
            resumed, _, _, _ = await self.connect(port_b, context, session)
            self.assertTrue(resumed, maximum)

    async def test_ticket_does_not_open_under_other_keys(self) -> None:
        port_a, _ = self.serve()
        port_b, _ = self.serve(TicketKeys(rotation=3600, grace=600, clock=self.clock))
        context = self.context()
        _, session, _, _ = await self.connect(port_a, context)
        resumed, _, _, _ = await self.connect(port_b, context, session)
        self.assertFalse(resumed)

    async def test_rotation_within_grace_resumes_and_renews(self) -> None:
        port, _ = self.serve()
        for maximum in (None, TLS12):
            context = self.context(maximum)
            self.clock.now = PERIOD_START
            _, session, _, _ = await self.connect(port, context)
            self.clock.now += 3600  # the next period: the ticket's key is retired, in its grace
            resumed, renewed, _, _ = await self.connect(port, context, session)
            self.assertTrue(resumed, maximum)
            # The renewed ticket is sealed with the current key: it outlives the old key's grace.
            self.clock.now += 3000
            resumed, _, _, _ = await self.connect(port, context, renewed)
            self.assertTrue(resumed, maximum)

    async def test_no_resumption_after_grace_but_a_full_handshake(self) -> None:
        port, _ = self.serve()
        for maximum in (None, TLS12):
            context = self.context(maximum)
            self.clock.now = PERIOD_START
            _, session, _, _ = await self.connect(port, context)
            self.clock.now += 3600 + 601  # past the retired key's grace
            resumed, fresh, certificate, _ = await self.connect(port, context, session)
            self.assertFalse(resumed, maximum)
            self.assertTrue(certificate)  # a full handshake, certificate verified again
            resumed, _, _, _ = await self.connect(port, context, fresh)
            self.assertTrue(resumed, maximum)

    async def test_reload_of_the_same_certificate_keeps_sessions(self) -> None:
        port, tls = self.serve()
        context = self.context()
        _, session, _, _ = await self.connect(port, context)
        tls.reload()
        resumed, _, _, _ = await self.connect(port, context, session)
        self.assertTrue(resumed)

    async def test_reload_of_a_new_certificate_ends_old_sessions(self) -> None:
        # A session was authenticated by the old certificate: resuming it under the new one would
        # keep a client on the old key's authority (say, after a key compromise). It must not.
        port, tls = self.serve()
        for maximum in (None, TLS12):
            context = self.context(maximum)
            _, session, old_certificate, _ = await self.connect(port, context)
            self.cert, self.key = write_certificate(self.directory, self.ca)
            tls.cert_path, tls.key_path = self.cert, self.key
            tls.reload()
            resumed, fresh, certificate, _ = await self.connect(port, context, session)
            self.assertFalse(resumed, maximum)
            self.assertNotEqual(certificate, old_certificate)
            resumed, _, _, _ = await self.connect(port, context, fresh)
            self.assertTrue(resumed, maximum)

    async def test_fallback_resumes_within_one_context_only(self) -> None:
        # Without the native route: OpenSSL's own per-context key.
        port, tls = self.serve(installer=None)
        self.assertFalse(tls.shared_tickets)
        context = self.context()
        _, session, _, _ = await self.connect(port, context)
        resumed, _, _, _ = await self.connect(port, context, session)
        self.assertTrue(resumed)
        other, _ = self.serve(installer=None)
        resumed, _, _, _ = await self.connect(other, context, session)
        self.assertFalse(resumed)


class TicketKeysTests(unittest.TestCase):
    def test_periods_and_grace(self) -> None:
        clock = Clock(10_000.0)
        keys = TicketKeys(b"s" * 32, rotation=100, grace=30, clock=clock)
        first = keys.current()
        self.assertEqual(keys.lookup(first.name), (first, True))
        clock.now += 100
        second = keys.current()
        self.assertNotEqual(second.name, first.name)
        self.assertEqual(keys.lookup(first.name), (first, False))
        clock.now += 29
        self.assertIsNotNone(keys.lookup(first.name))
        clock.now += 1
        self.assertIsNone(keys.lookup(first.name))
        self.assertEqual(keys.lookup(second.name), (second, True))
        self.assertIsNone(keys.lookup(b"\0" * 16))

    def test_long_grace_keeps_several_keys(self) -> None:
        clock = Clock(10_000.0)
        keys = TicketKeys(b"s" * 32, rotation=100, grace=250, clock=clock)
        self.assertEqual(len(keys.accepted()), 4)  # current + 3 retired within 250 s

    def test_same_secret_same_keys(self) -> None:
        a = TicketKeys(rotation=60, grace=0)
        b = TicketKeys.from_export(a.export())
        self.assertEqual(a.current(), b.current())
        self.assertNotEqual(a.current(), TicketKeys(rotation=60, grace=0).current())

    def test_bad_settings(self) -> None:
        self.assertRaises(ValueError, TicketKeys, rotation=0)
        self.assertRaises(ValueError, TicketKeys, grace=-1)
        self.assertRaises(ValueError, TicketKeys, b"short")

    def test_session_context_follows_the_certificate(self) -> None:
        ca = trustme.CA()
        one = ca.issue_cert("localhost").cert_chain_pems[0].bytes()
        two = ca.issue_cert("localhost").cert_chain_pems[0].bytes()
        self.assertEqual(session_context(one), session_context(b"# comment\n" + one))
        self.assertNotEqual(session_context(one), session_context(two))
        self.assertLessEqual(len(session_context(one)), 32)


class NativeProbeTests(unittest.TestCase):
    def probe_in_child(self, **environ: str) -> List[str]:
        env = dict(os.environ, **environ)
        out = subprocess.run([sys.executable, "-c", "from twisted_pop3ng.fastpath import tls_tickets as t;"
                              "print(t.AVAILABLE); print(t.REASON)"],
                             env=env, capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.splitlines()

    def test_available_here(self) -> None:
        self.assertEqual(self.probe_in_child(POP3NG_STOCK_TWISTED="0"), ["True", "OpenSSL ticket key callback"])

    def test_stock_environment_turns_it_off(self) -> None:
        available, reason = self.probe_in_child(POP3NG_STOCK_TWISTED="1")
        self.assertEqual(available, "False")
        self.assertIn("POP3NG_STOCK_TWISTED", reason)

    def test_a_stripped_library_has_no_symbols(self) -> None:
        from cryptography.hazmat.bindings import _rust

        self.assertIn("SSL_CTX_set_num_tickets",
                      tls_tickets._elf_functions(_rust.__file__, ("SSL_CTX_set_num_tickets",)))
        with tempfile.NamedTemporaryFile() as stripped:
            with open(_rust.__file__, "rb") as f:
                stripped.write(f.read(64))  # an ELF header and nothing else
            stripped.flush()
            self.assertEqual(tls_tickets._elf_functions(stripped.name, ("SSL_CTX_set_num_tickets",)), {})
