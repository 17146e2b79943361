"""Black-box conformance: tricky stored messages come out byte-exact through RETR and TOP.

Messages are real maildir files. For each, ``LIST n`` must equal the octets the client gets after
un-stuffing, RETR must be the CRLF-normalised, dot-stuffed message, and TOP must cut after the header,
the separator and exactly n body lines. The expected bytes come from ``e2e.wire_lines`` (a line-by-line
reading of RFC 1939), not from the server's codec.
"""

from __future__ import annotations

import socket

from .e2e import TwistdTestCase, stuffed, top_lines, wire_lines, wire_message
from .support import wait_for_full_server_socket

#: The server reads a stored message in chunks of this size (server.CHUNK_SIZE); the maildir size
#: measurement reads 1 MiB; 64 KiB is a common socket/buffer size. Dot lines must survive all three.
BOUNDARIES = (64 * 1024, 256 * 1024, 1024 * 1024)

TRICKY = {
    "lf": b"Subject: lf\n\nline 1\nline 2\n",
    "crlf": b"Subject: crlf\r\n\r\nline 1\r\nline 2\r\n",
    "mixed": b"Subject: mixed\r\nX: y\n\r\nline 1\nline 2\r\nline 3\n",
    "dot_lines": b"Subject: dots\n\n.\n..\n...\n.x\n..x\n. \nx.\n.\r\n..\r\nend\n",
    "first_line_dot": b".Subject: first line starts with a dot\n\nbody\n",
    "first_line_is_dot": b".\nSubject: x\n\nbody\n",
    "first_line_dotdot": b"..\r\n\r\n..\r\n",
    "only_dot": b".",
    "only_dot_newline": b".\n",
    "only_dot_crlf": b".\r\n",
    "no_final_newline": b"Subject: x\n\nlast line without newline",
    "no_final_newline_dot": b"Subject: x\n\n.",
    "no_final_newline_cr": b"Subject: x\n\nends in CR\r",
    "empty": b"",
    "just_newline": b"\n",
    "no_separator": b"Subject: only headers\nX-A: 1\nX-B: 2\n",
    "no_separator_no_newline": b"Subject: only headers",
    "body_only": b"\nbody line 1\nbody line 2\n",
    "fake_terminator": b"Subject: inject\r\n\r\nhello\r\n.\r\n+OK fake\r\n-ERR fake\r\n.\r\n",
    "fake_terminator_lf": b"Subject: inject\n\nhello\n.\n+OK 1 2\n.\n",
    "bare_cr": b"Subject: cr\n\na\rb\r\r\n\rc\n.\r.\n",
    "eight_bit": "Subject: =?utf-8?q?x?=\n\nGr\u00fc\u00dfe \u2603 \U0001f600\n".encode("utf-8") + b"\xff\xfe\x80\n",
    "binary": b"Subject: bin\n\n" + bytes(range(256)) * 4 + b"\n" + b"\x00" * 100 + b"\n",
    "nul_lines": b"Subject: nul\n\n\x00\n.\x00\n\x00.\n",
    "many_blank": b"Subject: blanks\n\n\n\n\n.\n\n",
    "long_line_100k": b"Subject: long\n\n" + b"x" * 100_000 + b"\n.after\n",
    "long_dot_line": b"Subject: long\n\n." + b"y" * 100_000 + b"\r\n.\r\n",
    "long_line_no_newline": b"Subject: long\n\n" + b"z" * 300_000,
    "long_header_line": b"Subject: " + b"h" * 300_000 + b"\nX-Dot:\n .folded\n\n.body\n",
    "crlf_only_lines": b"\r\n\r\n\r\n",
    "separator_with_spaces": b"Subject: x\n \nnot a separator\n\nbody 1\nbody 2\n",
}


def boundary_messages():
    """Dot lines placed so that the dot, or the CR/LF before it, falls on each read boundary."""
    out = {}
    for boundary in BOUNDARIES:
        for eol in (b"\n", b"\r\n"):
            for shift in (-3, -2, -1, 0, 1):
                # the "." of a dot line sits at offset boundary + shift
                head = b"Subject: boundary %d %r %d\n\n" % (boundary, eol, shift)
                filler_line = b"f" * 70 + eol
                body = head
                target = boundary + shift  # the line before the dot ends here
                while len(body) + len(filler_line) < target - 10:
                    body += filler_line
                body += b"g" * (target - len(body) - len(eol)) + eol
                assert len(body) == boundary + shift
                body += b"." + eol + b".." + eol + b".x" + eol + b"+OK injected" + eol
                body += b".\r\n" * 3 + b"tail" + eol
                out["b%d_%s_%+d" % (boundary, "crlf" if eol == b"\r\n" else "lf", shift)] = body
        # a CRLF split across the boundary, followed by a dot line
        body = b"Subject: split\n\n"
        body += b"h" * (boundary - 1 - len(body)) + b"\r\n.\r\n.. \r\nend\r\n"
        assert body[boundary - 1:boundary + 1] == b"\r\n"
        out["b%d_split_crlf" % boundary] = body
        # bare CRs around the boundary: kept as data, never merged with a later LF
        for tail, label in ((b"\rX\r\n.\r\n", "bare_cr"), (b"\r\r\n.\n", "cr_crlf"), (b"\r\n\r\n.\r\n", "crlf_crlf"),
                            (b"\n\r.\n", "lf_cr_dot")):
            body = b"Subject: cr\n\n"
            body += b"c" * (boundary - 1 - len(body)) + tail + b"end"
            assert body[boundary - 1:boundary] == b"\r" or label == "lf_cr_dot"
            out["b%d_%s" % (boundary, label)] = body
        # a long line that crosses the boundary and ends with a dot line just after it
        body = b"Subject: long\n\n" + b"L" * (boundary + 10) + b"\n.\n"
        out["b%d_long_line" % boundary] = body
        # the file ends exactly at the boundary with a dot line without newline, or just after
        body = b"Subject: end\n\n"
        body += b"e" * (boundary - 1 - len(body)) + b"\n."
        assert len(body) == boundary + 1
        out["b%d_end_dot" % boundary] = body
        body = body[:-2] + b"\r"
        assert len(body) == boundary
        out["b%d_end_cr" % boundary] = body
    return out


