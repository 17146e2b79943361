"""Behind a TCP load balancer: ``--listen haproxy:tcp:...`` takes the client address from the PROXY
protocol header (v1 and v2), before the server greets, so every address rule applies to the real
client -- and a real HAProxy (Debian's ``haproxy``) in front proves it end to end.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import time
from typing import Any, Tuple

from twisted.trial import unittest

from .dovecot import free_port
from .support import ServerProcess, Session, start_server, stop_process

PASSWORD = "correct horse battery staple"


def v1(source: str, port: int = 40000) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    destination = "::1" if family == "TCP6" else "127.0.0.1"
    return ("PROXY %s %s %s %d 110\r\n" % (family, source, destination, port)).encode()


def v2_ipv6(source: str, port: int = 40000) -> bytes:
    payload = socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6, "::1")
    payload += struct.pack("!HH", port, 110)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x21]) + struct.pack("!H", len(payload)) + payload


def proxy_port(server: ServerProcess) -> int:
    """The port of the server's PROXY-protocol listener (``tcp:0``), from its log."""
    deadline = time.monotonic() + 60
    while True:
        found = re.search(r"POP3ServerFactory \(PROXY\) starting on (\d+)", server.log())
        if found:
            return int(found.group(1))
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise AssertionError("no PROXY listener started:\n" + server.log())
        time.sleep(0.05)


