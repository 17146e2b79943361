"""Black-box conformance under load: 20 concurrent sessions, a 50 MB message over plain and TLS with
the server's memory measured through /proc, and clients that read slowly or never read."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import time

from .e2e import USERS, TwistdTestCase, StreamingBody, stuffed, wire_lines, wire_message
from .support import Session, wait_for_full_server_socket

MB = 1024 * 1024

def pattern_block() -> bytes:
    """~64 KiB of lines (LF and CRLF, dot lines, blank lines); its length is not a power of two so
    that repeated, its dot lines fall on every alignment relative to the server's read chunks."""
    lines = []
    i = 0
    size = 0
    while size < 65_000:
        kind = i % 7
        if kind == 0:
            line = b"." + b"d" * (i % 50) + b"\n"
        elif kind == 1:
            line = b".\r\n"
        elif kind == 2:
            line = b"\n"
        elif kind == 3:
            line = b"..x\r\n"
        else:
            line = b"line %06d " % i + b"abcdefghij" * (i % 9) + (b"\r\n" if i % 2 else b"\n")
        lines.append(line)
        size += len(line)
        i += 1
    return b"".join(lines) + b"odd\n"


def write_big_message(maildir: str, total: int, name: str):
    """Write a message of about ``total`` bytes straight into new/, chunk by chunk; returns
    (sha256 of the expected un-stuffed wire form, wire size)."""
    header = b"Subject: big\nX-Size: %d\n\n" % total
    block = pattern_block()
    wire_block = wire_message(block)
    sha = hashlib.sha256(wire_message(header))
    size = len(wire_message(header))
    os.makedirs(os.path.join(maildir, "tmp"), exist_ok=True)
    os.makedirs(os.path.join(maildir, "new"), exist_ok=True)
    os.makedirs(os.path.join(maildir, "cur"), exist_ok=True)
    tmp = os.path.join(maildir, "tmp", name)
    written = len(header)
    with open(tmp, "wb") as f:
        f.write(header)
        while written < total:
            f.write(block)
            sha.update(wire_block)
            size += len(wire_block)
            written += len(block)
        f.write(b".last line without newline")
        sha.update(b".last line without newline\r\n")
        size += len(b".last line without newline\r\n")
    os.rename(tmp, os.path.join(maildir, "new", name))
    return sha.hexdigest(), size


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    """Peak RSS of a process from now on: VmHWM after resetting it (clear_refs 5, Linux >= 4.0),
    and VmRSS sampled every 10 ms in case the reset is not permitted."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        try:
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.peak = rss_kb(pid)
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_kb(self.pid))
            time.sleep(0.01)

    def stop(self) -> int:
        self.running = False
        self.join()
        if self.hwm_reset:
            self.peak = max(self.peak, rss_kb(self.pid, "VmHWM"))
        return self.peak


def report(text: str) -> None:
    sys.stderr.write("\n[e2e] %s\n" % text)
    try:
        with open(os.path.join(os.getcwd(), "e2e-measurements.log"), "a") as f:
            f.write(text + "\n")
    except OSError:
        pass


class BigMessageTests(TwistdTestCase):
    """A 50 MB message: byte-exact over plain and TLS, server memory growth ≤ 8 MB."""

    LIMIT_KB = 8 * 1024

    def _fetch(self, tls: bool):
        user, _ = self.fresh_user()
        name = "1700000000.M1P1.big%d" % tls
        digest, size = write_big_message(self.server.maildir(user), 50 * MB, name)
        self.server.deliver(user, b"Subject: small\n\nafter the big one\n")
        s = self.login(user, tls=tls)
        self.assertEqual(s.command(b"LIST 1"), b"+OK 1 %d\r\n" % size)
        # warm up: a small RETR, then take the baseline
        self.assertEqual(self.retr(s, 2), stuffed(wire_lines(b"Subject: small\n\nafter the big one\n")))
        pid = self.server.process.pid
        baseline = rss_kb(pid)
        sampler = RssSampler(pid)
        sampler.start()
        start = time.monotonic()
        status = s.command(b"RETR 1")
        self.assertTrue(status.startswith(b"+OK"), status)
        reader = StreamingBody(s)
        got_digest, got_size = reader.read()
        elapsed = time.monotonic() - start
        peak = sampler.stop()
        self.assertFalse(reader.bad_line_ending)
        self.assertFalse(reader.bad_stuffing)
        self.assertEqual(got_size, size)
        self.assertEqual(got_digest, digest)
        self.ok(s, b"NOOP")
        growth = peak - baseline
        report("50 MB RETR over %s: %.1f s, server RSS baseline %d kB, peak %d kB, growth %d kB"
               % ("TLS" if tls else "plain TCP", elapsed, baseline, peak, growth))
        self.assertLessEqual(growth, self.LIMIT_KB)
        # TOP of the big message stops early
        status = s.command(b"TOP 1 3")
        self.assertTrue(status.startswith(b"+OK"))
        self.assertEqual(s.body(), b"Subject: big\r\nX-Size: %d\r\n\r\n..\r\n..\r\n\r\n.\r\n" % (50 * MB))
        self.ok(s, b"QUIT")

    def test_50mb_plain(self):
        self._fetch(tls=False)

    def test_50mb_tls(self):
        self._fetch(tls=True)

    def test_slow_reader_and_never_reader_keep_memory_bounded(self):
        self._never_reader(tls=False)

    def test_slow_reader_and_never_reader_keep_memory_bounded_tls(self):
        self._never_reader(tls=True)

    def _never_reader(self, tls):
        user, _ = self.fresh_user()
        digest, size = write_big_message(self.server.maildir(user), 20 * MB, "1700000000.M1P1.slow")
        pid = self.server.process.pid
        s = self.login(user, tls=tls)
        self.ok(s, b"NOOP")
        baseline = rss_kb(pid)
        sampler = RssSampler(pid)
        sampler.start()
        # never reads: RETR ten times and thousands of commands in a row, then sits there
        s.send(b"RETR 1\r\n" * 10 + b"LIST\r\nUIDL\r\nNOOP\r\n" * 5000)
        # The server has filled this connection's socket and holds the rest back (bounded).
        wait_for_full_server_socket(self, s, tls)
        # another session is served meanwhile
        other_user, _ = self.fresh_user()
        self.server.deliver(other_user, b"Subject: x\n\ny\n")
        t = self.login(other_user)
        self.assertEqual(t.command(b"STAT"), b"+OK 1 %d\r\n" % len(wire_message(b"Subject: x\n\ny\n")))
        # now read slowly: the whole stream comes out in order and intact
        for i in range(2):
            status = s.line()
            self.assertTrue(status.startswith(b"+OK"), status)
            reader = StreamingBody(s)
            self.assertEqual(reader.read(), (digest, size))
        peak = sampler.stop()
        report("never-reading client (%s) with 10 x RETR of 20 MB + 15000 commands queued: "
               "server RSS growth %d kB" % ("TLS" if tls else "plain TCP", peak - baseline))
        self.assertLessEqual(peak - baseline, self.LIMIT_KB)
        s.close()
        self.assertTrue(t.command(b"NOOP").startswith(b"+OK"))


class ConcurrencyTests(TwistdTestCase):
    def test_20_concurrent_sessions(self):
        users = [self.fresh_user()[0] for _ in range(20)]
        messages = {}
        for n, user in enumerate(users):
            messages[user] = []
            for i in range(5):
                raw = ((b"Subject: %s %d\n\n" % (user.encode(), i))
                       + (b".%d line of %s\r\n" % (i, user.encode())) * (2000 * (i + 1)))
                self.server.deliver(user, raw)
                messages[user].append(raw)
        barrier = threading.Barrier(20)
        errors = []
        results = {}

        def worker(user):
            try:
                # half of them over TLS
                s = Session(self.server.connect(tls=users.index(user) % 2 == 1, timeout=60))
                try:
                    barrier.wait(30)
                    reply = s.login(user.encode(), USERS[user].encode())
                    assert reply.startswith(b"+OK"), reply
                    assert s.command(b"STAT").startswith(b"+OK 5 ")
                    got = []
                    for i in range(5):
                        assert s.command(b"RETR %d" % (i + 1)).startswith(b"+OK")
                        got.append(s.body())
                    for i in range(5):
                        assert s.command(b"DELE %d" % (i + 1)).startswith(b"+OK")
                    assert s.command(b"QUIT").startswith(b"+OK")
                    results[user] = got
                finally:
                    s.close()
            except BaseException as error:  # reported below
                errors.append((user, repr(error)))

        threads = [threading.Thread(target=worker, args=(u,)) for u in users]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - start
        self.assertEqual(errors, [])
        for user in users:
            self.assertEqual(sorted(results[user]), sorted(stuffed(wire_lines(m)) for m in messages[user]), user)
        report("20 concurrent sessions, 100 messages (%.1f MB): %.2f s"
               % (sum(len(m) for ms in messages.values() for m in ms) / MB, elapsed))
        for user in users:
            s = self.login(user)
            self.assertEqual(s.command(b"STAT"), b"+OK 0 0\r\n")


class LatencyTests(TwistdTestCase):
    """No Nagle/delayed-ACK stall: a small RETR round trip takes far less than 40 ms."""

    def _round_trips(self, tls):
        user, _ = self.fresh_user()
        self.server.deliver(user, b"Subject: small\r\n\r\n" + b"line\r\n" * 200)
        s = self.login(user, tls=tls)
        for _ in range(5):
            self.retr(s, 1)
        start = time.monotonic()
        for _ in range(100):
            self.assertTrue(s.command(b"RETR 1").startswith(b"+OK"))
            s.body()
            self.assertTrue(s.command(b"LIST").startswith(b"+OK"))
            s.body()
            self.assertTrue(s.command(b"NOOP").startswith(b"+OK"))
        per_round = (time.monotonic() - start) / 100
        report("RETR+LIST+NOOP round trips over %s: %.2f ms each" % ("TLS" if tls else "TCP", per_round * 1000))
        self.assertLess(per_round, 0.03)  # a Nagle stall costs 40 ms

    def test_plain(self):
        self._round_trips(False)

    def test_tls(self):
        self._round_trips(True)


class PipelinedBulkTests(TwistdTestCase):
    """Pipelined RETRs of many small messages leave in large gathered writes (``sendmsg`` of the
    batch's pieces); a reader with a small receive buffer that reads slowly makes the kernel take
    part of a batch at a time. Every byte must still arrive, in order, stuffed once."""

    def _bulk(self, tls: bool) -> None:
        user, _ = self.fresh_user()
        messages = []
        for i in range(60):  # ~6 MB in all: more than the sockets' buffers hold
            body = b"".join(b"%s line %d of message %d\n" % (b"." if j % 7 == 0 else b"", j, i)
                            for j in range(i % 50 + 4000))
            raw = b"Subject: %d\n\n" % i + body + (b"" if i % 3 else b"no final newline")
            messages.append(raw)
            self.server.deliver(user, raw, name="%010d.M%dP1.bulk" % (1_700_000_000 + i, i))
        s = self.login(user, tls=tls)
        s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.send(b"".join(b"RETR %d\r\n" % (i + 1) for i in range(len(messages))))
        # ~6 MB of replies owed, more than the server's socket holds: once it is full, the rest
        # waits in the server until this client reads (plain TCP: the direct sender's writes were
        # cut short; TLS: the transport waits for the socket to become writable).
        wait_for_full_server_socket(self, s, tls)
        for i, raw in enumerate(messages):
            self.assertTrue(s.line().startswith(b"+OK"), i)
            self.assertEqual(s.body(), stuffed(wire_lines(raw)), i)
        self.assertEqual(s.command(b"QUIT"), b"+OK Logging out.\r\n")

    def test_plain(self):
        self._bulk(False)

    def test_tls(self):
        self._bulk(True)
