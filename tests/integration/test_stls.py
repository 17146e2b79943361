"""STLS (RFC 2595) and TLS policy against ``twistd pop3ng``: real sockets, a trustme CA."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
from typing import Dict, List, Optional

from twisted.trial import unittest

from tests.integration.support import Session, make_certificates, start_server
from tests.integration.sasl_clients import starttls

PASSWORD = "secret pass"


def old_tls_handshake(client: ssl.SSLContext, certs: Dict[str, str], version: ssl.TLSVersion) -> Optional[str]:
    """The TLS version ``client`` negotiates with a loopback server (Python's ssl, in a thread)
    that offers ``version`` only, with the test certificate."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs["cert"], certs["key"])
    server.set_ciphers("ALL:@SECLEVEL=0")
    server.minimum_version = server.maximum_version = version
    errors: List[BaseException] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError) as error:
                errors.append(error)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            sock = socket.create_connection(listener.getsockname(), 10)
            with client.wrap_socket(sock, server_hostname="localhost") as tls:
                return tls.version()
        except ssl.SSLError as error:
            raise AssertionError("the client cannot speak %s: %r (server: %r)" % (version.name, error, errors))
        finally:
            thread.join(30)


class ALPNTests(unittest.TestCase):
    """A client offering ALPN (RFC 9325 asks POP3 clients to send "pop3") got an internal_error
    alert on POP3S and after STLS: no such client could connect at all."""

    def setUp(self) -> None:
        self.server = start_server(os.path.abspath(self.mktemp()), {"alice": PASSWORD})
        self.addCleanup(self.server.stop)

    def context(self, protocols: List[str]) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.server.certs["ca"])
        context.set_alpn_protocols(protocols)
        return context

    def test_pop3s(self) -> None:
        for offered, chosen in ((["pop3"], "pop3"), (["h2", "http/1.1"], None), (["x", "pop3"], "pop3")):
            sock = self.context(offered).wrap_socket(
                socket.create_connection(("127.0.0.1", self.server.tls_port), 10), server_hostname="localhost")
            self.addCleanup(sock.close)
            self.assertEqual(sock.selected_alpn_protocol(), chosen, offered)
            s = Session(sock)  # type: ignore[arg-type]
            self.assertTrue(s.login(b"alice", PASSWORD.encode()).startswith(b"+OK"))  # (greeting too)
            s.command(b"QUIT")

    def test_stls(self) -> None:
        s = Session(self.server.connect())
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertTrue(s.command(b"STLS").startswith(b"+OK"))
        s.sock = self.context(["pop3"]).wrap_socket(s.sock, server_hostname="localhost")
        self.assertEqual(s.sock.selected_alpn_protocol(), "pop3")
        self.assertTrue(s.command(b"USER alice").startswith(b"+OK"))
        self.assertTrue(s.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK"))


class STLSTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.server = start_server(self.root, {"alice": PASSWORD})
        self.addCleanup(self.server.stop)
        os.makedirs(self.server.maildir("alice"), exist_ok=True)

    def session(self, tls: bool = False) -> Session:
        s = Session(self.server.connect(tls=tls))
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))
        return s

    def capa(self, s: Session) -> bytes:
        self.assertTrue(s.command(b"CAPA").startswith(b"+OK"))
        return s.body()

    def test_upgrade_capa_and_second_stls(self) -> None:
        s = self.session()
        self.assertIn(b"\r\nSTLS\r\n", self.capa(s))
        starttls(s, self.server)
        assert isinstance(s.sock, ssl.SSLSocket)
        self.assertIn(s.sock.version(), ("TLSv1.2", "TLSv1.3"))
        caps = self.capa(s)
        self.assertNotIn(b"STLS", caps)
        self.assertIn(b"SCRAM-SHA-256-PLUS", caps)
        self.assertTrue(s.command(b"STLS").startswith(b"-ERR"))
        self.assertTrue(s.command(b"USER alice").startswith(b"+OK"))
        self.assertEqual(s.command(b"PASS " + PASSWORD.encode()), b"+OK Logged in.\r\n")
        self.assertEqual(s.command(b"QUIT"), b"+OK Logging out.\r\n")
        self.assertTrue(s.closed())  # the TLS layer shuts down too

    def test_commands_pipelined_after_stls_are_discarded(self) -> None:
        """CVE-2011-0411 class: CAPA sent with STLS in one packet must not run inside TLS."""
        s = self.session()
        s.send(b"STLS\r\nCAPA\r\nUSER alice\r\n")
        self.assertEqual(s.line(), b"+OK Begin TLS negotiation now.\r\n")
        self.assertEqual(s.buffer, b"")  # and nothing else came back in plaintext
        context = ssl.create_default_context(cafile=self.server.certs["ca"])
        s.sock = context.wrap_socket(s.sock, server_hostname="localhost")
        # Had the server kept "USER alice", PASS would log in; had it run CAPA, we would read a listing.
        self.assertEqual(s.command(b"PASS " + PASSWORD.encode()), b"-ERR Send USER first\r\n")

    def test_stls_after_login_and_on_implicit_tls(self) -> None:
        s = self.session()
        self.assertTrue(s.command(b"USER alice").startswith(b"+OK"))
        self.assertEqual(s.command(b"PASS " + PASSWORD.encode()), b"+OK Logged in.\r\n")
        self.assertTrue(s.command(b"STLS").startswith(b"-ERR"))
        self.assertTrue(s.command(b"NOOP").startswith(b"+OK"))
        t = self.session(tls=True)
        self.assertNotIn(b"STLS", self.capa(t))
        self.assertTrue(t.command(b"STLS").startswith(b"-ERR"))

    def old_tls_client(self, version: ssl.TLSVersion) -> ssl.SSLContext:
        """A client that offers only ``version`` (with every cipher, however weak, allowed)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.server.certs["ca"])
        context.set_ciphers("ALL:@SECLEVEL=0")
        context.minimum_version = context.maximum_version = version
        return context

    def test_old_tls_versions_refused(self) -> None:
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            # Positive control: this client does speak the old version (to a server that allows it),
            # so the refusal below is our server's, not a client unable to try.
            self.assertEqual(old_tls_handshake(self.old_tls_client(version), self.server.certs, version),
                             version.name.replace("_", "."))
            for tls_port in (False, True):
                sock = socket.create_connection(("127.0.0.1", self.server.port if not tls_port
                                                 else self.server.tls_port), 10)
                self.addCleanup(sock.close)
                if not tls_port:
                    s = Session(sock)
                    s.line()
                    self.assertTrue(s.command(b"STLS").startswith(b"+OK"))
                with self.assertRaises(ssl.SSLError) as caught:
                    self.old_tls_client(version).wrap_socket(sock, server_hostname="localhost")
                # the server answered the hello with a protocol_version alert (RFC 8446 6.2 / 5246 7.2.2)
                self.assertEqual(caught.exception.reason, "TLSV1_ALERT_PROTOCOL_VERSION",
                                 (version, tls_port, caught.exception))

    def test_sighup_reloads_certificate_without_dropping_sessions(self) -> None:
        old = self.session(tls=True)
        self.assertTrue(old.command(b"USER alice").startswith(b"+OK"))
        fresh_dir = os.path.join(self.root, "new-certificate")
        os.mkdir(fresh_dir)
        fresh = make_certificates(fresh_dir)
        os.replace(fresh["cert"], self.server.certs["cert"])
        os.replace(fresh["key"], self.server.certs["key"])
        self.server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS certificate and key reloaded" not in self.server.log():
            self.assertLess(time.monotonic(), deadline, self.server.log())
            time.sleep(0.05)
        # New handshakes present the new certificate (only the new CA verifies it) ...
        context = ssl.create_default_context(cafile=fresh["ca"])
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", self.server.tls_port), 10),
                                   server_hostname="localhost")
        s = Session(sock)
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.server.connect(tls=True)
        # ... and the session that was open carries on.
        self.assertEqual(old.command(b"PASS " + PASSWORD.encode()), b"+OK Logged in.\r\n")

    def test_bad_files_on_sighup_keep_the_old_certificate(self) -> None:
        with open(self.server.certs["cert"], "w") as f:
            f.write("garbage")
        self.server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS reload failed" not in self.server.log():
            self.assertLess(time.monotonic(), deadline, self.server.log())
            time.sleep(0.05)
        self.assertTrue(self.session(tls=True).command(b"CAPA").startswith(b"+OK"))


class NoCertificateTests(unittest.TestCase):
    def test_no_stls_without_certificate(self) -> None:
        server = start_server(os.path.abspath(self.mktemp()), {"alice": PASSWORD}, tls=False)
        self.addCleanup(server.stop)
        s = Session(server.connect())
        self.addCleanup(s.close)
        s.line()
        self.assertTrue(s.command(b"CAPA").startswith(b"+OK"))
        self.assertNotIn(b"STLS", s.body())
        self.assertEqual(s.command(b"STLS"), b"-ERR STLS is not available: no certificate configured\r\n")

    def test_sighup_without_certificate_keeps_serving(self) -> None:
        """``systemctl reload`` on a server without TLS: logged, and nothing ends."""
        server = start_server(os.path.abspath(self.mktemp()), {"alice": PASSWORD}, tls=False)
        self.addCleanup(server.stop)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "SIGHUP: no TLS certificate to reload" not in server.log():
            self.assertIsNone(server.process.poll(), server.log())
            self.assertLess(time.monotonic(), deadline, server.log())
            time.sleep(0.05)
        s = Session(server.connect())
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))


class InteropTests(unittest.TestCase):
    """curl --ssl-reqd and fetchmail sslcertck: STLS with certificate checking, as users run them."""

    def setUp(self) -> None:
        import trustme

        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        ca = trustme.CA()
        # fetchmail insists on a subject CN as well as the subjectAltName.
        leaf = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
        self.ca = os.path.join(self.root, "ca.pem")
        ca.cert_pem.write_to_path(self.ca)
        cert, key = os.path.join(self.root, "leaf.pem"), os.path.join(self.root, "leaf.key")
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        self.server = start_server(self.root, {"alice": PASSWORD}, tls=False,
                                   extra_args=["--tls-cert", cert, "--tls-key", key])
        self.addCleanup(self.server.stop)
        self.server.deliver("alice", b"Subject: hi\r\n\r\nhello\r\n")

    def test_curl_ssl_reqd(self) -> None:
        import subprocess

        result = subprocess.run(["curl", "-sS", "-v", "--ssl-reqd", "--cacert", self.ca, "-u", "alice:" + PASSWORD,
                                 "pop3://localhost:%d/1" % self.server.port],
                                capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"Subject: hi\r\n\r\nhello\r\n")
        self.assertIn(b"> STLS", result.stderr)

    def test_fetchmail_sslcertck(self) -> None:
        import subprocess

        rc = os.path.join(self.root, "fetchmailrc")
        out = os.path.join(self.root, "out")
        with open(rc, "w") as f:
            f.write('poll localhost port %d protocol pop3 user "alice" password "%s" sslproto tls1.2+ '
                    'sslcertck sslcertfile %s mda "cat > %s"\n' % (self.server.port, PASSWORD, self.ca, out))
        os.chmod(rc, 0o600)
        result = subprocess.run(["fetchmail", "-v", "-f", rc, "--nosyslog"], capture_output=True, text=True,
                                timeout=60, env=dict(os.environ, HOME=self.root))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("POP3> STLS", result.stdout)
        with open(out, "rb") as f:
            self.assertIn(b"hello", f.read())
