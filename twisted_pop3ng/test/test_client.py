"""Client protocol: exact bytes with StringTransport, timeouts with task.Clock, client-meets-server
with iosim against our own server protocol."""

from __future__ import annotations

import base64
import hashlib
import hmac

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, error as ierror, task
from twisted.internet.interfaces import IConsumer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer

from twisted_pop3ng.auth import sasl_client
from twisted_pop3ng import client as pop3, server
from twisted_pop3ng.errors import MailboxInUse
from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.server.policy import SecurityConfig
from twisted_pop3ng.server.realm import MailboxRealm
from twisted_pop3ng.testing import rfc1939


class TLSStringTransport(StringTransport):
    """A StringTransport that records ``startTLS`` (what was written before and after it)."""

    tls_options = None

    def startTLS(self, options):
        self.tls_options = options
        self.before_tls = self.value()
        self.clear()


def make_client(greeting: bytes = b"+OK ready <1896.697170952@dbc.mtview.ca.us>\r\n",
                caps=None, transport_class=StringTransport):
    clock = task.Clock()
    client = pop3.POP3Client(timeout=30, clock=clock)
    transport = transport_class()
    client.makeConnection(transport)
    client.dataReceived(greeting)
    if caps is not None:
        client.capabilities = caps
    return client, transport, clock


class GreetingAndErrorsTests(unittest.TestCase):
    def test_greeting(self):
        client, _, _ = make_client()
        self.assertEqual(self.successResultOf(client.ready), "ready <1896.697170952@dbc.mtview.ca.us>")

    def test_err_greeting(self):
        client, _, _ = make_client(b"-ERR [SYS/TEMP] too busy\r\n")
        failure = self.failureResultOf(client.ready, pop3.TemporaryError)
        self.assertEqual(failure.value.code, "SYS/TEMP")

    def test_response_codes_become_typed_errors(self):
        client, transport, _ = make_client(caps={})
        cases = [(b"[IN-USE] locked", pop3.InUseError), (b"[LOGIN-DELAY] wait", pop3.LoginDelayError),
                 (b"[AUTH] no", pop3.AuthError), (b"[SYS/PERM] broken", pop3.PermanentError),
                 (b"[SYS/TEMP] later", pop3.TemporaryError), (b"no such message", pop3.ServerError),
                 (b"[X-OTHER] what", pop3.ServerError)]
        for text, cls in cases:
            d = client.noop()
            client.dataReceived(b"-ERR " + text + b"\r\n")
            failure = self.failureResultOf(d, cls)
            self.assertEqual(type(failure.value), cls)
        d = client.noop()
        client.dataReceived(b"-ERR [IN-USE] locked\r\n")
        self.failureResultOf(d, MailboxInUse)  # the server-side class matches too

    def test_malformed_reply_drops_connection(self):
        client, transport, _ = make_client(caps={})
        d = client.stat()
        client.dataReceived(b"HELLO\r\n")
        self.failureResultOf(d, pop3.ProtocolError)
        self.assertTrue(transport.disconnecting)

    def test_connection_lost_fails_pending(self):
        client, transport, _ = make_client(caps={})
        d = client.retrieve(1)
        client.dataReceived(b"+OK\r\npartial body\r\n")
        client.connectionLost(Failure(ierror.ConnectionDone()))
        self.failureResultOf(d, ierror.ConnectionLost)
        self.failureResultOf(client.noop(), ierror.ConnectionLost)