class ProxyHeaderTests(unittest.TestCase):
    def setUp(self) -> None:
        root = os.path.abspath(self.mktemp())
        self.server = start_server(root, {"alice": PASSWORD}, tls=True, plain_listeners=0,
                                   extra_args=["--listen", "haproxy:tcp:0:interface=127.0.0.1", "--log-logins"])
        self.addCleanup(self.server.stop)
        self.port = proxy_port(self.server)

    def connect(self, header: bytes) -> Session:
        sock = socket.create_connection(("127.0.0.1", self.port), 10)
        sock.sendall(header)
        session = Session(sock)
        self.addCleanup(session.close)
        return session

    def wait_log(self, text: str) -> None:
        deadline = time.monotonic() + 60
        while text not in self.server.log():
            self.assertLess(time.monotonic(), deadline, self.server.log())
            time.sleep(0.05)

    def login_over_stls(self, session: Session) -> None:
        self.assertTrue(session.command(b"STLS").startswith(b"+OK"))
        context = ssl.create_default_context(cafile=self.server.certs["ca"])
        tls = Session(context.wrap_socket(session.sock, server_hostname="localhost"))
        reply = tls.command(b"USER alice")
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertTrue(tls.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK"))

    def test_a_remote_client_behind_a_local_proxy_is_remote(self) -> None:
        # The proxy runs on the server's host (127.0.0.1 to 127.0.0.1): without the header's
        # address the client would count as local and be offered plaintext USER.
        session = self.connect(v1("192.0.2.7"))
        self.assertTrue(session.line().startswith(b"+OK"))
        self.assertTrue(session.command(b"CAPA").startswith(b"+OK"))
        capabilities = session.body().split(b"\r\n")
        self.assertNotIn(b"USER", capabilities)
        self.assertIn(b"STLS", capabilities)
        reply = session.command(b"USER alice")
        self.assertTrue(reply.startswith(b"-ERR"), reply)
        # Over STLS the login works, and the audit line names the real client.
        self.login_over_stls(session)
        self.wait_log("auth ok: user=alice mechanism=USER rip=192.0.2.7")

    def test_version_2_and_ipv6(self) -> None:
        session = self.connect(v2_ipv6("2001:db8::7"))
        self.assertTrue(session.line().startswith(b"+OK"))
        self.login_over_stls(session)
        self.wait_log("auth ok: user=alice mechanism=USER rip=2001:db8::7")

    def test_the_header_and_commands_in_one_packet(self) -> None:
        session = self.connect(v1("192.0.2.8") + b"CAPA\r\n")
        self.assertTrue(session.line().startswith(b"+OK"))
        self.assertEqual(session.line(), b"+OK Capability list follows\r\n")

    def test_no_header_or_a_bad_one_is_closed_without_a_word(self) -> None:
        for junk in (b"USER alice\r\n", b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n", b"PROXY " + b"x" * 200):
            session = self.connect(junk)
            try:
                closed = session.line()
            except ConnectionResetError:  # aborted: a reset is as silent as a close
                closed = b""
            self.assertEqual(closed, b"", junk)
        # The server is fine: a proper connection is served.
        session = self.connect(v1("192.0.2.9"))
        self.assertTrue(session.line().startswith(b"+OK"))
        self.assertNotIn("Traceback", self.server.log())


class RealHAProxyTests(unittest.TestCase):
    """Debian's HAProxy in TCP mode with ``send-proxy-v2`` in front of the server."""

    def start(self, *extra: str) -> Tuple[Any, int]:
        """A server behind a real HAProxy; returns it and HAProxy's port."""
        haproxy = shutil.which("haproxy")
        self.assertIsNotNone(haproxy, "haproxy is needed (Debian package haproxy)")
        root = os.path.abspath(self.mktemp())
        server = start_server(root, {"alice": PASSWORD}, tls=False, plain_listeners=0,
                              extra_args=["--listen", "haproxy:tcp:0:interface=127.0.0.1"] + list(extra))
        self.addCleanup(server.stop)
        backend = proxy_port(server)
        server.deliver("alice", b"Subject: via haproxy\n\nhello\n")
        config, output = os.path.join(root, "haproxy.cfg"), os.path.join(root, "haproxy.log")
        # HAProxy's port is in its configuration: one free a moment ago, another if it was taken.
        for _ in range(5):
            frontend = free_port()
            with open(config, "w") as f:
                f.write("global\n  maxconn 200\n"
                        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n"
                        "  timeout server 60s\n"
                        "frontend pop3\n  bind 127.0.0.1:%d\n  default_backend servers\n"
                        "backend servers\n  server s1 127.0.0.1:%d send-proxy-v2\n" % (frontend, backend))
            with open(output, "wb") as log:
                proxy = subprocess.Popen([haproxy, "-f", config, "-db"], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
            self.addCleanup(stop_process, proxy)
            deadline = time.monotonic() + 60
            while proxy.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", frontend), 1).close()
                    return server, frontend
                except OSError:
                    self.assertLess(time.monotonic(), deadline, "haproxy did not start")
                    time.sleep(0.05)
            with open(output) as f:
                self.assertIn("in use", f.read(), "haproxy ended")
        self.fail("no free port for haproxy in 5 attempts")

    def from_address(self, frontend: int, source: str) -> Session:
        sock = socket.create_connection(("127.0.0.1", frontend), 10, (source, 0))
        session = Session(sock)
        self.addCleanup(session.close)
        return session

    def test_clients_through_haproxy_are_seen_as_themselves(self) -> None:
        # One process: the per-address limit is per process (docs/security.rst).
        server, frontend = self.start("--max-connections-per-address", "2")

        def from_address(source: str) -> Session:
            sock = socket.create_connection(("127.0.0.1", frontend), 10, (source, 0))
            session = Session(sock)
            self.addCleanup(session.close)
            return session

        # Per-address limits apply to each real client: two from 127.0.0.5 are allowed, the third
        # is refused; 127.0.0.6 is not affected. (Through the proxy they all share its address.)
        # (One at a time: HAProxy may connect three at once to the server in any order.)
        for _ in range(2):
            greeting = from_address("127.0.0.5").line()
            self.assertTrue(greeting.startswith(b"+OK"), greeting)
        refused = from_address("127.0.0.5").line()
        self.assertTrue(refused.startswith(b"-ERR [SYS/TEMP]"), refused)
        other = from_address("127.0.0.6")
        self.assertTrue(other.line().startswith(b"+OK"))
        # 127.0.0.x to 127.0.0.1 is not "local" (different addresses): plaintext is refused,
        # exactly as without the proxy.
        self.assertTrue(other.command(b"USER alice").startswith(b"-ERR"))
        # And a client on the proxy's own address is local, as it would be without a proxy.
        local = from_address("127.0.0.1")
        self.assertTrue(local.line().startswith(b"+OK"))
        self.assertTrue(local.command(b"USER alice").startswith(b"+OK"))
        self.assertTrue(local.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK"))
        self.assertTrue(local.command(b"RETR 1").startswith(b"+OK"))
        self.assertEqual(local.body(), b"Subject: via haproxy\r\n\r\nhello\r\n.\r\n")

    def test_worker_processes_read_the_header_too(self) -> None:
        server, frontend = self.start("--workers", "2", "--max-connections-per-address", "0")
        for _ in range(20):
            session = self.from_address(frontend, "127.0.0.7")
            self.assertTrue(session.line().startswith(b"+OK"))
            # The header was taken as one (not answered as a command), and the client is remote.
            self.assertEqual(session.command(b"CAPA"), b"+OK Capability list follows\r\n")
            self.assertNotIn(b"USER", session.body().split(b"\r\n"))
            session.close()
