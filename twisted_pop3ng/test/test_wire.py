"""The sans-I/O codec: every reader is fed the whole input, then byte by byte, then in odd splits."""

from __future__ import annotations

import random

from twisted.trial import unittest

from twisted_pop3ng import wire


def encode_in_pieces(data: bytes, sizes, body_lines=None) -> bytes:
    encoder = wire.MessageEncoder(body_lines)
    out, pos = [], 0
    for size in sizes:
        if pos >= len(data) or encoder.done:
            break
        out.append(encoder.feed(data[pos : pos + size]))
        pos += size
    if pos < len(data) and not encoder.done:
        out.append(encoder.feed(data[pos:]))
    out.append(encoder.finish())
    return b"".join(out)


def all_splits(data: bytes, body_lines=None):
    """The encoding of ``data`` fed whole, byte by byte, and in random pieces."""
    rng = random.Random(len(data))
    yield encode_in_pieces(data, [len(data) or 1], body_lines)
    yield encode_in_pieces(data, [1] * len(data), body_lines)
    for _ in range(5):
        yield encode_in_pieces(data, [rng.randint(1, 7) for _ in range(len(data))], body_lines)


def decode_in_pieces(data: bytes, size: int):
    decoder = wire.MultiLineDecoder()
    out, leftover = [], None
    for pos in range(0, len(data), size):
        payload, leftover = decoder.feed(data[pos : pos + size])
        out.append(payload)
        if leftover is not None:
            leftover += data[pos + size :]
            break
    return b"".join(out), leftover


class EncoderTests(unittest.TestCase):
    CASES = [
        (b"", b".\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb\n", b"a\r\nb\r\n.\r\n"),
        (b"no newline", b"no newline\r\n.\r\n"),
        (b".first\n", b"..first\r\n.\r\n"),
        (b".\n", b"..\r\n.\r\n"),
        (b"x\n.\ny\n", b"x\r\n..\r\ny\r\n.\r\n"),
        (b"x\r\n.\r\n", b"x\r\n..\r\n.\r\n"),
        (b"x\n..\n", b"x\r\n...\r\n.\r\n"),
        (b"a\rb\n", b"a\rb\r\n.\r\n"),
        (b"ends with cr\r", b"ends with cr\r\n.\r\n"),
        (b"x\n.", b"x\r\n..\r\n.\r\n"),
        (b"\n", b"\r\n.\r\n"),
    ]

    def test_cases_any_split(self) -> None:
        for stored, expected in self.CASES:
            for got in all_splits(stored):
                self.assertEqual(got, expected, stored)

    def test_never_doubles_cr(self) -> None:
        stored = b"line\r\n" * 1000
        for got in all_splits(stored):
            self.assertNotIn(b"\r\r\n", got)

    def test_wire_size_matches_unstuffed_output(self) -> None:
        rng = random.Random(7)
        alphabet = [b"a", b".", b"\n", b"\r\n", b"\r", b" ", b".."]
        for _ in range(200):
            stored = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            encoded = wire.encode_message(stored)
            body, leftover = decode_in_pieces(encoded + b"+OK next\r\n", 3)
            self.assertEqual(leftover, b"+OK next\r\n")
            self.assertEqual(wire.wire_size([stored]), len(body), stored)
            # Round trip: what the client stores is the stored message with CRLF line endings.
            normalised = wire.MessageEncoder(stuff=False)
            self.assertEqual(body, normalised.feed(stored) + normalised.finish())

    def test_top_limits_body_lines(self) -> None:
        message = b"Subject: x\nFrom: y\n\nline1\n.line2\nline3\n"
        for got in all_splits(message, 0):
            self.assertEqual(got, b"Subject: x\r\nFrom: y\r\n\r\n.\r\n")
        for got in all_splits(message, 2):
            self.assertEqual(got, b"Subject: x\r\nFrom: y\r\n\r\nline1\r\n..line2\r\n.\r\n")
        for got in all_splits(message, 10):
            self.assertEqual(got, wire.encode_message(message))

    def test_top_without_body_separator_sends_everything(self) -> None:
        message = b"Subject: x\nFrom: y"
        for got in all_splits(message, 0):
            self.assertEqual(got, b"Subject: x\r\nFrom: y\r\n.\r\n")

    def test_top_of_empty_headers(self) -> None:
        for got in all_splits(b"\nbody\nmore\n", 1):
            self.assertEqual(got, b"\r\nbody\r\n.\r\n")


