"""LMTP into a real ``twistd pop3ng`` (``--lmtp-listen``), from real clients (``swaks``, Python's
``smtplib.LMTP``, raw sockets), and out through POP3, byte for byte.

The oracle is independent of the server: a message sent as the dot-stuffed CRLF lines of RFC
5321 §4.5.2 must come back from ``RETR`` as the very same octets (POP3's multi-line form is the
same), computed by :mod:`.e2e` from RFC 1939.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from twisted.trial import unittest

from .e2e import StreamingBody, stuffed, wait_for, wire_lines, wire_message
from .support import ServerProcess, Session, start_server
from .test_e2e_messages import TRICKY

USERS = {"alice": "alice pw", "bob@example.org": "bob pw", "carol": "carol pw"}
_LMTP_PORT = re.compile(rb"LMTPFactory starting on (\d+)")
_TRACE = re.compile(rb"Return-Path: <[^>]*>\r\nDelivered-To: \S+\r\nReceived: from \S+ \(\[[^\]]+\]\)\r\n"
                    rb"\tby \S+ with LMTP id [0-9a-f]+\r\n\tfor <[^>]+>; [^\r\n]+\r\n")


def start_lmtp_server(root: str, extra_args: Optional[List[str]] = None,
                      users: Optional[Dict[str, str]] = None) -> Tuple[ServerProcess, int]:
    """``twistd pop3ng`` with a loopback LMTP listener; the server and the LMTP port."""
    server = start_server(root, users=dict(users or USERS), tls=False,
                          extra_args=["--lmtp-listen", "tcp:0:interface=127.0.0.1"] + list(extra_args or []))
    found: List[int] = []

    def listening() -> bool:
        found[:] = [int(p) for p in _LMTP_PORT.findall(server.log().encode())]
        return bool(found)

    if not wait_for(listening, timeout=30):
        server.stop()
        raise RuntimeError("no LMTP listener:\n" + server.log())
    return server, found[0]


class LMTPConnection:
    """A raw LMTP client: what it sends is exactly the bytes given."""

    def __init__(self, port: int, path: Optional[str] = None) -> None:
        if path is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        else:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(30)
            sock.connect(path)
        self.session = Session(sock)
        self.greeting = self.session.line()

    def replies(self, count: int) -> List[bytes]:
        """The next ``count`` complete replies (a multi-line reply counts once)."""
        out: List[bytes] = []
        while len(out) < count:
            reply = b""
            while True:
                line = self.session.line()
                if not line:
                    raise ConnectionError("closed after %r" % (out,))
                reply += line
                if line[3:4] != b"-":
                    break
            out.append(reply)
        return out

    def send_message(self, sender: str, recipients: List[str], data: bytes) -> Tuple[List[bytes], List[bytes]]:
        """One pipelined transaction; the replies up to 354 and the per-recipient replies."""
        commands = b"LHLO client.test\r\nMAIL FROM:<%s>\r\n" % sender.encode()
        commands += b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in recipients) + b"DATA\r\n"
        self.session.send(commands)
        before = self.replies(3 + len(recipients))
        if not before[-1].startswith(b"354"):
            return before, []
        self.session.send(data)
        accepted = sum(1 for reply in before[2:-1] if reply.startswith(b"250"))
        return before, self.replies(accepted)

    def close(self) -> None:
        self.session.send(b"QUIT\r\n")
        self.session.close()


class LMTPServerTestCase(unittest.TestCase):
    extra_args: List[str] = ["--lmtp-trace-headers", "no"]
    #: False: each test calls :meth:`start` itself, with its own options.
    start_in_setup = True

    def setUp(self) -> None:
        self.root = tempfile.mkdtemp(prefix="pop3ng-lmtp-")
        self.addCleanup(shutil.rmtree, self.root, True)
        if self.start_in_setup:
            self.start()

    def start(self, *extra: str) -> None:
        self.server, self.port = start_lmtp_server(self.root, self.extra_args + list(extra))
        self.addCleanup(self.server.stop)
        self.addCleanup(self.assertNoTraceback)

    def assertNoTraceback(self) -> None:
        log = self.server.log()
        self.assertNotIn("Traceback", log, log[-3000:])

    def pop3(self, user: str) -> Session:
        s = Session(self.server.connect(timeout=30))
        self.addCleanup(s.close)
        self.assertTrue(s.login(user.encode(), USERS[user].encode()).startswith(b"+OK"))
        return s

    def retr_all(self, user: str) -> List[Tuple[int, bytes]]:
        """(LIST size, raw RETR body) of each message in ``user``'s maildrop, in order."""
        s = self.pop3(user)
        count = int(s.command(b"STAT").split()[1])
        out = []
        for n in range(1, count + 1):
            size = int(s.command(b"LIST %d" % n).split()[2])
            self.assertTrue(s.command(b"RETR %d" % n).startswith(b"+OK"))
            out.append((size, s.body()))
        s.command(b"QUIT")
        return out

    def lmtp(self, path: Optional[str] = None) -> LMTPConnection:
        connection = LMTPConnection(self.port, path)
        self.addCleanup(connection.session.close)
        self.assertTrue(connection.greeting.startswith(b"220 "), connection.greeting)
        return connection


