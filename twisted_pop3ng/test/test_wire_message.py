"""``wire.message`` at the edges the property tests do not reach: lines longer than the decoder's
64 KiB flush point, TOP counts beyond CPython's small-integer cache, the decoder after its terminator,
and the ``SPEEDUPS`` flag. Each test was written to kill a mutant that survived the other wire tests
(cosmic-ray, see ``docs/`` "Mutation testing"); expected bytes come from the RFC 1939 oracle.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import List, Optional, Sequence, Tuple

from twisted.trial import unittest

from twisted_pop3ng import wire
from twisted_pop3ng.testing.rfc1939 import stuffed, top_lines, wire_lines, wire_message
from twisted_pop3ng.wire import message

#: The documented bound (``MultiLineDecoder``): a partial line is passed on before it reaches 64 KiB.
#: Written out here, not read from the class, so that a changed constant fails the test.
PARTIAL_LINE_BOUND = 65536


def decode_split(stream: bytes, cuts: Sequence[int]) -> Tuple[bytes, Optional[bytes]]:
    """Feed ``stream`` to a fresh decoder cut at the given offsets; (payload, leftover)."""
    decoder = wire.MultiLineDecoder()
    payload: List[bytes] = []
    leftover: Optional[bytes] = None
    previous = 0
    for point in list(cuts) + [len(stream)]:
        piece = stream[previous:point]
        previous = point
        if leftover is not None:
            leftover += piece
            continue
        got, leftover = decoder.feed(piece)
        payload.append(got)
    return b"".join(payload), leftover


class LongLineDecoderTests(unittest.TestCase):
    """A line longer than the flush point is passed on in pieces, and stays the same line."""

    LONG = b"x" * 69999  # beyond the flush point, so the decoder passes part of it on early

    def test_dots_inside_a_long_line_survive_any_split(self) -> None:
        # The dot that follows the flushed part of a long line is data, not a line start: a decoder
        # that forgets it is inside a line strips it (or ends the body early at ".\r\n").
        raw = b"Subject: long\n\n" + self.LONG + b".y\n" + self.LONG + b".\n.\nend\n"
        stream = stuffed(wire_lines(raw)) + b"+OK next\r\n"
        first_dot = stream.index(self.LONG + b".") + len(self.LONG)
        second_dot = stream.index(self.LONG + b".", first_dot) + len(self.LONG)
        for dot in (first_dot, second_dot):
            for cuts in ([dot], [dot + 1], [dot, dot + 1], [dot + 1, dot + 2], [dot - 1, dot, dot + 1],
                         [dot - 70000, dot + 1], [dot - 65536, dot, dot + 1, dot + 2]):
                payload, leftover = decode_split(stream, cuts)
                self.assertEqual(payload, wire_message(raw), cuts)
                self.assertEqual(leftover, b"+OK next\r\n", cuts)

    def test_a_long_line_is_passed_on_before_64_kib(self) -> None:
        decoder = wire.MultiLineDecoder()
        fed = returned = 0
        for _ in range(50):  # 200 KiB of one line, in 4 KiB reads
            payload, leftover = decoder.feed(b"y" * 4096)
            fed += 4096
            returned += len(payload)
            self.assertIsNone(leftover)
            self.assertLess(fed - returned, PARTIAL_LINE_BOUND)
        payload, leftover = decoder.feed(b"\r\n.\r\n")
        self.assertEqual(returned + len(payload), fed + 2)
        self.assertEqual(leftover, b"")

    def test_nothing_more_is_decoded_after_the_terminator(self) -> None:
        decoder = wire.MultiLineDecoder()
        self.assertEqual(decoder.feed(b"a\r\n.\r\n+OK"), (b"a\r\n", b"+OK"))
        self.assertTrue(decoder.done)
        # What the server sends next is handed back untouched, never taken as more body.
        self.assertEqual(decoder.feed(b" 2 octets\r\n..x\r\n.\r\n"), (b"", b" 2 octets\r\n..x\r\n.\r\n"))


class TopCountTests(unittest.TestCase):
    """TOP's line count is compared by value: counts above 256 (no longer CPython's cached small
    integers) stop after as many body lines as ones below it."""

    RAW = b"Subject: many lines\nFrom: a@example.org\n\n" + b"".join(
        b"line %d\n" % i if i % 7 else b".dot %d\n" % i for i in range(1200))

    def test_top_sends_exactly_n_body_lines(self) -> None:
        for n in (0, 1, 255, 256, 257, 300, 1000, 1199, 1200, 5000):
            expected = stuffed(top_lines(self.RAW, n))
            self.assertEqual(wire.encode_message(self.RAW, n), expected, n)
            encoder = wire.MessageEncoder(body_lines=n)
            chunked = [encoder.feed(self.RAW[i:i + 1000]) for i in range(0, len(self.RAW), 1000)]
            self.assertEqual(b"".join(chunked) + encoder.finish(), expected, n)


class EncodeAllTests(unittest.TestCase):
    def test_the_encoder_is_finished_after_encode_all(self) -> None:
        # Like feed() + finish(), by either path (one pass without TOP, the chunked one with it):
        # whatever is fed afterwards is not sent as part of the message.
        for raw in (b"", b"a\n", b"Subject: x\n\n.body\n", b"no newline"):
            for body_lines in (None, 0, 5):
                encoder = wire.MessageEncoder(body_lines=body_lines)
                pieces = encoder.encode_all(raw)
                self.assertEqual(b"".join(pieces), stuffed(wire_lines(raw) if body_lines is None
                                                           else top_lines(raw, body_lines)))
                self.assertTrue(encoder.done, (raw, body_lines))
                self.assertEqual(encoder.feed(b"more\n"), b"", (raw, body_lines))


class TopSplitTests(unittest.TestCase):
    """TOP finds the end of the header by whole lines, wherever the reads cut them."""

    def test_every_two_piece_split(self) -> None:
        # Header lines of 1 to 10 octets: a cut leaves a partial line of any short length, which
        # must not make the line that completes it look like the empty separator line.
        header = b"".join(b"H%d: %s\n" % (i, b"v" * i) for i in range(8)) + b"X:\n"
        for raw in (header + b"\nline 1\n.line 2\nline 3\n",
                    (header + b"\nline 1\n.line 2\nline 3\n").replace(b"\n", b"\r\n")):
            for n in (0, 1, 2, 5):
                expected = stuffed(top_lines(raw, n))
                for cut in range(len(raw) + 1):
                    encoder = wire.MessageEncoder(body_lines=n)
                    out = encoder.feed(raw[:cut]) + encoder.feed(raw[cut:]) + encoder.finish()
                    self.assertEqual(out, expected, (n, cut, raw[:cut]))


class SpeedupsFlagTests(unittest.TestCase):
    def test_flag_tells_whether_the_c_functions_are_in_use(self) -> None:
        # Tests and the maildir measure choose by it; where C is not built it must say so.
        in_use = message.stuff_dots is not message.py_stuff_dots
        self.assertIs(message.SPEEDUPS, in_use)
        self.assertIs(wire.SPEEDUPS, in_use)
        try:
            from twisted_pop3ng.wire import _speedups  # noqa: F401
        except ImportError:
            self.assertFalse(in_use)
        else:
            self.assertIs(in_use, not message.PURE_PYTHON_ASKED)

    def test_the_environment_keeps_the_c_module_out(self) -> None:
        # The switch the mutation recipe and CI's fallback leg use: with POP3NG_PURE_PYTHON=1 the
        # pure-Python functions serve even where the .so is built; "0" means "use it where built".
        probe = ("from twisted_pop3ng.wire import message as m; "
                 "print(m.SPEEDUPS, m.stuff_dots is m.py_stuff_dots, m.encode_body is m.py_encode_body,"
                 " m.wire_size_of is m.py_wire_size_of)")
        for value, expected in (("1", "False True True True"), ("0", None)):
            env = dict(os.environ, POP3NG_PURE_PYTHON=value)
            out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                                 text=True, check=True).stdout.split()
            if expected is None:  # as the build is: C where it imports
                built = importlib.util.find_spec("twisted_pop3ng.wire._speedups") is not None
                expected = "%s %s %s %s" % ((built,) + (not built,) * 3)
            self.assertEqual(out, expected.split(), value)
