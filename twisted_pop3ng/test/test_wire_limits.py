"""The wire limits at their boundaries, with the numbers the RFCs give (written out here, never read
from :mod:`twisted_pop3ng.wire.limits`, so that a changed constant fails), and the status-line parser
on the lines a server may send. Each test kills mutants that survived the other wire tests
(cosmic-ray, see ``docs/`` "Mutation testing")."""

from __future__ import annotations

import dataclasses

from twisted.trial import unittest

from twisted_pop3ng import wire
from twisted_pop3ng.testing import SessionDriver


class LineLimitTests(unittest.TestCase):
    def driver(self) -> SessionDriver:
        driver = SessionDriver(users={"alice": "secret"}, messages={"alice": [b"Subject: x\n\nbody\n"]})
        self.addCleanup(driver.close)
        return driver

    def test_command_line_of_255_octets_is_taken_256_refused(self) -> None:
        # RFC 2449 section 4: at most 255 octets, CRLF included.
        driver = self.driver()
        self.assertEqual(driver.send("USER " + "a" * 248), b"+OK Send your password.\r\n")  # 253 + CRLF
        self.assertEqual(driver.send("USER " + "a" * 249), b"-ERR Command line too long\r\n")

    def test_auth_initial_response_may_reach_16384_octets(self) -> None:
        # RFC 5034 section 4 lets an AUTH line exceed 255 octets; we allow 16384 (OAuth tokens).
        prefix = "AUTH PLAIN "
        driver = self.driver()
        taken = driver.send(prefix + "A" * (16384 - 2 - len(prefix)))
        self.assertTrue(taken.startswith(b"-ERR"), taken)
        self.assertNotIn(b"too long", taken)
        self.assertEqual(driver.send(prefix + "A" * (16385 - 2 - len(prefix))),
                         b"-ERR Command line too long\r\n")

    def test_a_line_beyond_17408_octets_closes_the_connection(self) -> None:
        # 16384 (the AUTH limit) + 1024, the CR counted: anything longer is abuse, not a mistake.
        driver = self.driver()
        self.assertEqual(driver.send("A" * 17407), b"-ERR Command line too long\r\n")
        self.assertTrue(driver.connected)
        self.assertEqual(driver.send("A" * 17408), b"-ERR Line too long, closing connection\r\n")
        self.assertFalse(driver.connected)


class ResponseLineTests(unittest.TestCase):
    def test_a_status_line_is_cut_at_512_octets(self) -> None:
        # RFC 2449 section 4: a response line is at most 512 octets, CRLF included.
        self.assertEqual(wire.response(True, "x" * 506), b"+OK " + b"x" * 506 + b"\r\n")  # 512
        self.assertEqual(wire.response(True, "x" * 507), b"+OK " + b"x" * 506 + b"\r\n")
        cut = (b"-ERR [SYS/TEMP] " + b"y" * 1000)[:510] + b"\r\n"
        self.assertEqual(wire.response(False, "y" * 1000, "SYS/TEMP"), cut)


class NumberTests(unittest.TestCase):
    def test_ten_digits_are_parsed(self) -> None:
        # A message number of ten digits is a number (then "no such message"), eleven are refused;
        # a TOP count of ten digits is taken as it is, a longer one is capped, never refused.
        self.assertEqual(wire.parse_message_number(b"9999999999"), 9999999999)
        self.assertRaises(wire.WireError, wire.parse_message_number, b"10000000000")
        self.assertEqual(wire.parse_count(b"9999999999"), 9999999999)
        self.assertGreaterEqual(wire.parse_count(b"99999999999999999999"), 9999999999)


class UidTests(unittest.TestCase):
    def test_a_uid_is_1_to_70_printable_octets(self) -> None:
        # RFC 1939 section 7: 1 to 70 characters in 0x21-0x7E.
        self.assertTrue(wire.is_valid_uid("!" + "a" * 68 + "~"))
        self.assertFalse(wire.is_valid_uid("a" * 71))
        self.assertFalse(wire.is_valid_uid(""))
        for bad in (" ", "\x7f", "\x20a", "a\x00"):
            self.assertFalse(wire.is_valid_uid(bad), repr(bad))


class StatusParserTests(unittest.TestCase):
    def test_continuations(self) -> None:
        # RFC 5034: "+" then a space and the base64 challenge; a bare "+" is an empty one.
        self.assertEqual(wire.parse_status(b"+"), wire.Status(True, "", None, continuation=True))
        self.assertEqual(wire.parse_status(b"+ PDE4OTY+"), wire.Status(True, "PDE4OTY+", None, continuation=True))
        self.assertEqual(wire.parse_status(b"+ PDE4OTY+").payload, b"PDE4OTY+")

    def test_malformed_lines_are_a_wire_error_quoting_the_line(self) -> None:
        long_line = b"+OKAY" + b"z" * 200
        for line in (b"", b"*", b"OK", b"+OKAY", b"-ERRor", long_line, b"\x00+OK", b"X" * 200):
            with self.assertRaises(wire.WireError) as caught:
                wire.parse_status(line)
            self.assertEqual(str(caught.exception), "Malformed status line: %r" % line[:80])

    def test_a_status_is_an_immutable_value(self) -> None:
        status = wire.parse_status(b"-ERR [IN-USE] locked")
        self.assertEqual(status, wire.Status(False, "locked", "IN-USE"))
        self.assertEqual(len({status, wire.parse_status(b"-ERR [IN-USE] locked")}), 1)
        with self.assertRaises(dataclasses.FrozenInstanceError):
            status.ok = True  # type: ignore[misc]
