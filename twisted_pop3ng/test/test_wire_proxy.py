"""The PROXY protocol header parser: versions 1 and 2, every split, and refusals."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from twisted_pop3ng.wire import WireError
from twisted_pop3ng.wire.proxy import V2_SIGNATURE, ProxyHeader, parse_header


def v2(command: int, family: int, payload: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(payload)) + payload


class ParseTests(unittest.TestCase):
    def test_version_1(self) -> None:
        data = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 110\r\nUSER x"
        self.assertEqual(parse_header(data), (ProxyHeader(("192.0.2.7", 40000), ("10.0.0.1", 110)),
                                              len(data) - 6))
        self.assertEqual(parse_header(b"PROXY TCP6 2001:db8::1 ::1 1 995\r\n")[0],
                         ProxyHeader(("2001:db8::1", 1), ("::1", 995)))
        self.assertEqual(parse_header(b"PROXY UNKNOWN\r\n"), (ProxyHeader(None, None), 15))

    def test_version_2(self) -> None:
        ipv4 = socket.inet_aton("192.0.2.7") + socket.inet_aton("10.0.0.1") + struct.pack("!HH", 5, 110)
        tlv = b"\x02\x00\x03abc"  # an authority TLV after the addresses is skipped
        data = v2(1, 0x11, ipv4 + tlv)
        self.assertEqual(parse_header(data + b"rest"), (ProxyHeader(("192.0.2.7", 5), ("10.0.0.1", 110)),
                                                        len(data)))
        mapped = socket.inet_pton(socket.AF_INET6, "::ffff:192.0.2.9")
        data = v2(1, 0x21, mapped + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!HH", 7, 110))
        self.assertEqual(parse_header(data)[0].source, ("192.0.2.9", 7))
        # LOCAL (the balancer's health check): the socket's own addresses.
        self.assertEqual(parse_header(v2(0, 0x00, b"")), (ProxyHeader(None, None), 16))

    def test_every_split_needs_more_until_complete(self) -> None:
        for data in (b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 110\r\n",
                     v2(1, 0x11, b"\x01" * 12)):
            for cut in range(len(data)):
                self.assertEqual(parse_header(data[:cut]), (None, 0), cut)
            self.assertEqual(parse_header(data)[1], len(data))

    def test_refusals(self) -> None:
        for data in (b"USER alice\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                     b"PROXY TCP4 ::1 ::1 1 2\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
                     b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", b"PROXY " + b"x" * 120,
                     v2(2, 0x11, b""), V2_SIGNATURE + b"\x10\x11\x00\x00",
                     V2_SIGNATURE + b"\x21\x11\xff\xff",
                     # an IPv6 zone id is free text that went into the log's rip= as it came
                     b"PROXY TCP6 fe80::1%a\tb ::1 40000 110\r\n", b"PROXY TCP6 ::1 fe80::1%x=y 1 2\r\n"):
            self.assertRaises(WireError, parse_header, data)

    @settings(deadline=None, max_examples=500)
    @given(st.binary(max_size=120))
    def test_arbitrary_bytes_are_a_header_more_or_a_wire_error(self, data: bytes) -> None:
        try:
            header, used = parse_header(data)
        except WireError:
            return
        self.assertTrue((header is None and used == 0) or 0 < used <= len(data))