class RealClientTests(LMTPServerTestCase):
    def test_swaks_per_recipient_replies_and_retr_is_what_swaks_sent(self) -> None:
        message = os.path.join(self.root, "message.eml")
        with open(message, "wb") as f:
            f.write(b"Subject: via swaks\r\n\r\n.a line with a dot\r\n..two\r\nlast line")
        swaks = subprocess.run(
            ["swaks", "--protocol", "LMTP", "--server", "127.0.0.1:%d" % self.port, "--from", "s@x.test",
             "--to", "alice@example.org,nobody@example.org,bob@example.org", "--data", "@" + message],
            capture_output=True, timeout=60)
        out = swaks.stdout.decode("utf-8", "replace")
        self.assertEqual(swaks.returncode, 0, out + swaks.stderr.decode())
        self.assertIn("<** 550 5.1.1 <nobody@example.org> No such user here", out)
        after_dot = out.split("\n -> .\n", 1)[1]
        self.assertRegex(after_dot, r"\A<-  250 2\.0\.0 <alice@example\.org> Delivered as \S+\n"
                                    r"<-  250 2\.0\.0 <bob@example\.org> Delivered as \S+\n")
        # swaks's transcript shows the DATA lines it sent (" -> LINE" and the line's CR), dot-stuffed:
        # RETR gives them back.
        sent = out.split("<-  354 ", 1)[1].split("\n", 1)[1].split("\n -> .\n", 1)[0]
        data = b"".join(line[4:].rstrip("\r").encode() + b"\r\n" for line in sent.split("\n")) + b".\r\n"
        self.assertEqual(data, b"Subject: via swaks\r\n\r\n..a line with a dot\r\n...two\r\nlast line\r\n.\r\n")
        for user in ("alice", "bob@example.org"):
            [(size, body)] = self.retr_all(user)
            self.assertEqual(body, data)
            self.assertEqual(size, len(data) - 3 - 2)  # without the terminator and the two stuffed dots

    def test_smtplib_lmtp_per_recipient_replies(self) -> None:
        client = smtplib.LMTP("127.0.0.1", self.port, timeout=30)
        self.addCleanup(client.close)
        self.assertEqual(client.ehlo()[0], 250)  # smtplib.LMTP sends LHLO
        self.assertEqual(client.esmtp_features["size"], str(64 << 20))
        self.assertEqual(client.mail("s@x.test"), (250, b"2.1.0 Ok"))
        self.assertEqual(client.rcpt("alice@example.org"), (250, b"2.1.5 <alice@example.org> Ok"))
        self.assertEqual(client.rcpt("nobody@example.org"), (550, b"5.1.1 <nobody@example.org> No such user here"))
        self.assertEqual(client.rcpt("carol"), (250, b"2.1.5 <carol> Ok"))
        # smtplib.LMTP.data() returns the first recipient's reply; the next waits to be read.
        first = client.data(b"Subject: smtplib\r\n\r\n.hidden dot\r\nbody\r\n")
        second = client.getreply()
        self.assertEqual((first[0], second[0]), (250, 250))
        self.assertTrue(first[1].startswith(b"2.0.0 <alice@example.org> Delivered as "), first)
        self.assertTrue(second[1].startswith(b"2.0.0 <carol> Delivered as "), second)
        client.quit()
        uid = first[1].rsplit(b" ", 1)[1]
        s = self.pop3("alice")
        self.assertEqual(s.command(b"UIDL 1"), b"+OK 1 " + uid + b"\r\n")  # the UIDL LMTP reported
        self.assertTrue(s.command(b"RETR 1").startswith(b"+OK"))
        self.assertEqual(s.body(), b"Subject: smtplib\r\n\r\n..hidden dot\r\nbody\r\n.\r\n")

    def test_unix_socket_listener(self) -> None:
        path = os.path.join(self.root, "lmtp.sock")
        self.server.stop()
        self.start("--lmtp-listen", "unix:" + path)
        wait_for(lambda: os.path.exists(path))
        client = smtplib.LMTP(path, timeout=30)
        self.addCleanup(client.close)
        self.assertEqual(client.sendmail("s@x.test", ["alice"], b"Subject: unix\r\n\r\nhi\r\n"), {})
        client.quit()
        self.assertEqual(self.retr_all("alice"), [(len(b"Subject: unix\r\n\r\nhi\r\n"),
                                                   b"Subject: unix\r\n\r\nhi\r\n.\r\n")])


