"""``twistd pop3ng --metrics``: a live server scraped with curl after real sessions (plain, POP3S,
STLS; a failed login, a RETR, a DELE committed by QUIT, an [IN-USE], a dropped connection)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from tests.integration.sasl_clients import starttls
from tests.integration.support import ROOT, TWISTD_MAIN, Session, start_server

PASSWORD = "correct horse"
MESSAGE = b"Subject: metrics\r\n\r\nline one\r\n.line two\r\n"
#: MESSAGE as RETR sends it after the status line (the dot doubled, the final dot line).
MESSAGE_WIRE = b"Subject: metrics\r\n\r\nline one\r\n..line two\r\n.\r\n"
_METRICS_RE = re.compile(r"metrics at (http://127\.0\.0\.1:\d+/metrics)")

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def curl(url: str) -> Tuple[int, str]:
    """(HTTP status, body) of a GET with curl."""
    result = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "10",
                             "--write-out", "\n%{http_code}", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    body, _, status = result.stdout.decode("utf-8").rpartition("\n")
    return int(status), body


def samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class MetricsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = tempfile.mkdtemp(prefix="pop3ng-metrics-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.server = start_server(self.root, {"alice": PASSWORD, "bob": PASSWORD}, extra_args=[
            "--metrics", "tcp:0:interface=127.0.0.1", "--auth-failure-delay", "0.1"])
        self.addCleanup(self.server.stop)
        self.server.deliver("alice", MESSAGE)
        self.server.deliver("bob", b"Subject: doomed\r\n\r\nbye\r\n")
        deadline = time.monotonic() + 30
        found = None
        while found is None and time.monotonic() < deadline:
            found = _METRICS_RE.search(self.server.log())
            time.sleep(0.05)
        self.assertIsNotNone(found, self.server.log())
        assert found is not None
        self.url = found.group(1)

    def session(self, tls: bool = False) -> Session:
        s = Session(self.server.connect(tls=tls))
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))
        return s

    def test_counters_after_real_sessions(self) -> None:
        password = PASSWORD.encode()
        # A failed login on the plain port.
        s1 = self.session()
        self.assertTrue(s1.command(b"USER alice").startswith(b"+OK"))
        self.assertTrue(s1.command(b"PASS wrong").startswith(b"-ERR [AUTH]"))
        self.assertTrue(s1.command(b"QUIT").startswith(b"+OK"))
        # alice reads her message on the plain port and stays...
        s2 = self.session()
        self.assertTrue(s2.command(b"USER alice").startswith(b"+OK"))
        self.assertEqual(s2.command(b"PASS " + password), b"+OK Logged in.\r\n")
        self.assertTrue(s2.command(b"RETR 1").startswith(b"+OK"))
        self.assertEqual(s2.body(), MESSAGE_WIRE)
        # ...so her second session, over POP3S, finds the maildrop locked.
        s3 = self.session(tls=True)
        self.assertTrue(s3.command(b"USER alice").startswith(b"+OK"))
        self.assertTrue(s3.command(b"PASS " + password).startswith(b"-ERR [IN-USE]"))
        self.assertTrue(s3.command(b"QUIT").startswith(b"+OK"))
        self.assertTrue(s2.command(b"QUIT").startswith(b"+OK"))
        # (A TLS connection ends when the client closes it too: the server waits for that.)
        s3.close()
        # bob deletes his message over POP3S.
        s4 = self.session(tls=True)
        self.assertTrue(s4.command(b"USER bob").startswith(b"+OK"))
        self.assertEqual(s4.command(b"PASS " + password), b"+OK Logged in.\r\n")
        self.assertTrue(s4.command(b"DELE 1").startswith(b"+OK"))
        self.assertTrue(s4.command(b"QUIT").startswith(b"+OK Logging out, messages deleted."))
        s4.close()
        # bob again, on the plain port upgraded with STLS.
        s5 = self.session()
        starttls(s5, self.server)
        self.assertTrue(s5.command(b"USER bob").startswith(b"+OK"))
        self.assertTrue(s5.command(b"PASS " + password).startswith(b"+OK"))
        self.assertTrue(s5.command(b"QUIT").startswith(b"+OK"))
        s5.close()
        # A client that connects and goes away.
        s6 = self.session()
        s6.close()

        got = self.wait_ended(6)
        expected = {
            ("pop3ng_sessions_total", (("listener", "plain"),)): 4,
            ("pop3ng_sessions_total", (("listener", "tls"),)): 2,
            ("pop3ng_sessions_active", (("listener", "plain"),)): 0,
            ("pop3ng_sessions_active", (("listener", "tls"),)): 0,
            ("pop3ng_stls_total", ()): 1,
            ("pop3ng_sessions_ended_total", (("how", "quit"),)): 5,
            ("pop3ng_sessions_ended_total", (("how", "drop"),)): 1,
            ("pop3ng_sessions_ended_total", (("how", "timeout"),)): 0,
            ("pop3ng_logins_total", (("mechanism", "USER"), ("result", "ok"))): 3,
            ("pop3ng_logins_total", (("mechanism", "USER"), ("result", "password"))): 1,
            ("pop3ng_logins_total", (("mechanism", "USER"), ("result", "in-use"))): 1,
            ("pop3ng_errors_total", (("code", "AUTH"),)): 1,
            ("pop3ng_errors_total", (("code", "IN-USE"),)): 1,
            ("pop3ng_errors_total", (("code", "none"),)): 0,
            ("pop3ng_lock_conflicts_total", ()): 1,
            ("pop3ng_commands_total", (("verb", "USER"),)): 5,
            ("pop3ng_commands_total", (("verb", "PASS"),)): 5,
            ("pop3ng_commands_total", (("verb", "RETR"),)): 1,
            ("pop3ng_commands_total", (("verb", "DELE"),)): 1,
            ("pop3ng_commands_total", (("verb", "STLS"),)): 1,
            ("pop3ng_commands_total", (("verb", "QUIT"),)): 5,
            ("pop3ng_commands_total", (("verb", "other"),)): 0,
            ("pop3ng_messages_sent_total", (("verb", "RETR"),)): 1,
            ("pop3ng_message_bytes_sent_total", (("verb", "RETR"),)): len(MESSAGE_WIRE),
            ("pop3ng_messages_sent_total", (("verb", "TOP"),)): 0,
            ("pop3ng_deletions_total", ()): 1,
            ("pop3ng_login_duration_seconds_count", ()): 5,
            ("pop3ng_login_duration_seconds_bucket", (("le", "+Inf"),)): 5,
            ("pop3ng_hash_queue_waiting", ()): 0,
        }
        self.maxDiff = None
        self.assertEqual({key: got.get(key) for key in expected}, expected)
        self.assertGreater(got[("process_resident_memory_bytes", ())], 0)

    def wait_ended(self, count: int) -> Samples:
        """Scrape until ``count`` sessions have ended (the server has seen the last one go)."""
        deadline = time.monotonic() + 30
        while True:
            found = samples(curl(self.url)[1])
            ended = sum(v for (name, _), v in found.items() if name == "pop3ng_sessions_ended_total")
            if ended >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def test_a_request_body_is_never_spooled_to_disk(self) -> None:
        """A POST streaming a large body: twisted.web spooled every octet over 100 KB to a
        temporary file before answering (1 GB in a second through the metrics port)."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.addCleanup(sock.close)
        sock.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\n\r\n")
        for _ in range(50):
            sock.sendall(b"x" * 160000)
        spooled = [os.readlink("/proc/%d/fd/%s" % (self.server.process.pid, fd))
                   for fd in os.listdir("/proc/%d/fd" % self.server.process.pid)]
        self.assertEqual([p for p in spooled if p.startswith(tempfile.gettempdir() + "/#")
                          or "(deleted)" in p], [])
        reply = sock.recv(4096)
        self.assertTrue(reply.startswith(b"HTTP/1.1 405"), reply[:100])
        self.assertNotIn("Traceback", self.server.log())

    def test_only_metrics_is_served(self) -> None:
        base = self.url[:-len("/metrics")]
        self.assertEqual(curl(base + "/")[0], 404)
        self.assertEqual(curl(base + "/other")[0], 404)
        status, body = curl(self.url)
        self.assertEqual(status, 200)
        self.assertIn("# TYPE pop3ng_sessions_total counter", body)
        # Scrapes are not access-logged.
        self.assertNotIn("GET /metrics", self.server.log())