class DecoderTests(unittest.TestCase):
    def test_unstuffs_and_finds_terminator_any_split(self) -> None:
        wire_bytes = b"..first\r\nx\r\n...\r\n..\r\n.\r\n+OK after\r\n"
        for size in (1, 2, 3, 5, 1000):
            body, leftover = decode_in_pieces(wire_bytes, size)
            self.assertEqual(body, b".first\r\nx\r\n..\r\n.\r\n")
            self.assertEqual(leftover, b"+OK after\r\n")

    def test_empty_body(self) -> None:
        for size in (1, 2, 100):
            self.assertEqual(decode_in_pieces(b".\r\n", size), (b"", b""))

    def test_long_line_is_passed_on_in_pieces(self) -> None:
        decoder = wire.MultiLineDecoder()
        line = b"x" * (wire.MultiLineDecoder.FLUSH_PARTIAL * 3)
        payload, leftover = decoder.feed(line)
        self.assertIsNone(leftover)
        self.assertGreater(len(payload), len(line) // 2)
        rest, leftover = decoder.feed(b"\r\n.\r\n")
        self.assertEqual(payload + rest, line + b"\r\n")
        self.assertEqual(leftover, b"")


class CommandTests(unittest.TestCase):
    def test_verbs_are_case_insensitive(self) -> None:
        self.assertEqual(wire.parse_command(b"rEtR 1"), wire.Command("RETR", b"1"))

    def test_password_keeps_spaces(self) -> None:
        self.assertEqual(wire.parse_command(b"PASS  a b  ").rest, b" a b  ")

    def test_bad_lines(self) -> None:
        for line in (b"", b"   ", b"\x00\x01", b"R\xc3\xa9TR 1", b"X" * 40):
            self.assertRaises(wire.WireError, wire.parse_command, line)

    def test_message_numbers(self) -> None:
        self.assertEqual(wire.parse_message_number(b"12"), 12)
        for word in (b"0", b"-1", b"+1", b"1.5", b"abc", b"\xd9\xa1", b"9" * 11, b""):
            self.assertRaises(wire.WireError, wire.parse_message_number, word)

    def test_the_longest_message_number(self) -> None:
        # (Killed mutants: the digit bound off by one.)
        self.assertEqual(wire.parse_message_number(b"9" * wire.MAX_NUMBER_DIGITS), 10 ** wire.MAX_NUMBER_DIGITS - 1)
        self.assertEqual(wire.parse_message_number(b"0" * (wire.MAX_NUMBER_DIGITS - 1) + b"7"), 7)

    def test_line_counts_of_any_length(self) -> None:
        self.assertEqual(wire.parse_count(b"0"), 0)
        self.assertEqual(wire.parse_count(b"9" * wire.MAX_NUMBER_DIGITS), 10 ** wire.MAX_NUMBER_DIGITS - 1)
        # A longer count means "everything" to clients: larger than any count of fewer digits.
        for digits in (wire.MAX_NUMBER_DIGITS + 1, 500):
            self.assertGreater(wire.parse_count(b"1" * digits), 10 ** wire.MAX_NUMBER_DIGITS - 1)
        for word in (b"-1", b"+1", b"1.5", b"", b"\xd9\xa1"):
            self.assertRaises(wire.WireError, wire.parse_count, word)

    def test_responses_are_bounded_and_single_line(self) -> None:
        line = wire.response(False, "x" * 2000 + "\r\ninjected", "SYS/TEMP")
        self.assertEqual(len(line), wire.MAX_RESPONSE_LINE)
        self.assertTrue(line.startswith(b"-ERR [SYS/TEMP] xxx"))
        self.assertEqual(line.count(b"\r\n"), 1)

    def test_parse_status(self) -> None:
        status = wire.parse_status(b"-ERR [IN-USE] locked")
        self.assertEqual((status.ok, status.code, status.text), (False, "IN-USE", "locked"))
        self.assertEqual(wire.parse_status(b"+OK").text, "")
        self.assertTrue(wire.parse_status(b"+ abc=").continuation)
        self.assertRaises(wire.WireError, wire.parse_status, b"HELLO")

    def test_uid_validity(self) -> None:
        self.assertTrue(wire.is_valid_uid("1700000000.M1P2.host"))
        for uid in ("", "a b", "x" * 71, "caf\u00e9"):
            self.assertFalse(wire.is_valid_uid(uid))
