"""A DATA body to the stored form and back out through POP3, byte for byte, for any chunking;
the trace headers; what each store failure means (reply and exit status)."""

from __future__ import annotations

import errno
from typing import List, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from twisted_pop3ng.delivery import outcome
from twisted_pop3ng.delivery.body import DataDecoder, encode_data
from twisted_pop3ng.delivery.recipients import AddressError, candidates, parse_path
from twisted_pop3ng.delivery.trace import Envelope, trace_headers
from twisted_pop3ng.errors import PermanentFailure, POP3Error, TemporaryFailure
from twisted_pop3ng.wire import MessageEncoder

#: A line of a message as SMTP carries it: anything but LF (a CR anywhere, at its end too).
LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")) | st.sampled_from(
    [b"", b".", b"..", b".x", b"x\r", b"\r", b"\r\r", b"From me"])


def data_for(lines: List[bytes]) -> bytes:
    """The DATA body for ``lines``, written from RFC 5321 §4.5.2 (not with the code under test)."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def decode(data: bytes, cuts: List[int]) -> "tuple[bytes, Optional[bytes]]":
    decoder = DataDecoder()
    stored, leftover, start = b"", None, 0
    for cut in sorted(set(cuts)) + [len(data)]:
        piece, leftover = decoder.feed(data[start:cut])
        stored += piece
        start = cut
        if leftover is not None:
            leftover += data[cut:]
            break
    return stored, leftover


def served(stored: bytes) -> bytes:
    """What a POP3 client gets for a stored message (CRLF lines, not stuffed)."""
    encoder = MessageEncoder(stuff=False)
    return encoder.feed(stored) + encoder.finish()


class DataDecoderTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(LINE, max_size=12), st.lists(st.integers(0, 600), max_size=6))
    def test_lmtp_in_pop3_out_is_byte_exact(self, lines: List[bytes], cuts: List[int]) -> None:
        stored, leftover = decode(data_for(lines) + b"QUIT\r\n", cuts)
        self.assertEqual(leftover, b"QUIT\r\n")
        self.assertEqual(served(stored), b"".join(line + b"\r\n" for line in lines))

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b".\r\n", b"\r\n.\r\n",
                                     b"\n.\r\n", b"\r\r"]), max_size=30).map(b"".join),
           st.lists(st.integers(0, 120), max_size=8))
    def test_any_chunking_gives_the_same_result(self, data: bytes, cuts: List[int]) -> None:
        # Bare LFs and CRs included, which the byte-exact test above leaves out: where the message
        # ends, and what is stored, must not depend on how TCP split the bytes.
        self.assertEqual(decode(data + b"\r\n.\r\nQUIT\r\n", cuts),
                         decode(data + b"\r\n.\r\nQUIT\r\n", []))

    def test_a_bare_lf_then_a_dot_line_is_not_the_end(self) -> None:
        """SMTP smuggling: with the bare LF last in one read and ".CRLF" first in the next, the
        message ended there and what followed ran as commands of a second transaction."""
        head = b"Subject: t\r\n\r\n" + b"A" * 65521 + b"\n"
        tail = b".\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<bob>\r\n.\r\nNOOP\r\n"
        whole = decode(head + tail, [])
        self.assertEqual(decode(head + tail, [len(head)]), whole)
        self.assertEqual(whole[1], b"NOOP\r\n")
        self.assertIn(b"MAIL FROM:<evil@x>", whole[0])

    def test_runs_of_crs_across_reads(self) -> None:
        data = b"a" + b"\r" * 5000 + b"\nb\r\r\r\n.\r\n"
        whole = decode(data, [])
        self.assertEqual(whole, (b"a" + b"\r" * 5000 + b"\nb\r\r\r\n", b""))
        for cuts in ([1, 2, 3], list(range(100, 5000, 700)), [5000, 5001, 5002], [5005, 5006]):
            self.assertEqual(decode(data, cuts), whole, cuts)

    def test_stored_with_lf_line_endings(self) -> None:
        stored, leftover = decode(b"Subject: a\r\n\r\n..x\r\n.\r\n", [])
        self.assertEqual((stored, leftover), (b"Subject: a\n\n.x\n", b""))

    def test_a_line_ending_in_cr_keeps_its_crlf(self) -> None:
        self.assertEqual(decode(b"a\r\r\nb\r\n.\r\n", [2])[0], b"a\r\r\nb\n")

    def test_empty_message(self) -> None:
        self.assertEqual(decode(b".\r\nNOOP\r\n", [1]), (b"", b"NOOP\r\n"))

    def test_a_long_line_is_passed_on_in_pieces(self) -> None:
        decoder = DataDecoder()
        out = b""
        for _ in range(40):
            piece, leftover = decoder.feed(b"x" * 10_000)
            out += piece
            self.assertIsNone(leftover)
        self.assertGreater(len(out), 300_000)  # not held back until the line ends

    def test_encode_data_is_the_inverse(self) -> None:
        for message in (b"a\nb\n", b"a\r\nb", b".x\n..\n", b"", b"a\r\r\n"):
            stored, leftover = decode(encode_data(message), [])
            self.assertEqual((served(stored), leftover), (served(message), b""))


class AddressTests(unittest.TestCase):
    def test_paths(self) -> None:
        self.assertEqual(parse_path("<a@b> SIZE=1"), "a@b")
        self.assertEqual(parse_path("a@b"), "a@b")
        self.assertEqual(parse_path('<"a b"@c>'), '"a b"@c')
        self.assertEqual(parse_path("<>", null_allowed=True), "")
        for bad in ("<>", "<a b@c>", "<a@b", "<\x7f@b>"):
            self.assertRaises(AddressError, parse_path, bad)

    def test_candidates(self) -> None:
        self.assertEqual(candidates("alice@example.org"), ["alice@example.org", "alice"])
        self.assertEqual(candidates("alice"), ["alice"])
        self.assertEqual(candidates('"al ice"@x'), ['"al ice"@x', "al ice"])


class TraceTests(unittest.TestCase):
    def test_headers(self) -> None:
        envelope = Envelope("s@x", "mta.example", "10.0.0.1", "mx.example", "abc")
        self.assertEqual(trace_headers(envelope, "a@b", now=0).split(b"\n")[:5], [
            b"Return-Path: <s@x>", b"Delivered-To: a@b", b"Received: from mta.example ([10.0.0.1])",
            b"\tby mx.example with LMTP id abc", b"\tfor <a@b>; " + trace_headers(
                envelope, "a@b", now=0).split(b"; ", 1)[1].rstrip(b"\n")])

    def test_null_sender(self) -> None:
        self.assertTrue(trace_headers(Envelope(""), "a").startswith(b"Return-Path: <>\n"))

    def test_a_long_lhlo_name_keeps_lines_within_998(self) -> None:
        envelope = Envelope("s@x", "h" * 994, "2001:db8::1", "mx.example", "abc")
        for line in trace_headers(envelope, "alice").split(b"\n"):
            self.assertLessEqual(len(line), 998)


class OutcomeTests(unittest.TestCase):
    def test_classification(self) -> None:
        cases = [
            (OSError(errno.ENOSPC, "No space left on device"), 452, "4.3.1", outcome.EX_TEMPFAIL),
            (OSError(errno.EDQUOT, "Disk quota exceeded"), 452, "4.2.2", outcome.EX_TEMPFAIL),
            (OSError(errno.EACCES, "Permission denied"), 451, "4.3.0", outcome.EX_NOPERM),
            (OSError(errno.EIO, "Input/output error"), 451, "4.3.0", outcome.EX_TEMPFAIL),
            (TemporaryFailure("db down"), 451, "4.3.0", outcome.EX_TEMPFAIL),
            (POP3Error("Invalid user name", "SYS/PERM"), 550, "5.2.0", outcome.EX_CANTCREAT),
            (PermanentFailure("bad path"), 550, "5.2.0", outcome.EX_CANTCREAT),
            (KeyError("bug"), 451, "4.3.0", outcome.EX_TEMPFAIL),
        ]
        for error, code, status, exit_status in cases:
            result = outcome.classify(error)
            reply = result.lmtp_reply("a@b")
            self.assertEqual(reply.split(b" ")[:3], [str(code).encode(), status.encode(), b"<a@b>"], error)
            self.assertEqual(result.exit_status, exit_status, error)
        self.assertFalse(outcome.classify(KeyError("bug")).expected)
        self.assertTrue(outcome.classify(OSError(errno.ENOSPC, "x")).expected)

    def test_reply_fits_a_line(self) -> None:
        reply = outcome.classify(TemporaryFailure("x" * 2000)).lmtp_reply("a@b")
        self.assertLessEqual(len(reply), 512)
        self.assertTrue(reply.endswith(b"\r\n"))