class UnixSocketMetricsTests(unittest.TestCase):
    def test_served_on_a_unix_socket_and_logged_as_its_path(self) -> None:
        root = tempfile.mkdtemp(prefix="pop3ng-metrics-unix-")
        self.addCleanup(shutil.rmtree, root, True)
        path = os.path.join(root, "metrics.sock")
        server = start_server(root, {"alice": PASSWORD}, tls=False, extra_args=["--metrics", "unix:" + path])
        self.addCleanup(server.stop)
        deadline = time.monotonic() + 30
        while "metrics at" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("metrics at unix:%s /metrics" % path, server.log())  # (not "UNIXAddress(...)")
        result = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "10", "--unix-socket",
                                 path, "http://localhost/metrics"], stdout=subprocess.PIPE, check=True)
        self.assertIn(b"pop3ng_", result.stdout)


class MetricsOptionTests(unittest.TestCase):
    def run_twistd(self, *metrics_args: str) -> subprocess.CompletedProcess:
        root = tempfile.mkdtemp(prefix="pop3ng-metrics-opt-")
        self.addCleanup(shutil.rmtree, root, True)
        users = os.path.join(root, "users")
        with open(users, "w") as f:
            f.write("alice:{PLAIN}x\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get(
            "PYTHONPATH")])))
        return subprocess.run([sys.executable, "-c", TWISTD_MAIN, "-n", "--pidfile=", "pop3ng",
                               "--auth", "passwd-file:" + users, "--mailbox",
                               "maildir:" + root + "/{user}", "--listen",
                               "tcp:0:interface=127.0.0.1"] + list(metrics_args),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=root, env=env,
                              timeout=60)

    def test_a_bad_endpoint_is_a_usage_error(self) -> None:
        result = self.run_twistd("--metrics", "nonsense:9110")
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"--metrics: bad endpoint 'nonsense:9110'", result.stdout)

    def test_a_port_in_use_ends_twistd_with_a_message(self) -> None:
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        description = "tcp:%d:interface=127.0.0.1" % port
        result = self.run_twistd("--metrics", description)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(("cannot listen on --metrics %s" % description).encode(), result.stdout)