class TrickyMessageTests(TwistdTestCase):
    def _deliver_all(self, messages):
        user, _ = self.fresh_user()
        names = sorted(messages)
        for i, name in enumerate(names):
            # names sort in delivery order: message i+1 is names[i]
            self.server.deliver(user, messages[name], name="%010d.M1P1Q%d.e2e" % (1_700_000_000 + i, i))
        return user, names

    def _check(self, messages, tops=(0, 1, 2, 5, 1_000_000)):
        user, names = self._deliver_all(messages)
        s = self.login(user)
        listing = self.list_map(s)
        self.assertEqual(sorted(listing), list(range(1, len(names) + 1)))
        total = 0
        for i, name in enumerate(names):
            raw = messages[name]
            number = i + 1
            expected = wire_message(raw)
            total += len(expected)
            self.assertEqual(listing[number], len(expected), name)
            self.assertEqual(s.command(b"LIST %d" % number), b"+OK %d %d\r\n" % (number, len(expected)))
            body = self.retr(s, number)
            self.assertEqual(body, stuffed(wire_lines(raw)), name)
            for n in tops:
                status = s.command(b"TOP %d %d" % (number, n))
                self.assertTrue(status.startswith(b"+OK"), (name, n, status))
                self.assertEqual(s.body(), stuffed(top_lines(raw, n)), (name, n))
            self.ok(s, b"NOOP")
        self.assertEqual(s.command(b"STAT"), b"+OK %d %d\r\n" % (len(names), total))
        self.ok(s, b"QUIT")
        self.assertTrue(s.closed())

    def test_tricky_messages(self):
        self._check(TRICKY)

    def test_tricky_messages_over_tls(self):
        user, names = self._deliver_all(TRICKY)
        s = self.login(user, tls=True)
        for i, name in enumerate(names):
            self.assertEqual(self.retr(s, i + 1), stuffed(wire_lines(TRICKY[name])), name)
            self.assertEqual(self.multi(s, b"TOP %d 1" % (i + 1))[1], stuffed(top_lines(TRICKY[name], 1)))

    def test_read_chunk_boundaries(self):
        self._check(boundary_messages(), tops=(0, 3))

    def test_sizes_match_after_a_second_login(self):
        # sizes may come from a cache the second time: they must not change
        messages = dict(list(TRICKY.items())[:10])
        user, names = self._deliver_all(messages)
        s = self.login(user)
        first = self.list_map(s)
        self.ok(s, b"QUIT")
        self.assertTrue(s.closed())
        second = self.list_map(self.login(user))
        self.assertEqual(first, second)
        self.assertEqual(first, {i + 1: len(wire_message(messages[n])) for i, n in enumerate(names)})

    def test_pipelined_retr_over_tls_across_record_and_batch_sizes(self):
        # The server batches the replies of pipelined commands into large TLS writes: sizes around
        # one TLS record (16 KiB), the batch flush size (128 KiB) and the server's read chunk
        # (256 KiB) must all arrive byte-exact, in order, also while the client reads slowly.
        sizes = (0, 1, 16383, 16384, 16385, 131071, 262143, 262144, 262145, 600_000, 3_000_000)
        messages = {}
        for i, size in enumerate(sizes):
            line = b".%06d dotted line of message %d\n" % (i, i)
            messages["s%02d" % i] = (line * (size // len(line) + 1))[:size]
        user, names = self._deliver_all(messages)
        s = self.login(user, tls=True)
        s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        # The server prefers AES-128-GCM (Mozilla's order) over OpenSSL's default AES-256-GCM.
        self.assertEqual(s.sock.cipher()[0], "TLS_AES_128_GCM_SHA256")
        s.send(b"".join(b"RETR %d\r\n" % (i + 1) for i in range(len(names))) + b"NOOP\r\n")
        # ~4.6 MB of replies owed: the server fills its socket, and the TLS records it still owes
        # wait in the server, before this client reads anything.
        wait_for_full_server_socket(self, s, tls=True)
        for i, name in enumerate(names):
            status = s.line()
            self.assertTrue(status.startswith(b"+OK"), (name, status))
            self.assertEqual(s.body(), stuffed(wire_lines(messages[name])), name)
        self.assertEqual(s.line(), b"+OK\r\n")
