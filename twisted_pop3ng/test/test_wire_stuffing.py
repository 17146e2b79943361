"""``wire.stuff_dots`` (memchr probing, regex for dense text) equals the plain definition."""

from __future__ import annotations

import random

from twisted.trial import unittest

from twisted_pop3ng import wire


def reference(data: bytes) -> bytes:
    return data.replace(b"\n.", b"\n..")


class StuffDotsTests(unittest.TestCase):
    def test_random_inputs(self) -> None:
        rng = random.Random(1939)
        alphabets = [b"ab\n.", b"abcdefgh\n.", b"abcdefghijklmnopqrstuvwxyz0123456789+/\n",
                     b"x" * 40 + b"\n" + b"."]
        for _ in range(3000):
            alphabet = rng.choice(alphabets)
            size = rng.choice([0, 1, 2, 5, 100, 5000, 70000])
            data = bytes(rng.choice(alphabet) for _ in range(size))
            self.assertEqual(wire.stuff_dots(data), reference(data), data[:60])

    def test_edges(self) -> None:
        for data in [b"", b".", b"\n", b"\n.", b".\n.", b"\n.\n.\n..", b"a.b.c\n.d", b"\n" * 10 + b"." * 10,
                     b".." * 5000, (b"x" * 600 + b"\n.") * 300, (b"y" * 75 + b"\n") * 4000 + b"\n."]:
            self.assertEqual(wire.stuff_dots(data), reference(data))

    def test_attachment_like_and_prose_like(self) -> None:
        base64ish = b"".join((b"." if i % 50 == 7 else b"") + b"QUJD" * 19 + b"\n" for i in range(4000))
        prose = b"Hello. This is a test. Dots everywhere... Yes.\n.leading\n" * 2000
        for data in (base64ish, prose, base64ish + prose, prose + base64ish):
            self.assertEqual(wire.stuff_dots(data), reference(data))
            crlf = data.replace(b"\n", b"\r\n")
            expected = (b"." if crlf[:1] == b"." else b"") + reference(crlf) + b".\r\n"
            self.assertEqual(wire.encode_message(data), expected)


class EncodeWholeTests(unittest.TestCase):
    """``encode_whole`` (the one-shot RETR path) equals the chunked ``MessageEncoder``."""

    def test_equals_the_encoder_on_random_messages(self) -> None:
        rng = random.Random(5)
        alphabets = [b"ab\n.", b"a\r\n.", b"\r\n", b"xyz.\r", b"abcdefghij\n" + b"."]
        for _ in range(4000):
            alphabet = rng.choice(alphabets)
            data = bytes(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 2, 3, 7, 40, 900])))
            self.assertEqual(wire.encode_whole(data), wire.encode_message(data), data)
            pieces = wire.MessageEncoder().encode_all(data)
            self.assertEqual(b"".join(pieces), wire.encode_message(data), data)
            self.assertTrue(all(pieces), pieces)  # no empty piece to hand to sendmsg
            lines = rng.choice([0, 1, 3])
            self.assertEqual(b"".join(wire.MessageEncoder(body_lines=lines).encode_all(data)),
                             wire.encode_message(data, lines), data)

    def test_edges(self) -> None:
        cases = {b"": b".\r\n", b".": b"..\r\n.\r\n", b"\r": b"\r\n.\r\n", b"a\r\r": b"a\r\r\n.\r\n",
                 b"a\n\r": b"a\r\n\r\n.\r\n", b".a\n.b": b"..a\r\n..b\r\n.\r\n",
                 b"x\r\n.\r\n": b"x\r\n..\r\n.\r\n"}
        for data, expected in cases.items():
            self.assertEqual(wire.encode_whole(data), expected, data)
            self.assertEqual(wire.encode_message(data), expected, data)
