"""TLS session resumption against ``twistd pop3ng``: real processes, real sockets, Python's ssl
client offering ``session=`` and our own client (``connect``) keeping its sessions."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import tempfile
import time
from typing import Any, Optional, Set, Tuple

from OpenSSL._util import lib as openssl
from twisted.internet import reactor as _reactor
from twisted.trial import unittest

from tests.integration.support import ServerProcess, make_certificates, start_server
from twisted_pop3ng.client.connect import TLSSessionCache, connect

reactor: Any = _reactor
PASSWORD = "secret pass"
TLS12 = ssl.TLSVersion.TLSv1_2
#: The APOP timestamp of the greeting names the process that answered (``<pid.random@host>``).
_PID = re.compile(rb"<(\d+)\.")


def open_session(server: ServerProcess, context: ssl.SSLContext, session: Any = None,
                 stls: bool = False) -> Tuple[bool, Any, int, bytes]:
    """One POP3 connection (implicit TLS, or STLS on the plain port): (resumed?, the session to
    offer next, the answering process, the server's certificate)."""
    raw = socket.create_connection(("127.0.0.1", server.port if stls else server.tls_port), timeout=10)
    try:
        if stls:
            greeting = raw.recv(200)
            raw.sendall(b"STLS\r\n")
            reply = raw.recv(200)
            assert reply.startswith(b"+OK"), reply
        sock = context.wrap_socket(raw, server_hostname="localhost", session=session)
        raw = sock
        if not stls:
            greeting = sock.recv(200)
        assert greeting.startswith(b"+OK"), greeting
        sock.sendall(b"USER alice\r\n")  # (and by its reply, TLS 1.3's ticket has arrived)
        reply = sock.recv(200)
        assert reply.startswith(b"+OK"), reply
        match = _PID.search(greeting)
        return (bool(sock.session_reused), sock.session, int(match.group(1)) if match else 0,
                sock.getpeercert(binary_form=True) or b"")
    finally:
        raw.close()


def client_context(*cafiles: str, maximum: Optional[ssl.TLSVersion] = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for cafile in cafiles:
        context.load_verify_locations(cafile)
    if maximum is not None:
        context.maximum_version = maximum
    return context


def wait_for_log(server: ServerProcess, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while server.log().count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError("no %r in the log:\n%s" % (text, server.log()))
        time.sleep(0.05)


def stock(on: bool) -> list:
    """Run the server with (or, whatever the CI leg says, without) ``POP3NG_STOCK_TWISTED``."""
    return ["env", "POP3NG_STOCK_TWISTED=%d" % on]


class ResumptionTests(unittest.TestCase):
    def start(self, *extra: str, stock_twisted: bool = False) -> ServerProcess:
        root = tempfile.mkdtemp(prefix="pop3ng-tls-resume-")
        self.addCleanup(shutil.rmtree, root, True)
        server = start_server(root, {"alice": PASSWORD}, extra_args=["--apop"] + list(extra),
                              command_prefix=stock(stock_twisted))
        self.addCleanup(server.stop)
        os.makedirs(server.maildir("alice"), exist_ok=True)
        return server

    def test_resumes_in_every_worker_process(self) -> None:
        server = self.start("--workers", "2")
        for maximum in (None, TLS12):
            context = client_context(server.certs["ca"], maximum=maximum)
            _, session, issuer, _ = open_session(server, context)
            resumed_by: Set[int] = set()
            deadline = time.monotonic() + 60  # until the worker is up and the kernel hands it one
            while time.monotonic() < deadline:
                resumed, session, pid, _ = open_session(server, context, session)
                self.assertTrue(resumed, (maximum, pid))
                resumed_by.add(pid)
                if len(resumed_by) == 2:
                    break
            self.assertEqual(len(resumed_by), 2, "only process %s answered" % resumed_by)
            self.assertIn(issuer, resumed_by)

    def test_fallback_resumes_in_the_issuing_process_only(self) -> None:
        # Without the native route each process seals tickets with its own OpenSSL key.
        server = self.start("--workers", "2", stock_twisted=True)
        context = client_context(server.certs["ca"])
        _, first, issuer, _ = open_session(server, context)
        outcome: dict = {}
        deadline = time.monotonic() + 60  # until the worker is up and the kernel hands it one
        while time.monotonic() < deadline:
            resumed, _, pid, certificate = open_session(server, context, first)
            outcome.setdefault(pid, set()).add(resumed)
            self.assertTrue(certificate)
            if len(outcome) == 2:
                break
        self.assertEqual(len(outcome), 2, "only process %s answered" % outcome)
        for pid, seen in outcome.items():
            self.assertEqual(seen, {pid == issuer}, (pid, issuer))

    def test_stls_resumes(self) -> None:
        server = self.start()
        for maximum in (None, TLS12):
            context = client_context(server.certs["ca"], maximum=maximum)
            resumed, session, _, _ = open_session(server, context, stls=True)
            self.assertFalse(resumed)
            resumed, _, _, _ = open_session(server, context, session, stls=True)
            self.assertTrue(resumed, maximum)
            # A ticket of the STLS port opens on the POP3S port too: one server, one certificate.
            resumed, _, _, _ = open_session(server, context, session)
            self.assertTrue(resumed, maximum)

    def test_sighup_same_certificate_keeps_new_certificate_ends_sessions(self) -> None:
        server = self.start("--workers", "2")
        fresh = make_certificates(tempfile.mkdtemp(prefix="pop3ng-tls-new-", dir=server.root))
        # (Python's ssl resumes a session only with the context that made it: trust both CAs.)
        both = client_context(server.certs["ca"], fresh["ca"])
        _, session, _, old_certificate = open_session(server, both)
        serving: Set[int] = set()
        deadline = time.monotonic() + 60
        # Both processes answer (so both have their SIGHUP handlers in place).
        while len(serving) < 2 and time.monotonic() < deadline:
            resumed, session, pid, _ = open_session(server, both, session)
            serving.add(pid)
        self.assertEqual(len(serving), 2, serving)
        server.process.send_signal(signal.SIGHUP)
        wait_for_log(server, "TLS certificate and key reloaded", 2)  # master and worker
        resumed, session, _, _ = open_session(server, both, session)
        self.assertTrue(resumed)  # nothing changed: nothing to renegotiate

        shutil.copy(fresh["cert"], server.certs["cert"])
        shutil.copy(fresh["key"], server.certs["key"])
        server.process.send_signal(signal.SIGHUP)
        wait_for_log(server, "TLS certificate and key reloaded", 4)
        for _ in range(20):  # whichever process answers
            resumed, _, _, certificate = open_session(server, both, session)
            self.assertFalse(resumed)  # the old certificate's session is over ...
            self.assertNotEqual(certificate, old_certificate)  # ... a full handshake, new certificate
        _, session, _, _ = open_session(server, both)
        resumed, _, _, _ = open_session(server, both, session)
        self.assertTrue(resumed)

    def test_rotation_grace(self) -> None:
        # Keys rotated every second: with a long grace a ticket outlives its key's period, with
        # none it does not (a full handshake follows).
        for grace, resumes in (("300", True), ("0", False)):
            server = self.start("--tls-ticket-rotation", "1", "--tls-ticket-grace", grace)
            context = client_context(server.certs["ca"])
            _, session, _, _ = open_session(server, context)
            time.sleep(1.5)  # past the end of the period the ticket was sealed in
            resumed, _, _, certificate = open_session(server, context, session)
            self.assertEqual(resumed, resumes, grace)
            self.assertTrue(certificate)
            server.stop()

    def test_bad_rotation_is_a_usage_error(self) -> None:
        with self.assertRaises(RuntimeError) as raised:
            self.start("--tls-ticket-rotation", "0")
        self.assertIn("--tls-ticket-rotation must be positive", str(raised.exception))
        self.assertNotIn("Traceback", str(raised.exception))


class ClientReuseTests(unittest.TestCase):
    """``connect()`` (what ``pop3ng fetch`` uses) offers the previous connection's session."""

    def setUp(self) -> None:
        root = tempfile.mkdtemp(prefix="pop3ng-tls-client-")
        self.addCleanup(shutil.rmtree, root, True)
        self.server = start_server(root, {"alice": PASSWORD}, extra_args=["--workers", "2"],
                                   command_prefix=stock(False))
        self.addCleanup(self.server.stop)
        os.makedirs(self.server.maildir("alice"), exist_ok=True)

    async def login(self, url: str, sessions: Optional[TLSSessionCache]) -> bool:
        assert self.server.certs, "the server was started without TLS"
        client = await connect(reactor, url, password=PASSWORD, cafile=self.server.certs["ca"],
                               tls_sessions=sessions)
        try:
            transport = client.transport
            # POP3S: the transport is the TLS protocol; STLS: the TCP transport's protocol is.
            handle = transport.getHandle() if url.startswith("pop3s") else transport.protocol.getHandle()
            self.assertEqual(await client.stat(), (0, 0))
            return bool(openssl.SSL_session_reused(handle._ssl))
        finally:
            await client.quit()

    async def test_pop3s_and_stls_reuse_sessions(self) -> None:
        for url in ("pop3s://alice@127.0.0.1:%d" % self.server.tls_port,
                    "pop3://alice@127.0.0.1:%d" % self.server.port):
            sessions = TLSSessionCache()
            self.assertFalse(await self.login(url, sessions))
            for _ in range(6):  # (both processes, most likely)
                self.assertTrue(await self.login(url, sessions), url)

    async def test_no_cache_no_resumption(self) -> None:
        url = "pop3s://alice@127.0.0.1:%d" % self.server.tls_port
        self.assertFalse(await self.login(url, None))
        self.assertFalse(await self.login(url, None))

    async def test_a_session_is_kept_per_server(self) -> None:
        # Another port (another server, for all the client knows) gets no session of this one.
        sessions = TLSSessionCache()
        await self.login("pop3s://alice@127.0.0.1:%d" % self.server.tls_port, sessions)
        self.assertFalse(await self.login("pop3://alice@127.0.0.1:%d" % self.server.port, sessions))
