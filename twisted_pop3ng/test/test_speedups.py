"""The C speedups (``twisted_pop3ng.wire._speedups``) equal their pure-Python twins in ``wire``, and the
pure-Python path, used where the module was not compiled, still passes the wire tests."""

from __future__ import annotations

import random

from twisted.trial import unittest

from twisted_pop3ng import wire

from twisted_pop3ng.wire import message

from . import test_wire_stuffing as stuffing

#: The pieces of text that matter to the three functions, in random mixes.
ALPHABETS = [b"ab\n.", b"a\r\n.", b"\r\n", b"xyz.\r", b"abcdefghij\n.", b".\r", b"\n",
             b"QUJDRA" * 5 + b"\n", b"Hello. Dots. \n"]


def random_messages(seed: int, count: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    for _ in range(count):
        alphabet = rng.choice(ALPHABETS)
        size = rng.choice([0, 1, 2, 3, 4, 7, 40, 900, 5000])
        yield bytes(rng.choice(alphabet) for _ in range(size))


class SpeedupsTests(unittest.TestCase):
    def setUp(self) -> None:
        if not wire.SPEEDUPS:
            if message.PURE_PYTHON_ASKED:
                raise unittest.SkipTest("POP3NG_PURE_PYTHON=1: the C module is kept out")
            self.fail("twisted_pop3ng.wire._speedups did not import: the install did not compile it "
                      "(set POP3NG_PURE_PYTHON=1 where that is intended)")

    def test_the_c_versions_are_in_use(self) -> None:
        from twisted_pop3ng.wire import _speedups

        self.assertIs(wire.encode_body, _speedups.encode_body)
        self.assertIs(wire.stuff_dots, _speedups.stuff_dots)
        self.assertIs(wire.wire_size_of, _speedups.wire_size_of)

    def test_equal_to_python_on_random_messages(self) -> None:
        for data in random_messages(1939, 2000):
            self.assertEqual(wire.encode_body(data), wire.py_encode_body(data), data[:80])
            crlf = data.replace(b"\n", b"\r\n")
            self.assertEqual(wire.stuff_dots(crlf), wire.py_stuff_dots(crlf), data[:80])
            self.assertEqual(wire.stuff_dots(data), wire.py_stuff_dots(data), data[:80])
            self.assertEqual(wire.wire_size_of(data), wire.py_wire_size_of(data), data[:80])
            self.assertEqual(wire.wire_size_of(data), wire.wire_size([data]), data[:80])

    def test_edges(self) -> None:
        cases = [b"", b".", b"\n", b"\r", b"\r\n", b"\n.", b".\n.", b"\r\r\n", b"\n\r\n", b"a\r",
                 b"..", b"\n..", b"\r\n.\r\n", b"x\n", b"x\r\ny", b"\r\r", b".\r"]
        for data in cases:
            self.assertEqual(wire.encode_body(data), wire.py_encode_body(data), data)
            self.assertEqual(wire.stuff_dots(data), wire.py_stuff_dots(data), data)
            self.assertEqual(wire.wire_size_of(data), wire.py_wire_size_of(data), data)

    def test_any_buffer_and_the_same_object_when_unchanged(self) -> None:
        data = b"no line feed, no dot at the start"
        self.assertIs(wire.encode_body(data), data)
        unstuffed = b"a\r\nb\r\n"
        self.assertIs(wire.stuff_dots(unstuffed), unstuffed)
        self.assertEqual(wire.encode_body(bytearray(b"a\n.b")), b"a\r\n..b")
        self.assertEqual(wire.stuff_dots(memoryview(b"a\n.b")), b"a\n..b")
        self.assertEqual(wire.wire_size_of(memoryview(b"a\nb")), 6)
        with self.assertRaises(TypeError):
            wire.encode_body("text")  # type: ignore[arg-type]


class _PurePython:
    """Runs the wire tests it is mixed into with the pure-Python versions (as where the C module
    is not built)."""

    def setUp(self) -> None:
        # The package's names, and the module's own, which its other functions call.
        for module in (wire, message):
            self.patch(module, "stuff_dots", wire.py_stuff_dots)  # type: ignore[attr-defined]
            self.patch(module, "encode_body", wire.py_encode_body)  # type: ignore[attr-defined]
            self.patch(module, "wire_size_of", wire.py_wire_size_of)  # type: ignore[attr-defined]


class PurePythonStuffDotsTests(_PurePython, stuffing.StuffDotsTests):
    pass


class PurePythonEncodeWholeTests(_PurePython, stuffing.EncodeWholeTests):
    pass