class ByteExactTests(LMTPServerTestCase):
    """Every tricky message of the POP3 suite, sent as DATA and read back with RETR."""

    start_in_setup = False

    def check_round_trip(self) -> None:
        names = sorted(TRICKY)
        connection = self.lmtp()
        for name in names:
            data = stuffed(wire_lines(TRICKY[name]))
            before, after = connection.send_message("s@x.test", ["alice"], data)
            self.assertEqual(len(after), 1, (name, before))
            self.assertTrue(after[0].startswith(b"250 2.0.0 <alice> Delivered as "), (name, after))
        connection.close()
        retrieved = self.retr_all("alice")
        self.assertEqual(len(retrieved), len(names))
        for name, (size, body) in zip(names, retrieved):
            self.assertEqual(body, stuffed(wire_lines(TRICKY[name])), name)
            self.assertEqual(size, len(wire_message(TRICKY[name])), name)

    def test_maildir(self) -> None:
        self.start()
        self.check_round_trip()

    def start_with(self, mailbox: str) -> None:
        self.start("--mailbox", mailbox)

    def test_memory_store(self) -> None:
        self.start_with("memory:")
        self.check_round_trip()
        self.assertFalse(os.path.exists(self.server.maildir("alice")))

    def test_mbox(self) -> None:
        self.start_with("mbox:" + os.path.join(self.root, "mbox", "{user}"))
        self.check_round_trip()
        self.assertGreater(os.path.getsize(os.path.join(self.root, "mbox", "alice")), 100_000)
        self.assertFalse(os.path.exists(self.server.maildir("alice")))

    def test_postgresql(self) -> None:
        from twisted_pop3ng.testing.postgresql import drop_database, fresh_database

        dsn = fresh_database()
        self.addCleanup(drop_database, dsn)
        self.start_with("postgresql:" + dsn)
        self.check_round_trip()
        self.assertFalse(os.path.exists(self.server.maildir("alice")))

    def test_large_message_streamed(self) -> None:
        """50 MB in and out; the server never holds it whole (the body is spooled to a file)."""
        line = b"0123456789" * 9 + b"\r\n"
        data = b"Subject: big\r\n\r\n" + line * 540_000 + b".\r\n"  # 49.7 MB
        self.start()
        connection = self.lmtp()
        before = self.server.rss_kb()
        _, after = connection.send_message("s@x.test", ["alice", "carol"], data)
        self.assertEqual([reply[:4] for reply in after], [b"250 ", b"250 "], after)
        grown = self.server.rss_kb() - before
        self.assertLess(grown, 16 * 1024, "the server grew by %d KB receiving a 50 MB message" % grown)
        s = self.pop3("alice")
        self.assertEqual(s.command(b"LIST 1"), b"+OK 1 %d\r\n" % (len(data) - 3))
        self.assertTrue(s.command(b"RETR 1").startswith(b"+OK"))
        self.assertEqual(StreamingBody(s).read(), (hashlib.sha256(data[:-3]).hexdigest(), len(data) - 3))


class TraceHeaderTests(LMTPServerTestCase):
    extra_args: List[str] = []

    def test_trace_headers_then_the_message_as_sent(self) -> None:
        data = stuffed(wire_lines(b"Subject: traced\n\n.body\n"))
        _, after = self.lmtp().send_message("s@x.test", ["alice@example.org"], data)
        self.assertTrue(after[0].startswith(b"250 "), after)
        [(size, body)] = self.retr_all("alice")
        match = _TRACE.match(body)
        self.assertIsNotNone(match, body)
        self.assertEqual(body[match.end():], data)
        self.assertTrue(body.startswith(b"Return-Path: <s@x.test>\r\nDelivered-To: alice@example.org\r\n"
                                        b"Received: from client.test ([127.0.0.1])\r\n"), body)