class PipeliningTests(unittest.TestCase):
    REPLIES = (b"+OK 2 octets\r\nSubject: a\r\n\r\n..dot\r\n.\r\n"
               b"+OK\r\nb\r\n.\r\n+OK marked\r\n+OK 1 10\r\n")

    def run_replies(self, client, chunks):
        ds = [client.retrieve(1), client.retrieve(2), client.delete(1), client.list(1)]
        for chunk in chunks:
            client.dataReceived(chunk)
        return [self.successResultOf(d) for d in ds]

    def test_all_commands_written_at_once_with_pipelining(self):
        client, transport, _ = make_client(caps={"PIPELINING": []})
        ds = [client.retrieve(1), client.retrieve(2), client.delete(1)]
        self.assertEqual(transport.value(), b"RETR 1\r\nRETR 2\r\nDELE 1\r\n")
        client.dataReceived(b"+OK\r\na\r\n.\r\n+OK\r\nb\r\n.\r\n+OK\r\n")
        self.assertEqual([self.successResultOf(d) for d in ds[:2]], [b"a\r\n", b"b\r\n"])

    def test_one_at_a_time_without_pipelining(self):
        client, transport, _ = make_client(caps={})
        client.retrieve(1)
        client.delete(1)
        self.assertEqual(transport.value(), b"RETR 1\r\n")
        client.dataReceived(b"+OK\r\na\r\n.\r\n")
        self.assertEqual(transport.value(), b"RETR 1\r\nDELE 1\r\n")

    def test_replies_whole_bytewise_and_with_trailing_data(self):
        expected = [b"Subject: a\r\n\r\n.dot\r\n", b"b\r\n", None, 10]
        for chunks in ([self.REPLIES], [bytes([b]) for b in self.REPLIES]):
            client, _, _ = make_client(caps={"PIPELINING": []})
            results = self.run_replies(client, chunks)
            results[2] = None
            self.assertEqual(results, expected)

    def test_quit_is_a_barrier(self):
        client, transport, _ = make_client(caps={"PIPELINING": []})
        client.retrieve(1)
        quit = client.quit()
        self.assertEqual(transport.value(), b"RETR 1\r\n")
        client.dataReceived(b"+OK\r\nx\r\n.\r\n")
        self.assertEqual(transport.value(), b"RETR 1\r\nQUIT\r\n")
        client.dataReceived(b"+OK bye\r\n")
        self.successResultOf(quit)

    def test_quit_answered_then_closed_is_a_clean_end(self):
        client, _, _ = make_client()
        quit = client.quit()
        client.dataReceived(b"+OK bye\r\n")
        client.connectionLost(Failure(ierror.ConnectionDone()))
        self.successResultOf(quit)

    def test_quit_closed_without_an_answer_fails(self):
        # Whether the server deleted anything cannot be known: not a clean end.
        client, _, _ = make_client()
        quit = client.quit()
        client.connectionLost(Failure(ierror.ConnectionDone()))
        failure = self.failureResultOf(quit, ierror.ConnectionLost)
        self.assertIn("without answering QUIT", str(failure.value))

    def test_listings(self):
        client, _, _ = make_client(caps={"PIPELINING": []})
        stat, listing, uidl, one = client.stat(), client.list(), client.uidl(), client.uidl(2)
        client.dataReceived(b"+OK 2 320\r\n+OK\r\n1 120\r\n2 200\r\n.\r\n"
                            b"+OK\r\n1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdPYR:00WBw1Ph7x7\r\n.\r\n"
                            b"+OK 2 QhdPYR:00WBw1Ph7x7\r\n")
        self.assertEqual(self.successResultOf(stat), (2, 320))
        self.assertEqual(self.successResultOf(listing), {1: 120, 2: 200})
        self.assertEqual(self.successResultOf(uidl),
                         {1: "whqtswO00WBw418f9t5JxYwZ", 2: "QhdPYR:00WBw1Ph7x7"})
        self.assertEqual(self.successResultOf(one), "QhdPYR:00WBw1Ph7x7")


@implementer(IConsumer)
class SlowConsumer:
    """Pushes back after every write until told to go on."""

    def __init__(self):
        self.data = []
        self.producer = None
        self.registered = 0

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer
        self.registered += 1

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.data.append(data)
        self.producer.pauseProducing()


class CancelTests(unittest.TestCase):
    """``Deferred.cancel()`` of a command: a cancelled command has no effect."""

    def test_a_command_not_sent_yet_is_never_sent(self):
        client, transport, _ = make_client(caps={})  # (no pipelining: DELE waits behind STAT)
        stat = client.stat()
        dele = client.delete(1)
        dele.cancel()
        self.failureResultOf(dele, defer.CancelledError)
        noop = client.noop()
        client.dataReceived(b"+OK 2 20\r\n")
        self.assertEqual(self.successResultOf(stat), (2, 20))
        self.assertEqual(transport.value(), b"STAT\r\nNOOP\r\n")  # DELE 1 never went out
        client.dataReceived(b"+OK\r\n")
        self.successResultOf(noop)

    def test_a_command_sent_already_aborts_the_connection(self):
        """A DELE on the wire cannot be taken back: without QUIT, the server commits nothing."""
        client, transport, _ = make_client(caps={"PIPELINING": []})
        dele = client.delete(1)
        after = client.noop()
        dele.cancel()
        self.failureResultOf(dele, defer.CancelledError)
        failure = self.failureResultOf(after, ierror.ConnectionAborted)
        self.assertIn("DELE was cancelled", str(failure.value))
        self.assertTrue(transport.disconnecting)
        self.failureResultOf(client.quit(), ierror.ConnectionAborted)  # no QUIT is sent
        self.assertNotIn(b"QUIT", transport.value())

    def test_a_body_half_received_stops_reaching_its_consumer(self):
        client, transport, _ = make_client(caps={"PIPELINING": []})
        received = []

        class Sink:
            def write(self, data):
                received.append(data)
        d = client.retrieve(1, Sink())
        client.dataReceived(b"+OK\r\nfirst line\r\n")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        client.dataReceived(b"second line\r\n.\r\n")
        self.assertEqual(b"".join(received), b"first line\r\n")


