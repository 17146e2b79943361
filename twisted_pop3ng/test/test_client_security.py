"""The client's security rules with exact bytes (StringTransport): which methods may go out without
TLS (findings F13, F18), nothing queued behind STLS written in plaintext (F15), and every value a
server sends checked and bounded (F16). The same findings over real sockets against scripted
hostile servers: :mod:`twisted_pop3ng.test.test_client_hostile`."""

from __future__ import annotations

import base64

from twisted.trial import unittest

from twisted_pop3ng import client as pop3
from twisted_pop3ng.auth import sasl_client
from twisted_pop3ng.test.test_client import TLSStringTransport, make_client

TOKEN = "ya29.secret-bearer-token"


class BearerTokenTests(unittest.TestCase):
    """F13: OAUTHBEARER and XOAUTH2 send a replayable token: TLS only, like a password."""

    def test_token_mechanisms_are_not_chosen_without_tls(self) -> None:
        offered = ["XOAUTH2", "OAUTHBEARER", "SCRAM-SHA-256"]
        self.assertEqual(sasl_client.choose(offered, secure=False, allow_plaintext=False,
                                            token=True, channel_binding=False), [])
        self.assertEqual(sasl_client.choose(offered, secure=True, allow_plaintext=False,
                                            token=True, channel_binding=False),
                         ["OAUTHBEARER", "XOAUTH2"])
        self.assertTrue(sasl_client.XOAuth2("u", "t").plaintext)
        self.assertTrue(sasl_client.OAuthBearer("u", "t").plaintext)

    def test_login_with_a_token_sends_nothing_without_tls(self) -> None:
        for mechanism in (None, "XOAUTH2", "OAUTHBEARER", "xoauth2"):
            client, transport, _ = make_client(caps={"SASL": ["XOAUTH2", "OAUTHBEARER"]})
            failure = self.failureResultOf(client.login("u", token=TOKEN, mechanism=mechanism),
                                           pop3.CapabilityError)
            self.assertIn("TLS", str(failure.value))
            self.assertEqual(transport.value(), b"", mechanism)

    def test_token_goes_over_tls_or_when_plaintext_is_allowed(self) -> None:
        client, transport, _ = make_client(caps={"SASL": ["XOAUTH2"]})
        client.tls = True
        client.login("u", token=TOKEN)
        self.assertTrue(transport.value().startswith(b"AUTH XOAUTH2 "))
        client, transport, _ = make_client(caps={"SASL": ["XOAUTH2"]})
        client.login("u", token=TOKEN, allow_plaintext=True)
        self.assertTrue(transport.value().startswith(b"AUTH XOAUTH2 "))