class WorkersMetricsTests(unittest.TestCase):
    """``--workers 2 --metrics``: the workers share the POP3 ports only; the metrics port is the
    main process's, and counts the sessions that process served."""

    def test_the_metrics_port_is_not_handed_to_the_workers(self) -> None:
        root = tempfile.mkdtemp(prefix="pop3ng-metrics-workers-")
        self.addCleanup(shutil.rmtree, root, True)
        server = start_server(root, {"alice": PASSWORD}, tls=False, extra_args=[
            "--workers", "2", "--metrics", "tcp:0:interface=127.0.0.1"])
        self.addCleanup(server.stop)
        os.makedirs(server.maildir("alice"), exist_ok=True)
        found = None
        deadline = time.monotonic() + 30
        while found is None and time.monotonic() < deadline:
            found = _METRICS_RE.search(server.log())
            time.sleep(0.05)
        assert found is not None, server.log()
        url = found.group(1)
        sessions = 20
        for _ in range(sessions):
            s = Session(server.connect())
            self.addCleanup(s.close)
            self.assertTrue(s.line().startswith(b"+OK"))
            self.assertTrue(s.command(b"QUIT").startswith(b"+OK"))
            s.close()
        # Had a worker adopted the metrics socket, some of these would meet a POP3 greeting.
        served = [curl(url) for _ in range(10)]
        self.assertEqual({status for status, _ in served}, {200})
        counted = samples(served[-1][1])[("pop3ng_sessions_total", (("listener", "plain"),))]
        self.assertLessEqual(counted, sessions)