class LimitTests(LMTPServerTestCase):
    extra_args: List[str] = ["--lmtp-trace-headers", "no", "--lmtp-max-size", "100000"]

    def test_oversized_message_refused_connection_goes_on(self) -> None:
        connection = self.lmtp()
        _, after = connection.send_message("s@x.test", ["alice", "carol"], (b"x" * 98 + b"\r\n") * 1001 + b".\r\n")
        self.assertEqual(after, [b"552 5.3.4 <alice> Message too big\r\n", b"552 5.3.4 <carol> Message too big\r\n"])
        _, after = connection.send_message("s@x.test", ["alice"], b"small\r\n.\r\n")
        self.assertTrue(after[0].startswith(b"250 "), after)
        self.assertEqual(self.retr_all("alice"), [(7, b"small\r\n.\r\n")])

    def test_garbage_gets_errors_not_tracebacks(self) -> None:
        connection = self.lmtp()
        connection.session.send(b"\x00\xff\xfe\r\nHELO x\r\nMAIL FROM:<a@b>\r\nLHLO\r\nRCPT TO:<a>\r\n")
        replies = connection.replies(5)
        self.assertEqual([r[:3] for r in replies], [b"500", b"500", b"503", b"501", b"503"])
        connection.session.send(b"A" * 5000 + b"\r\n")
        self.assertEqual(connection.replies(1), [b"500 5.5.2 Line too long (at most 1000 octets)\r\n"])
        self.assertTrue(connection.session.closed())


class UnreadRepliesTests(LMTPServerTestCase):
    extra_args: List[str] = ["--lmtp-trace-headers", "no", "--lmtp-timeout", "1"]

    def test_a_client_that_never_reads_cannot_grow_the_server(self) -> None:
        """Pipelined commands whose replies are never read: the server stops reading once its
        replies back up (it took 2 GB for 136 MB of VRFY), and the idle timeout's close is an
        abort when they still cannot be sent (the connection stayed open for good)."""
        before = self.server.rss_kb()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        burst, sent, stalled_since = b"VRFY somebody\r\n" * 4096, 0, None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                sent += sock.send(burst)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 2:
                    break  # the server stopped reading
                time.sleep(0.01)
        self.assertLess(sent, 64 << 20, "the server kept reading unread commands")
        self.assertLess(self.server.rss_kb() - before, 64 << 10)
        # The idle timeout (1 s) closes it, and CLOSE_GRACE later aborts: the socket ends.
        sock.setblocking(True)
        sock.settimeout(30)
        ended = time.monotonic()
        try:
            while sock.recv(1 << 16):
                pass
        except ConnectionResetError:
            pass
        self.assertLess(time.monotonic() - ended, 25)
        connection = self.lmtp()  # and the server serves the next client
        _, after = connection.send_message("s@x.test", ["alice"], b"hello\r\n.\r\n")
        self.assertTrue(after[0].startswith(b"250 "), after)


class FullDiskTests(unittest.TestCase):
    """A maildrop on a full filesystem (a small tmpfs, as root) or an unwritable one (otherwise):
    4xx for that recipient, nothing visible, and the next delivery works once there is room."""

    def setUp(self) -> None:
        self.root = tempfile.mkdtemp(prefix="pop3ng-lmtp-full-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.mail = os.path.join(self.root, "mail")
        os.makedirs(self.mail)
        self.as_root = os.geteuid() == 0
        if self.as_root:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", self.mail], check=True)
            self.addCleanup(subprocess.run, ["umount", "-l", self.mail], check=False)
        self.server, self.port = start_lmtp_server(self.root, ["--lmtp-trace-headers", "no"])
        self.addCleanup(self.server.stop)

    def visible(self, user: str) -> List[str]:
        maildir = self.server.maildir(user)
        return [sub + "/" + name for sub in ("new", "cur", "tmp") if os.path.isdir(os.path.join(maildir, sub))
                for name in os.listdir(os.path.join(maildir, sub))]

    def test_no_room_is_a_temporary_failure(self) -> None:
        if not self.as_root:  # no tmpfs without root: an unwritable maildir stands in
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(self.server.maildir("alice"), sub))
            os.chmod(os.path.join(self.server.maildir("alice"), "tmp"), 0o500)
        connection = LMTPConnection(self.port)
        self.addCleanup(connection.session.close)
        big = b"Subject: too big for the disk\r\n\r\n" + (b"y" * 98 + b"\r\n") * 4000 + b".\r\n"  # 400 KB
        _, after = connection.send_message("s@x.test", ["alice", "carol"], big)
        expected = (b"452 4.3.1 <alice> Insufficient system storage, try again later (No space left on device)\r\n"
                    if self.as_root else b"451 4.3.0 <alice> Mail store not writable, try again later")
        self.assertTrue(after[0].startswith(expected), after)
        self.assertEqual(after[1][:3], after[0][:3])  # carol's maildrop is on the same disk
        self.assertEqual(self.visible("alice"), [])
        _, after = connection.send_message("s@x.test", ["alice"], b"Subject: small\r\n\r\nfits\r\n.\r\n")
        if self.as_root:
            self.assertTrue(after[0].startswith(b"250 2.0.0 <alice> Delivered as "), after)
            self.assertEqual(len(self.visible("alice")), 1)
        log = self.server.log()
        self.assertNotIn("Traceback", log, log[-3000:])
        self.assertIn("LMTP delivery to alice failed", log)