class UidlTests(unittest.TestCase):
    def test_a_uidl_with_a_space_is_a_protocol_error(self):
        """Two messages "abc def" and "abc xyz" must not both become "abc" (a fetcher would
        skip one as already fetched)."""
        client, transport, _ = make_client(caps={})
        d = client.uidl()
        client.dataReceived(b"+OK\r\n1 abc def\r\n2 abc xyz\r\n.\r\n")
        self.failureResultOf(d, pop3.ProtocolError)
        client, transport, _ = make_client(caps={})
        d = client.uidl(1)
        client.dataReceived(b"+OK 1 abc def\r\n")
        self.failureResultOf(d, pop3.ProtocolError)
        client, transport, _ = make_client(caps={})
        d = client.uidl()
        client.dataReceived(b"+OK\r\n1  abc \r\n.\r\n")  # (runs of spaces are tolerated)
        self.assertEqual(self.successResultOf(d), {1: "abc"})


class SessionEndTests(unittest.TestCase):
    def test_the_servers_last_words_are_the_reason_later_commands_fail(self):
        """An idle timeout: the server says why and closes; the next command says so too (it
        used to fail with "aborted locally", the reason lost)."""
        client, transport, _ = make_client(caps={})
        client.dataReceived(b"-ERR Disconnected for inactivity.\x1b[2J\r\n")
        self.assertTrue(transport.disconnecting)
        failure = self.failureResultOf(client.noop(), ierror.ConnectionLost)
        self.assertEqual(str(failure.value), "Connection to the other side was lost in a non-clean "
                         "fashion: the server ended the session: -ERR Disconnected for "
                         "inactivity.\\x1b[2J.")

    def test_after_quit_a_command_says_the_session_ended(self):
        client, transport, _ = make_client(caps={})
        quit = client.quit()
        client.dataReceived(b"+OK bye\r\n")
        self.successResultOf(quit)
        failure = self.failureResultOf(client.noop(), ierror.ConnectionDone)
        self.assertIn("the session ended with QUIT", str(failure.value))
        self.assertEqual(transport.value(), b"QUIT\r\n")