class WeakDigestTests(unittest.TestCase):
    """F18: CRAM-MD5 and APOP are crackable offline by a passive observer: not without TLS."""

    def test_cram_md5_is_not_chosen_without_tls(self) -> None:
        client, transport, _ = make_client(caps={"SASL": ["CRAM-MD5"], "USER": []})
        self.failureResultOf(client.login("tim", "pw"), pop3.CapabilityError)
        self.assertEqual(transport.value(), b"")
        client, transport, _ = make_client(caps={"SASL": ["CRAM-MD5", "SCRAM-SHA-256"]})
        client.login("tim", "pw")
        self.assertTrue(transport.value().startswith(b"AUTH SCRAM-SHA-256 "))

    def test_cram_md5_forced_without_tls_is_refused(self) -> None:
        client, transport, _ = make_client(caps={"SASL": ["CRAM-MD5"]})
        self.failureResultOf(client.login("tim", "pw", mechanism="CRAM-MD5"), pop3.CapabilityError)
        self.assertEqual(transport.value(), b"")

    def test_cram_md5_with_tls_or_plaintext_allowed(self) -> None:
        client, transport, _ = make_client(caps={"SASL": ["CRAM-MD5"]})
        client.login("tim", "pw", allow_plaintext=True)
        self.assertEqual(transport.value(), b"AUTH CRAM-MD5\r\n")

    def test_apop_without_tls_is_refused(self) -> None:
        client, transport, _ = make_client(caps={})
        self.failureResultOf(client.login("mrose", "tanstaaf", apop=True), pop3.CapabilityError)
        self.assertEqual(transport.value(), b"")
        client.tls = True
        client.login("mrose", "tanstaaf", apop=True)
        self.assertEqual(transport.value(), b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n")


class PlainFallbackTests(unittest.TestCase):
    """F18: the fallback from a refused SCRAM to PLAIN (which gives the server the password) is
    opt-in."""

    def test_no_fallback_by_default(self) -> None:
        client, transport, _ = make_client(caps={"SASL": ["SCRAM-SHA-256", "PLAIN"], "USER": []})
        client.tls = True
        d = client.login("bob", "pw")
        transport.clear()
        client.dataReceived(b"-ERR [AUTH] Authentication failed.\r\n")
        error = self.failureResultOf(d, pop3.AuthError).value
        self.assertEqual(transport.value(), b"")  # neither AUTH PLAIN nor USER/PASS
        self.assertEqual(error.text, "Authentication failed.")
        self.assertTrue(str(error).startswith("AUTH SCRAM-SHA-256: -ERR [AUTH] Authentication "
                                              "failed. (if the server holds only a password hash"))
        self.assertIn("--allow-plain-fallback", str(error))

    def test_fallback_when_asked(self) -> None:
        client, transport, _ = make_client(caps={"SASL": ["CRAM-MD5", "LOGIN"]})
        client.tls = True
        d = client.login("bob", "pw", allow_plain_fallback=True)
        self.assertEqual(transport.value(), b"AUTH CRAM-MD5\r\n")
        transport.clear()
        client.dataReceived(b"-ERR [AUTH] no\r\n")
        self.assertEqual(transport.value(), b"AUTH LOGIN\r\n")
        client.dataReceived(b"+ " + base64.b64encode(b"Username:") + b"\r\n")
        client.dataReceived(b"+ " + base64.b64encode(b"Password:") + b"\r\n")
        client.dataReceived(b"+OK\r\n+OK\r\n.\r\n")
        self.successResultOf(d)
        self.assertEqual(client.mechanism, "LOGIN")

    def test_user_pass_alone_is_not_a_fallback(self) -> None:
        client, transport, _ = make_client(caps={"USER": []})
        client.tls = True
        client.login("alice", "pw")
        self.assertEqual(transport.value(), b"USER alice\r\n")


class StlsQueueTests(unittest.TestCase):
    """F15: a command queued while STLS is in flight is written after ``startTLS``, or not at all."""

    def test_queued_command_waits_for_tls(self) -> None:
        client, transport, _ = make_client(caps={"STLS": [], "PIPELINING": []},
                                           transport_class=TLSStringTransport)
        tls = client.starttls(object())
        noop = client.noop()
        self.assertEqual(transport.value(), b"STLS\r\n")
        client.dataReceived(b"+OK Begin TLS\r\n")
        self.assertEqual(transport.before_tls, b"STLS\r\n")  # nothing else went out in the clear
        self.assertEqual(transport.value(), b"NOOP\r\n")  # then CAPA (no PIPELINING known yet)
        client.dataReceived(b"+OK\r\n")
        self.successResultOf(noop)
        self.assertEqual(transport.value(), b"NOOP\r\nCAPA\r\n")
        client.dataReceived(b"+OK\r\nUSER\r\n.\r\n")
        self.assertEqual(self.successResultOf(tls), {"USER": []})

    def test_queued_command_fails_when_stls_is_refused(self) -> None:
        client, transport, _ = make_client(caps={"STLS": []}, transport_class=TLSStringTransport)
        tls = client.starttls(object())
        user = client.send(b"USER alice")
        client.dataReceived(b"-ERR [SYS/TEMP] not now\r\n")
        self.failureResultOf(tls, pop3.ServerError)
        self.failureResultOf(user, pop3.TLSError)
        self.assertEqual(transport.value(), b"STLS\r\n")
        self.assertIsNone(transport.tls_options)
        # Commands sent after the failure are the caller's new decision: they go.
        client.noop()
        self.assertEqual(transport.value(), b"STLS\r\nNOOP\r\n")


class ServerValueTests(unittest.TestCase):
    """F16: listings, numbers and UIDLs from the server are checked and bounded."""

    def reply(self, call, data: bytes, caps=None):
        client, transport, _ = make_client(caps=caps if caps is not None else {})
        d = call(client)
        client.dataReceived(data)
        return d, transport

    def assert_refused(self, call, data: bytes, text: str):
        d, _ = self.reply(call, data)
        failure = self.failureResultOf(d, pop3.ProtocolError)
        self.assertIn(text, str(failure.value))
        self.assertTrue(str(failure.value).isprintable(), str(failure.value))
        return failure

    def test_uidl_must_follow_rfc_1939(self) -> None:
        uidl = pop3.POP3Client.uidl
        for bad in (b"a\x00b", b"a\x1b]0;pwn\x07", b"x" * 71, b"caf\xc3\xa9", b"tab\there"):
            self.assert_refused(uidl, b"+OK\r\n1 ok\r\n2 " + bad + b"\r\n.\r\n", "invalid UIDL")
        self.assert_refused(uidl, b"+OK\r\n1 ok\r\n2 \r\n.\r\n", "malformed UIDL")
        for bad in (b"a\x00b", b"tab\there", b""):
            self.assert_refused(lambda c: c.uidl(2), b"+OK 2 " + bad + b"\r\n", "UIDL")
        d, _ = self.reply(uidl, b"+OK\r\n1 ../../etc/passwd\r\n2  " + b"~" * 70 + b"\r\n.\r\n")
        self.assertEqual(self.successResultOf(d), {1: "../../etc/passwd", 2: "~" * 70})

    def test_sizes_and_numbers_are_plain_bounded_digits(self) -> None:
        listing = pop3.POP3Client.list
        for bad in (b"1 -5", b"1 +5", b"-1 5", b"1 \xd9\xa3", b"1 1_000", b"1 0x10", b"1", b"x 1"):
            self.assert_refused(listing, b"+OK\r\n" + bad + b"\r\n.\r\n", "malformed LIST")
        for bad in (b"0 5", b"1 " + b"9" * 20, b"99999999999 5"):
            self.assert_refused(listing, b"+OK\r\n" + bad + b"\r\n.\r\n", "implausible")
        self.assert_refused(pop3.POP3Client.stat, b"+OK 2 -1\r\n", "malformed STAT")
        self.assert_refused(pop3.POP3Client.stat, b"+OK \xc2\xb2 1\r\n", "malformed STAT")
        self.assert_refused(lambda c: c.list(1), b"+OK 1 " + b"9" * 15 + b"\r\n", "implausible")
        d, _ = self.reply(listing, b"+OK\r\n1 120 extra info\r\n2 0\r\n.\r\n")
        self.assertEqual(self.successResultOf(d), {1: 120, 2: 0})

    def test_a_reply_about_another_message(self) -> None:
        self.assert_refused(lambda c: c.uidl(2), b"+OK 3 abc\r\n", "UIDL 2 about message 3")
        self.assert_refused(lambda c: c.list(2), b"+OK 1 100\r\n", "LIST 2 about message 1")
        d, _ = self.reply(lambda c: c.list(2), b"+OK 2 100\r\n")
        self.assertEqual(self.successResultOf(d), 100)

    def test_a_message_number_listed_twice(self) -> None:
        self.assert_refused(pop3.POP3Client.uidl, b"+OK\r\n1 a\r\n1 b\r\n.\r\n", "listed twice")
        self.assert_refused(pop3.POP3Client.list, b"+OK\r\n2 1\r\n2 1\r\n.\r\n", "listed twice")

    def test_the_same_uidl_twice_is_passed_on(self) -> None:
        d, _ = self.reply(pop3.POP3Client.uidl, b"+OK\r\n1 same\r\n2 same\r\n.\r\n")
        self.assertEqual(self.successResultOf(d), {1: "same", 2: "same"})

    def test_a_long_listing_line_is_refused_as_it_arrives(self) -> None:
        for call in (pop3.POP3Client.uidl, pop3.POP3Client.list, pop3.POP3Client.capa):
            client, transport, _ = make_client(caps={})
            d = call(client)
            client.dataReceived(b"+OK\r\n1 ")
            for _ in range(30):
                client.dataReceived(b"x" * 3000)  # no line end yet: refused within ~64 KB
            failure = self.failureResultOf(d, pop3.ProtocolError)
            self.assertIn("line longer than", str(failure.value))
            self.assertTrue(transport.disconnecting)

    def test_an_endless_listing_is_refused(self) -> None:
        client, transport, _ = make_client(caps={})
        client.max_listing_octets = 100000
        d = client.uidl()
        client.dataReceived(b"+OK\r\n")
        number = 0
        while not d.called and number < 100000:
            client.dataReceived(b"".join(b"%d uid-%d\r\n" % (number + i, number + i)
                                         for i in range(1, 101)))
            number += 100
        failure = self.failureResultOf(d, pop3.ProtocolError)
        self.assertIn("listing longer than 100000 octets", str(failure.value))
        self.assertLess(number, 20000)
        self.assertTrue(transport.disconnecting)

    def test_err_text_is_printable(self) -> None:
        d, _ = self.reply(pop3.POP3Client.noop, b"-ERR \x1b]0;pwn\x07 gotcha\r\n")
        failure = self.failureResultOf(d, pop3.ServerError)
        self.assertEqual(failure.value.text, "\x1b]0;pwn\x07 gotcha")
        self.assertEqual(str(failure.value), "NOOP: -ERR \\x1b]0;pwn\\x07 gotcha")
