"""Property-based tests of the wire codec (hypothesis): any message, any chunking.

The expected values come from the line-by-line RFC 1939 oracle (:mod:`twisted_pop3ng.testing.rfc1939`),
never from the codec under test, so a bug shared by encoder and decoder cannot cancel out.
"""

from __future__ import annotations

import os
from typing import List

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from twisted_pop3ng import wire
from twisted_pop3ng.testing.rfc1939 import stuffed, top_lines, wire_lines, wire_message
from twisted_pop3ng.wire import message

# (POP3NG_HYPOTHESIS_EXAMPLES: fewer examples for mutation-testing runs, which run this thousands
# of times.)
PROPERTIES = settings(deadline=None, max_examples=int(os.environ.get("POP3NG_HYPOTHESIS_EXAMPLES", "300")))

# Messages built from the bytes that matter to the codec (CR, LF, ".") plus ordinary ones, so that
# dots at line starts, CRLF split across chunks and bare CRs are common, not rare.
_INTERESTING = st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"\n.", b"a", b"From ", b"\x00",
                                b"\xff", b" ", b"\t", b"x" * 70])
MESSAGES = st.lists(st.one_of(_INTERESTING, st.binary(max_size=8)), max_size=60).map(b"".join)


oracle_lines, oracle_wire, oracle_body, oracle_top = wire_lines, wire_message, stuffed, top_lines


def split_at(data: bytes, cuts: List[int]) -> List[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, sorted)."""
    if not data:
        return [data]
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, previous = [], 0
    for point in points + [len(data)]:
        pieces.append(data[previous:point])
        previous = point
    return pieces


CUTS = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12)


class EncoderProperties(unittest.TestCase):
    @PROPERTIES
    @given(MESSAGES, CUTS)
    def test_any_chunking_encodes_to_the_rfc_form(self, raw: bytes, cuts: List[int]) -> None:
        encoder = wire.MessageEncoder()
        out = b"".join(encoder.feed(piece) for piece in split_at(raw, cuts)) + encoder.finish()
        self.assertEqual(out, oracle_body(oracle_lines(raw)))

    @PROPERTIES
    @given(MESSAGES)
    def test_one_pass_encoders_agree_with_the_rfc_form(self, raw: bytes) -> None:
        expected = oracle_body(oracle_lines(raw))
        self.assertEqual(wire.encode_whole(raw), expected)
        self.assertEqual(b"".join(message.encode_whole_pieces(raw)), expected)
        self.assertEqual(wire.encode_message(raw), expected)

    @PROPERTIES
    @given(MESSAGES)
    def test_wire_size_is_what_the_client_receives(self, raw: bytes) -> None:
        self.assertEqual(wire.wire_size_of(raw), len(oracle_wire(raw)))
        self.assertEqual(message.py_wire_size_of(raw), len(oracle_wire(raw)))

    @PROPERTIES
    @given(MESSAGES, st.integers(min_value=0, max_value=8), CUTS)
    def test_top_sends_the_header_and_n_body_lines(self, raw: bytes, n: int, cuts: List[int]) -> None:
        encoder = wire.MessageEncoder(body_lines=n)
        out = b"".join(encoder.feed(piece) for piece in split_at(raw, cuts)) + encoder.finish()
        self.assertEqual(out, oracle_body(oracle_top(raw, n)))


class DecoderProperties(unittest.TestCase):
    @PROPERTIES
    @given(MESSAGES, CUTS, st.binary(max_size=20))
    def test_any_chunking_decodes_to_the_message_and_keeps_what_follows(
            self, raw: bytes, cuts: List[int], after: bytes) -> None:
        stream = oracle_body(oracle_lines(raw)) + after
        decoder = wire.MultiLineDecoder()
        payload, leftover = [], None
        for piece in split_at(stream, cuts):
            if leftover is not None:
                leftover += piece
                continue
            got, leftover = decoder.feed(piece)
            payload.append(got)
        self.assertEqual(b"".join(payload), oracle_wire(raw))
        self.assertEqual(leftover, after)


class TwinProperties(unittest.TestCase):
    """The C speedups and the pure-Python functions give the same bytes (where C is built)."""

    def setUp(self) -> None:
        if not message.SPEEDUPS:
            if message.PURE_PYTHON_ASKED:  # chosen: CI's other legs compare the twins
                raise unittest.SkipTest("POP3NG_PURE_PYTHON=1: the C module is kept out")
            # test_speedups fails loudly when the extension should have been built; here the
            # twins are the same function and the comparison below would prove nothing.
            self.fail("the C speedups are not built (test_speedups explains why)")

    @PROPERTIES
    @given(MESSAGES)
    def test_c_and_python_agree(self, raw: bytes) -> None:
        self.assertEqual(message.stuff_dots(raw), message.py_stuff_dots(raw))
        self.assertEqual(message.encode_body(raw), message.py_encode_body(raw))
        self.assertEqual(message.wire_size_of(raw), message.py_wire_size_of(raw))


class ParserProperties(unittest.TestCase):
    """Whatever a client sends, the parsers answer with a value or a WireError (an -ERR), never
    another exception (a traceback in the log and a dropped session)."""

    @PROPERTIES
    @given(st.binary(max_size=300))
    def test_parse_command_never_raises_anything_else(self, line: bytes) -> None:
        try:
            command = wire.parse_command(line)
        except wire.WireError:
            return
        self.assertEqual(command.verb, command.verb.upper())
        self.assertTrue(command.verb.isascii())

    @PROPERTIES
    @given(st.binary(max_size=30))
    def test_number_parsers_never_raise_anything_else(self, word: bytes) -> None:
        for parse in (wire.parse_message_number, wire.parse_count):
            try:
                value = parse(word)
            except wire.WireError:
                continue
            self.assertGreaterEqual(value, 0)

    @PROPERTIES
    @given(st.binary(max_size=200))
    def test_parse_status_never_raises_anything_else(self, line: bytes) -> None:
        try:
            wire.parse_status(line)
        except wire.WireError:
            pass