class LoginOrderTests(unittest.TestCase):
    """Commands queued behind :meth:`login` go after it, never between its steps."""

    def test_user_pass_is_not_split(self):
        client, transport, _ = make_client(caps={"USER": [], "PIPELINING": []})
        login = client.login("alice", "pw", allow_plaintext=True)
        stat = client.stat()
        self.assertEqual(transport.value(), b"USER alice\r\n")
        client.dataReceived(b"+OK\r\n")
        self.assertEqual(transport.value(), b"USER alice\r\nPASS pw\r\n")
        client.dataReceived(b"+OK logged in\r\n")
        # the CAPA that ends login() too goes before the queued STAT (a QUIT queued there would
        # otherwise have ended the session before login() completed)
        self.assertEqual(transport.value(), b"USER alice\r\nPASS pw\r\nCAPA\r\nSTAT\r\n")
        client.dataReceived(b"+OK\r\nUSER\r\n.\r\n")
        self.successResultOf(login)
        client.dataReceived(b"+OK 0 0\r\n")
        self.assertEqual(self.successResultOf(stat), (0, 0))

    def test_login_then_quit_without_waiting(self):
        client, transport, _ = make_client(caps={"USER": [], "PIPELINING": []})
        login = client.login("alice", "pw", allow_plaintext=True)
        quit = client.quit()
        client.dataReceived(b"+OK\r\n+OK logged in\r\n+OK\r\nUSER\r\n.\r\n+OK bye\r\n")
        self.assertEqual(transport.value(), b"USER alice\r\nPASS pw\r\nCAPA\r\nQUIT\r\n")
        self.successResultOf(login)
        self.successResultOf(quit)

    def test_the_fallback_goes_before_queued_commands(self):
        client, transport, _ = make_client(caps={"SASL": ["SCRAM-SHA-256", "PLAIN"]})
        client.tls = True
        login = client.login("bob", "pw", allow_plain_fallback=True)
        stat = client.stat()
        transport.clear()
        client.dataReceived(b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(transport.value(), b"AUTH PLAIN " + base64.b64encode(b"\0bob\0pw") + b"\r\n")
        client.dataReceived(b"+OK\r\n")
        self.assertEqual(transport.value().split(b"\r\n")[1:], [b"CAPA", b""])
        client.dataReceived(b"-ERR\r\n")  # (CAPA)
        self.successResultOf(login)
        client.dataReceived(b"+OK 0 0\r\n")
        self.successResultOf(stat)


class CancelEdgeTests(unittest.TestCase):
    def test_a_cancelled_stls_strands_what_is_behind_it(self):
        """Commands queued behind STLS must never go out in plaintext, STLS cancelled or not."""
        client, transport, _ = make_client(caps={"STLS": []}, transport_class=TLSStringTransport)
        capa = client.capa()
        stls = client.starttls(object())
        user = client.send(b"USER alice", barrier=True)
        stls.cancel()
        self.failureResultOf(stls, defer.CancelledError)
        self.failureResultOf(user, pop3.TLSError)
        client.dataReceived(b"+OK\r\n.\r\n")
        self.successResultOf(capa)
        self.assertEqual(transport.value(), b"CAPA\r\n")

    def test_cancelled_by_its_consumer_in_the_last_write(self):
        client, transport, _ = make_client(caps={})
        box = []

        class Sink:
            def write(self, data):
                box[0].cancel()
        d = client.retrieve(1, Sink())
        box.append(d)
        client.dataReceived(b"+OK\r\nsmall\r\n.\r\n")
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])


class StreamingTests(unittest.TestCase):
    def test_backpressure_pauses_the_transport(self):
        client, transport, _ = make_client(caps={"PIPELINING": []})
        consumer = SlowConsumer()
        d = client.retrieve(1, consumer)
        after = client.noop()
        client.dataReceived(b"+OK\r\nline one\r\n")
        self.assertEqual(transport.producerState, "paused")
        client.dataReceived(b"line two\r\n.\r\n+OK\r\n")
        self.assertEqual(consumer.data, [b"line one\r\n"])  # nothing more while paused
        self.assertNoResult(d)
        producer = consumer.producer
        producer.resumeProducing()
        self.assertEqual(b"".join(consumer.data), b"line one\r\nline two\r\n")
        producer.resumeProducing()
        self.assertIs(self.successResultOf(d), consumer)
        self.successResultOf(after)
        self.assertEqual(transport.producerState, "producing")

    def test_large_message_memory_is_bounded(self):
        client, _, _ = make_client(caps={})
        sizes = []

        class Counter:
            total = 0

            def write(self, data):
                Counter.total += len(data)

        d = client.retrieve(1, Counter())
        client.dataReceived(b"+OK\r\n")
        line = b"x" * 998 + b"\r\n"
        chunk = line * 64
        for _ in range(320):  # 20 MB
            client.dataReceived(chunk)
            sizes.append(len(client._buffer))
        client.dataReceived(b".\r\n")
        self.successResultOf(d)
        self.assertEqual(Counter.total, 320 * len(chunk))
        self.assertLess(max(sizes), 70000)

    def test_failing_consumer_fails_the_command_and_drops_the_connection(self):
        client, transport, _ = make_client(caps={"PIPELINING": []})

        class DiskFull:
            def write(self, data):
                raise OSError(28, "No space left on device")

        d = client.retrieve(1, DiskFull())
        after = client.retrieve(2)
        client.dataReceived(b"+OK\r\nline\r\n")
        self.assertEqual(self.failureResultOf(d, OSError).value.errno, 28)
        self.failureResultOf(after)
        self.assertTrue(transport.disconnecting)

    def test_file_like_consumer_and_top(self):
        import io

        client, transport, _ = make_client(caps={})
        sink = io.BytesIO()
        d = client.top(3, 0, sink)
        self.assertEqual(transport.value(), b"TOP 3 0\r\n")
        client.dataReceived(b"+OK\r\nSubject: x\r\n\r\n.\r\n")
        self.assertIs(self.successResultOf(d), sink)
        self.assertEqual(sink.getvalue(), b"Subject: x\r\n\r\n")


class TimeoutTests(unittest.TestCase):
    def test_no_reply_times_out(self):
        client, transport, clock = make_client(caps={})
        d = client.stat()
        clock.advance(29)
        self.assertNoResult(d)
        clock.advance(2)
        self.failureResultOf(d, ierror.TimeoutError)
        self.assertTrue(transport.disconnecting)

    def test_progress_resets_and_idle_does_not_time_out(self):
        client, transport, clock = make_client(caps={})
        d = client.retrieve(1)
        client.dataReceived(b"+OK\r\n")
        for _ in range(5):
            clock.advance(20)
            client.dataReceived(b"m" * 1022 + b"\r\n")  # a slow link: a KiB every 20 s
        client.dataReceived(b".\r\n")
        self.successResultOf(d)
        clock.advance(3600)
        self.assertFalse(transport.disconnecting)

    def test_a_drip_is_not_progress(self):
        """A server sending a byte every few seconds once kept the client for hours (every byte
        re-armed the timeout); progress is a whole reply, or a KiB."""
        client, transport, clock = make_client(caps={})
        d = client.retrieve(1)
        client.dataReceived(b"+OK\r\n")
        for _ in range(10):
            clock.advance(3)
            client.dataReceived(b"x")
        self.failureResultOf(d, ierror.TimeoutError)
        self.assertTrue(transport.disconnecting)


class STLSTests(unittest.TestCase):
    def test_bytes_after_ok_are_discarded(self):
        client, transport, _ = make_client(caps={"STLS": [], "PIPELINING": []},
                                           transport_class=TLSStringTransport)
        options = object()
        d = client.starttls(options)
        self.assertEqual(transport.value(), b"STLS\r\n")
        # A man in the middle appends a fake CAPA answer in the plaintext packet.
        client.dataReceived(b"+OK Begin TLS\r\n+OK injected\r\nUSER\r\nX-EVIL\r\n.\r\n")
        self.assertIs(transport.tls_options, options)
        self.assertEqual(transport.value(), b"CAPA\r\n")
        self.assertTrue(client.tls)
        self.assertEqual(client.capabilities, {})
        client.dataReceived(b"+OK\r\nSASL SCRAM-SHA-256 PLAIN\r\nPIPELINING\r\n.\r\n")
        caps = self.successResultOf(d)
        self.assertEqual(caps, {"SASL": ["SCRAM-SHA-256", "PLAIN"], "PIPELINING": []})

    def test_refused(self):
        client, transport, _ = make_client(caps={}, transport_class=TLSStringTransport)
        d = client.starttls(object())
        client.dataReceived(b"-ERR not now\r\n")
        self.failureResultOf(d, pop3.ServerError)
        self.assertIsNone(transport.tls_options)


class LoginTests(unittest.TestCase):
    def auth_line(self, transport):
        return transport.value().split(b"\r\n")[0]

    def test_strongest_mechanism_is_chosen(self):
        client, transport, _ = make_client(caps={"SASL": ["PLAIN", "CRAM-MD5", "SCRAM-SHA-1",
                                                          "SCRAM-SHA-256", "LOGIN"], "USER": []})
        client.login("user", "pencil")
        self.assertTrue(self.auth_line(transport).startswith(b"AUTH SCRAM-SHA-256 "))
        self.assertEqual(client.mechanism, "SCRAM-SHA-256")

    def test_plaintext_refused_without_tls(self):
        client, transport, _ = make_client(caps={"SASL": ["PLAIN", "LOGIN"], "USER": []})
        self.failureResultOf(client.login("user", "pencil"), pop3.CapabilityError)
        self.assertEqual(transport.value(), b"")

    def test_plain_over_tls(self):
        client, transport, _ = make_client(caps={"SASL": ["PLAIN", "LOGIN"]})
        client.tls = True
        d = client.login("tim", "tanstaaftanstaaf")
        self.assertEqual(transport.value(),
                         b"AUTH PLAIN " + base64.b64encode(b"\0tim\0tanstaaftanstaaf") + b"\r\n")
        transport.clear()
        client.dataReceived(b"+OK welcome\r\n")
        self.assertEqual(transport.value(), b"CAPA\r\n")  # capabilities re-read after login
        client.dataReceived(b"+OK\r\nTOP\r\nUIDL\r\n.\r\n")
        self.assertEqual(self.successResultOf(d), {"TOP": [], "UIDL": []})
        self.assertTrue(client.logged_in)

    def test_falls_back_to_plain_over_tls_when_scram_is_refused(self):
        client, transport, _ = make_client(caps={"SASL": ["SCRAM-SHA-256", "PLAIN"]})
        client.tls = True
        d = client.login("bob", "pw", allow_plain_fallback=True)
        self.assertTrue(transport.value().startswith(b"AUTH SCRAM-SHA-256 "))
        transport.clear()
        client.dataReceived(b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(transport.value(), b"AUTH PLAIN " + base64.b64encode(b"\0bob\0pw") + b"\r\n")
        client.dataReceived(b"+OK\r\n-ERR\r\n")
        self.successResultOf(d)
        self.assertEqual(client.mechanism, "PLAIN")

    def test_no_fallback_without_tls_or_when_forced(self):
        client, transport, _ = make_client(caps={"SASL": ["SCRAM-SHA-256", "PLAIN"], "USER": []})
        d = client.login("bob", "pw")
        client.dataReceived(b"-ERR [AUTH] no\r\n")
        self.failureResultOf(d, pop3.AuthError)
        client.tls = True
        transport.clear()
        d = client.login("bob", "pw", mechanism="SCRAM-SHA-256")
        client.dataReceived(b"-ERR [AUTH] no\r\n")
        self.failureResultOf(d, pop3.AuthError)
        self.assertEqual(transport.value().count(b"AUTH"), 1)

    def test_user_pass_fallback(self):
        client, transport, _ = make_client(caps={"USER": []})
        d = client.login("alice", "two words", allow_plaintext=True)
        self.assertEqual(transport.value(), b"USER alice\r\n")
        client.dataReceived(b"+OK\r\n")
        self.assertEqual(transport.value(), b"USER alice\r\nPASS two words\r\n")
        client.dataReceived(b"-ERR nope\r\n")
        self.failureResultOf(d, pop3.AuthError)

    def test_cram_md5(self):
        client, transport, _ = make_client(caps={"SASL": ["CRAM-MD5"]})
        client.tls = True
        d = client.login("tim", "tanstaaftanstaaf")
        self.assertEqual(transport.value(), b"AUTH CRAM-MD5\r\n")
        transport.clear()
        challenge = b"<1896.697170952@postoffice.reston.mci.net>"
        client.dataReceived(b"+ " + base64.b64encode(challenge) + b"\r\n")
        answer = base64.b64decode(transport.value().strip())
        digest = hmac.new(b"tanstaaftanstaaf", challenge, hashlib.md5).hexdigest().encode()
        self.assertEqual(answer, b"tim " + digest)
        self.assertEqual(digest, b"b913a602c7eda7a495b4e6e7334d3890")  # RFC 2195's example
        client.dataReceived(b"+OK\r\n+OK\r\n.\r\n")
        self.successResultOf(d)

    def test_login_mechanism(self):
        client, transport, _ = make_client(caps={"SASL": ["LOGIN"]})
        client.tls = True
        d = client.login("u", "p w")
        self.assertEqual(transport.value(), b"AUTH LOGIN\r\n")
        transport.clear()
        client.dataReceived(b"+ " + base64.b64encode(b"Username:") + b"\r\n")
        client.dataReceived(b"+ " + base64.b64encode(b"Password:") + b"\r\n")
        self.assertEqual(transport.value(), base64.b64encode(b"u") + b"\r\n" +
                         base64.b64encode(b"p w") + b"\r\n")
        client.dataReceived(b"+OK\r\n-ERR no capa\r\n")
        self.assertEqual(self.successResultOf(d), {})

    def test_apop_only_when_asked(self):
        client, transport, _ = make_client(caps={})
        client.login("mrose", "tanstaaf", apop=True, allow_plaintext=True)
        self.assertEqual(transport.value(), b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n")

    def scram_server(self, password="pencil", mechanism="SCRAM-SHA-256"):
        import scramp

        m = scramp.ScramMechanism(mechanism)
        info = m.make_auth_info(password, iteration_count=4096)
        return m.make_server(lambda username: info)

    def run_scram(self, server_password, tamper=None):
        """The client's SCRAM exchange against scramp's server holding ``server_password``: returns
        the client, its login Deferred, the transport (cleared after the client-final message) and,
        when the server refused the client's proof, scramp's error."""
        import scramp
        from scramp.core import ServerError

        client, transport, _ = make_client(caps={"SASL": ["SCRAM-SHA-256"]})
        d = client.login("user", "pencil")
        line = transport.value().strip()
        self.assertTrue(line.startswith(b"AUTH SCRAM-SHA-256 "))
        server = self.scram_server(server_password)
        server.set_client_first(base64.b64decode(line.split()[2]).decode())
        transport.clear()
        client.dataReceived(b"+ " + base64.b64encode(server.get_server_first().encode()) + b"\r\n")
        client_final = base64.b64decode(transport.value().strip()).decode()
        transport.clear()
        try:
            server.set_client_final(client_final)
        except scramp.ScramException as refused:
            # Only a well-formed client-final message with a proof that does not match is a wrong
            # password; a parse error (a client bug) must fail the test, not pass as one.
            self.assertEqual(refused.server_error, ServerError.INVALID_PROOF, str(refused))
            client.dataReceived(b"-ERR [AUTH] bad proof\r\n")
            return client, d, transport, refused
        final = server.get_server_final()
        if tamper:
            final = tamper(final)
        client.dataReceived(b"+ " + base64.b64encode(final.encode()) + b"\r\n")
        return client, d, transport, None

    def test_scram_sha_256(self):
        client, d, transport, refused = self.run_scram("pencil")
        self.assertIsNone(refused)
        self.assertEqual(transport.value(), b"\r\n")  # empty response to the server-final message
        transport.clear()
        self.assertNoResult(d)  # the login goes on: +OK, then CAPA
        client.dataReceived(b"+OK welcome\r\n")
        self.assertEqual(transport.value(), b"CAPA\r\n")
        client.dataReceived(b"+OK\r\nUIDL\r\n.\r\n")
        self.assertEqual(self.successResultOf(d), {"UIDL": []})
        self.assertTrue(client.logged_in)

    def test_scram_wrong_password(self):
        _, d, _, refused = self.run_scram("other")
        self.assertIn("The client keys don't match", str(refused))
        failure = self.failureResultOf(d, pop3.AuthError)
        self.assertEqual(failure.value.text, "bad proof")

    def test_scram_server_that_cannot_prove_itself(self):
        """A server that does not know the password cannot sign the exchange: the client cancels
        with ``*`` and the login fails, even if the server then claims success with +OK."""
        forged = "v=" + base64.b64encode(b"x" * 32).decode()
        for reply, reason in ((b"-ERR [AUTH] cancelled\r\n", "The server signature doesn't match"),
                              (b"+OK you are in\r\n", "server accepted SCRAM-SHA-256 without proving itself")):
            client, d, transport, refused = self.run_scram("pencil", tamper=lambda final: forged)
            self.assertIsNone(refused)
            self.assertEqual(transport.value(), b"*\r\n")  # the client cancels
            self.assertNoResult(d)
            transport.clear()
            client.dataReceived(reply)
            failure = self.failureResultOf(d, sasl_client.SASLError)
            self.assertIn(reason, str(failure.value))
            self.assertEqual(transport.value(), b"")  # no CAPA: the session is not logged in
            self.assertFalse(client.logged_in)

    def test_challenges_after_the_cancel_end_the_connection(self):
        """After "*" the server must answer -ERR; one that sent challenge after challenge was
        answered "*" for ever (a hostile-server sweep counted 10,000)."""
        forged = "v=" + base64.b64encode(b"x" * 32).decode()
        client, d, transport, _ = self.run_scram("pencil", tamper=lambda final: forged)
        self.assertEqual(transport.value(), b"*\r\n")
        transport.clear()
        client.dataReceived(b"+ \r\n")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        self.failureResultOf(d)

    def test_scram_ok_without_server_final_is_refused(self):
        client, transport, _ = make_client(caps={"SASL": ["SCRAM-SHA-256"]})
        d = client.login("user", "pencil")
        client.dataReceived(b"+OK shortcut\r\n")
        self.failureResultOf(d, sasl_client.SASLError)

    def test_choose(self):
        offered = ["PLAIN", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"]
        self.assertEqual(sasl_client.choose(offered, secure=True, allow_plaintext=False, token=False,
                                            channel_binding=True)[0], "SCRAM-SHA-256-PLUS")
        self.assertEqual(sasl_client.choose(offered, secure=True, allow_plaintext=False, token=False,
                                            channel_binding=False)[0], "SCRAM-SHA-256")
        self.assertEqual(sasl_client.choose(offered, secure=True, allow_plaintext=False, token=True,
                                            channel_binding=False), ["OAUTHBEARER", "XOAUTH2"])
        self.assertEqual(sasl_client.choose(["PLAIN"], secure=False, allow_plaintext=False,
                                            token=False, channel_binding=False), [])

    def test_oauthbearer(self):
        client, transport, _ = make_client(caps={"SASL": ["OAUTHBEARER", "PLAIN"]})
        client.tls = True
        client.login("user@example.com", token="vF9dft4qmT")
        line = transport.value().strip().split()
        self.assertEqual(line[:2], [b"AUTH", b"OAUTHBEARER"])
        self.assertEqual(base64.b64decode(line[2]),
                         b"n,a=user@example.com,\x01auth=Bearer vF9dft4qmT\x01\x01")


class IOSimTests(unittest.TestCase):
    """Our client against our server protocol, in memory."""

    MESSAGES = [b"Subject: one\n\n.starts with a dot\nbody\n", b"Subject: two\r\n\r\nno final newline",
                b".\r\n..\r\n"]

    def setUp(self):
        self.clock = task.Clock()
        self.store = MemoryStore()
        for message in self.MESSAGES:
            self.store.deliver("alice", message)
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"alice", b"secret pass")
        portal = Portal(MailboxRealm(self.store), [checker])
        config = server.ServerConfig(security=SecurityConfig(allow_plaintext_auth=True))
        self.factory = server.POP3ServerFactory(portal, config, clock=self.clock)
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: self.factory.buildProtocol(None), lambda: pop3.POP3Client(clock=self.clock),
            clock=self.clock)

    def wait(self, d):
        for _ in range(50):
            self.pump.flush()
            if d.called:
                break
            self.clock.advance(1)
        return self.successResultOf(d)

    def test_session(self):
        self.wait(self.client.ready)
        caps = self.wait(self.client.capa())
        self.assertIn("PIPELINING", caps)
        self.wait(self.client.login("alice", "secret pass", allow_plaintext=True))
        self.assertEqual(self.wait(self.client.stat())[0], 3)
        uids = self.wait(self.client.uidl())
        sizes = self.wait(self.client.list())
        bodies = [self.client.retrieve(n) for n in sorted(uids)]
        self.pump.flush()
        got = [self.wait(d) for d in bodies]
        self.assertEqual(got, [rfc1939.wire_message(m) for m in self.MESSAGES])
        self.assertEqual([len(b) for b in got], [sizes[n] for n in sorted(sizes)])
        self.assertEqual(self.wait(self.client.top(1, 0)), b"Subject: one\r\n\r\n")
        self.wait(self.client.delete(2))
        err = self.client.retrieve(2)
        self.pump.flush()
        self.failureResultOf(err, pop3.ServerError)
        self.wait(self.client.quit())
        self.assertEqual(len(self.store.maildrops["alice"]), 2)

    def test_wrong_password(self):
        self.wait(self.client.ready)
        self.wait(self.client.capa())
        d = self.client.login("alice", "wrong", allow_plaintext=True)
        for _ in range(10):
            self.pump.flush()
            self.clock.advance(1)
        self.failureResultOf(d, pop3.AuthError)

    def test_in_use(self):
        self.wait(self.client.ready)
        self.wait(self.client.login("alice", "secret pass", allow_plaintext=True))
        other, _, pump = iosim.connectedServerAndClient(
            lambda: self.factory.buildProtocol(None), lambda: pop3.POP3Client(clock=self.clock),
            clock=self.clock)
        d = other.login("alice", "secret pass", allow_plaintext=True)
        pump.flush()
        self.failureResultOf(d, pop3.InUseError)
