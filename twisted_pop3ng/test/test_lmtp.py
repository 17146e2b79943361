"""The LMTP server (RFC 2033) byte for byte over StringTransport: sequencing, per-recipient
replies after the final dot, limits, and what each kind of store failure answers."""

from __future__ import annotations

import errno
import threading
from typing import Any, Callable, List, Optional

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from twisted_pop3ng.delivery.lmtp import CLOSE_GRACE, LMTPConfig, LMTPFactory
from twisted_pop3ng.delivery.recipients import RecipientResolver
from twisted_pop3ng.errors import PermanentFailure, TemporaryFailure
from twisted_pop3ng.mailbox.memory import MemoryStore

USERS = {"alice": "a", "bob": "b", "carol@example.org": "c"}


class InlinePool:
    """Runs the delivery at once in the calling thread (the protocol is under test here, not the
    pool; :class:`RealThreadsTests` uses a real one)."""

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None], f: Callable[..., Any],
                                 *args: Any, **kwargs: Any) -> None:
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class InlineReactor:
    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class FailingStore(MemoryStore):
    """A memory store whose deliveries to ``user`` raise ``error``."""

    def __init__(self, user: str, error: BaseException) -> None:
        super().__init__()
        self.failing_user, self.error = user, error

    def deliver(self, user: str, source: Any) -> str:
        if user == self.failing_user:
            source.read(100)  # failing half-way through, as a full disk does
            raise self.error
        return super().deliver(user, source)


def resolver() -> RecipientResolver:
    return RecipientResolver.from_checkers([InMemoryUsernamePasswordDatabaseDontUse(**USERS)])


class LMTPTestCase(unittest.TestCase):
    config = LMTPConfig(max_size=10_000, max_recipients=3, timeout=60, max_bad_commands=8,
                        trace_headers=False, hostname="mx.test")

    def setUp(self) -> None:
        self.store = MemoryStore()
        self.connect()

    def connect(self, pool: Any = None, the_reactor: Any = None) -> None:
        self.factory = LMTPFactory(self.store, resolver(), pool or InlinePool(), self.config,
                                   reactor=the_reactor or InlineReactor())
        self.proto = self.factory.buildProtocol(None)
        self.clock = task.Clock()
        self.proto.callLater = self.clock.callLater
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.assertEqual(self.take(), [b"220 mx.test LMTP pop3ng ready"])

    def take(self) -> List[bytes]:
        """The reply lines written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        self.assertTrue(data == b"" or data.endswith(b"\r\n"), data)
        return data.split(b"\r\n")[:-1]

    def send(self, data: bytes) -> List[bytes]:
        self.proto.dataReceived(data)
        return self.take()

    def transaction(self, *recipients: str) -> None:
        self.send(b"LHLO client.test\r\nMAIL FROM:<sender@x.test>\r\n")
        for rcpt in recipients:
            self.send(b"RCPT TO:<%s>\r\n" % rcpt.encode())
        self.assertEqual(self.send(b"DATA\r\n"), [b"354 Start mail input; end with <CRLF>.<CRLF>"])

    def stored(self, user: str) -> List[bytes]:
        return [data for _, data in self.store.maildrops.get(user, [])]


class BackpressureTests(LMTPTestCase):
    """Lines are not read while the replies are not (the transport pauses its producer), nor
    while a delivery is under way; a close whose replies cannot be sent becomes an abort."""

    def test_unread_replies_stop_the_reading(self) -> None:
        self.assertIs(self.transport.producer, self.proto)  # registered as a streaming producer
        self.proto.pauseProducing()  # (what the transport does when its buffer is full)
        self.assertEqual(self.send(b"NOOP\r\nNOOP\r\n"), [])
        self.proto.resumeProducing()
        self.assertEqual(self.take(), [b"250 2.0.0 Ok", b"250 2.0.0 Ok"])

    def test_busy_and_unread_are_separate_reasons(self) -> None:
        self.proto._block("busy")
        self.proto.pauseProducing()
        self.proto.resumeProducing()  # the replies drained, but a delivery is still running
        self.assertEqual(self.send(b"NOOP\r\n"), [])
        self.proto._unblock("busy")
        self.assertEqual(self.take(), [b"250 2.0.0 Ok"])

    def test_a_close_that_cannot_send_becomes_an_abort(self) -> None:
        aborted: List[bool] = []
        self.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        self.proto.pauseProducing()
        self.clock.advance(self.config.timeout)
        self.assertEqual(self.take(), [b"421 4.4.2 mx.test Timeout, closing connection"])
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.producer)  # unregistered: nothing more is read
        self.clock.advance(CLOSE_GRACE - 0.1)
        self.assertEqual(aborted, [])
        self.clock.advance(0.2)
        self.assertEqual(aborted, [True])

    def test_a_close_that_completes_cancels_the_abort(self) -> None:
        self.send(b"QUIT\r\n")
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])


class ConnectionLimitTests(LMTPTestCase):
    config = LMTPConfig(max_size=10_000, max_recipients=3, timeout=60, max_bad_commands=8,
                        trace_headers=False, hostname="mx.test", max_connections=2)

    def test_past_the_limit_a_connection_gets_421(self) -> None:
        """LMTP connections were not counted: 1,100 idle ones used up the server's descriptors."""
        second = self.factory.buildProtocol(None)
        second.callLater = self.clock.callLater
        second_transport = StringTransport()
        second.makeConnection(second_transport)
        third = self.factory.buildProtocol(None)
        third.callLater = self.clock.callLater
        third_transport = StringTransport()
        third.makeConnection(third_transport)
        self.assertEqual(third_transport.value(), b"421 4.3.2 mx.test Too many connections, try again later\r\n")
        self.assertTrue(third_transport.disconnecting)
        third.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.open_connections, 2)  # the refused one was never counted
        second.connectionLost(Failure(ConnectionDone()))
        fourth = self.factory.buildProtocol(None)
        fourth.callLater = self.clock.callLater
        fourth_transport = StringTransport()
        fourth.makeConnection(fourth_transport)
        self.assertTrue(fourth_transport.value().startswith(b"220 "))
        fourth.connectionLost(Failure(ConnectionDone()))

    def test_parameters_are_not_echoed_with_control_characters(self) -> None:
        replies = self.send(b"LHLO c\r\nMAIL FROM:<a@x.test> \x01\x1b[2J=3\r\n")
        self.assertEqual(replies[-1], b"555 5.5.4 Unsupported MAIL parameter ??[2J")


class CommandTests(LMTPTestCase):
    def test_lhlo_lists_the_extensions(self) -> None:
        self.assertEqual(self.send(b"LHLO client.test\r\n"), [
            b"250-mx.test", b"250-PIPELINING", b"250-ENHANCEDSTATUSCODES", b"250-8BITMIME",
            b"250 SIZE 10000"])

    def test_helo_and_ehlo_are_not_lmtp(self) -> None:
        self.assertEqual(self.send(b"HELO x\r\nEHLO x\r\n"),
                         [b"500 5.5.1 This is LMTP: say LHLO"] * 2)

    def test_sequence_is_enforced(self) -> None:
        self.assertEqual(self.send(b"MAIL FROM:<a@b>\r\n"), [b"503 5.5.1 Send LHLO first"])
        self.send(b"LHLO c\r\n")
        self.assertEqual(self.send(b"RCPT TO:<alice>\r\n"), [b"503 5.5.1 Send MAIL first"])
        self.assertEqual(self.send(b"DATA\r\n"), [b"503 5.5.1 Send MAIL first"])
        self.assertEqual(self.send(b"MAIL FROM:<a@b>\r\n"), [b"250 2.1.0 Ok"])
        self.assertEqual(self.send(b"MAIL FROM:<a@b>\r\n"), [b"503 5.5.1 MAIL already given (RSET first)"])
        self.assertEqual(self.send(b"DATA\r\n"), [b"503 5.5.1 No valid recipients"])
        self.assertEqual(self.send(b"RCPT TO:<nobody>\r\nDATA\r\n"),
                         [b"550 5.1.1 <nobody> No such user here", b"503 5.5.1 No valid recipients"])

    def test_unknown_commands_and_bad_syntax(self) -> None:
        self.send(b"LHLO c\r\n")
        self.assertEqual(self.send(b"XYZZY\r\n"), [b"500 5.5.1 Unknown command"])
        self.assertEqual(self.send(b"LHLO\r\n"), [b"501 5.5.4 Syntax: LHLO hostname"])
        self.assertEqual(self.send(b"MAIL TO:<a@b>\r\n"), [b"501 5.5.4 Syntax: MAIL FROM:<address>"])
        self.assertEqual(self.send(b"MAIL FROM:<a@b\r\n"),
                         [b"501 5.1.7 Bad sender address: Unterminated address (missing '>')"])
        self.assertEqual(self.send("MAIL FROM:<é@b>\r\n".encode("utf-8")), [b"500 5.5.2 Command line is not ASCII"])
        self.assertFalse(self.transport.disconnecting)

    def test_null_sender_and_parameters(self) -> None:
        self.send(b"LHLO c\r\n")
        self.assertEqual(self.send(b"MAIL FROM:<> BODY=8BITMIME SIZE=100\r\n"), [b"250 2.1.0 Ok"])
        self.assertEqual(self.send(b"RCPT TO:<alice> NOTIFY=NEVER\r\n"),
                         [b"555 5.5.4 RCPT parameters are not supported"])
        self.send(b"RSET\r\n")
        self.assertEqual(self.send(b"MAIL FROM:<a@b> SMTPUTF8\r\n"),
                         [b"555 5.5.4 Unsupported MAIL parameter SMTPUTF8"])

    def test_declared_size_over_the_limit(self) -> None:
        self.send(b"LHLO c\r\n")
        self.assertEqual(self.send(b"MAIL FROM:<a@b> SIZE=10001\r\n"),
                         [b"552 5.3.4 Message too big (at most 10000 octets)"])

    def test_rset_noop_vrfy_quit(self) -> None:
        self.send(b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice>\r\n")
        self.assertEqual(self.send(b"RSET\r\nDATA\r\n"), [b"250 2.0.0 Ok", b"503 5.5.1 Send MAIL first"])
        self.assertEqual(self.send(b"NOOP\r\n"), [b"250 2.0.0 Ok"])
        self.assertEqual(self.send(b"VRFY alice\r\n"),
                         [b"252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"])
        self.assertEqual(self.send(b"QUIT\r\n"), [b"221 2.0.0 mx.test Bye"])
        self.assertTrue(self.transport.disconnecting)

    def test_too_many_recipients(self) -> None:
        self.send(b"LHLO c\r\nMAIL FROM:<a@b>\r\n")
        replies = self.send(b"RCPT TO:<alice>\r\nRCPT TO:<bob>\r\nRCPT TO:<alice@x>\r\nRCPT TO:<bob@y>\r\n")
        self.assertEqual(replies[3], b"452 4.5.3 Too many recipients")

    def test_too_many_bad_commands_end_the_connection(self) -> None:
        replies = self.send(b"BAD\r\n" * 8)
        self.assertEqual(replies[-1], b"421 4.7.0 mx.test Too many errors, closing connection")
        self.assertTrue(self.transport.disconnecting)

    def test_line_too_long(self) -> None:
        self.assertEqual(self.send(b"NOOP " + b"x" * 2000 + b"\r\n"),
                         [b"500 5.5.2 Line too long (at most 1000 octets)"])
        self.assertTrue(self.transport.disconnecting)

    def test_idle_timeout(self) -> None:
        self.send(b"LHLO c\r\n")
        self.clock.advance(59)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(2)
        self.assertEqual(self.take(), [b"421 4.4.2 mx.test Timeout, closing connection"])
        self.assertTrue(self.transport.disconnecting)


class RecipientTests(LMTPTestCase):
    def test_full_address_then_local_part(self) -> None:
        self.send(b"LHLO c\r\nMAIL FROM:<a@b>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<carol@example.org>\r\nRCPT TO:<alice@example.org>\r\n"
                                   b"RCPT TO:<carol@other.org>\r\nRCPT TO:<Alice>\r\n"),
                         [b"250 2.1.5 <carol@example.org> Ok", b"250 2.1.5 <alice@example.org> Ok",
                          b"550 5.1.1 <carol@other.org> No such user here",
                          b"550 5.1.1 <Alice> No such user here"])
        self.assertEqual(self.proto._recipients, [("carol@example.org", "carol@example.org"),
                                                  ("alice@example.org", "alice")])

    def test_source_route_is_dropped(self) -> None:
        self.send(b"LHLO c\r\nMAIL FROM:<a@b>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<@relay.test:alice@example.org>\r\n"),
                         [b"250 2.1.5 <alice@example.org> Ok"])

    def test_bad_addresses(self) -> None:
        self.send(b"LHLO c\r\nMAIL FROM:<a@b>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<>\r\n"), [b"501 5.1.3 Bad recipient address: Empty address"])
        self.assertEqual(self.send(b"RCPT TO:<" + b"a" * 300 + b">\r\n"),
                         [b"501 5.1.3 Bad recipient address: Address longer than 256 octets"])
        self.assertEqual(self.send(b"RCPT TO:<a\x01b>\r\n"),
                         [b"501 5.1.3 Bad recipient address: Address with characters outside printable ASCII"])

    def test_a_lookup_that_fails_is_temporary(self) -> None:
        def broken(name: str) -> Any:
            return defer.fail(RuntimeError("database down"))

        self.factory.resolver = RecipientResolver([broken])
        self.send(b"LHLO c\r\nMAIL FROM:<a@b>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<alice>\r\n"),
                         [b"451 4.3.0 <alice> User database unavailable, try again later"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_slow_lookup_holds_the_pipelined_commands(self) -> None:
        pending: List[defer.Deferred] = []

        def slow(name: str) -> defer.Deferred:
            d: defer.Deferred = defer.Deferred()
            pending.append(d)
            return d

        self.factory.resolver = RecipientResolver([slow])
        self.send(b"LHLO c\r\nMAIL FROM:<a@b>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<alice>\r\nNOOP\r\n"), [])
        self.assertEqual(self.transport.producerState, "paused")
        pending.pop().callback(True)
        self.assertEqual(self.take(), [b"250 2.1.5 <alice> Ok", b"250 2.0.0 Ok"])
        self.assertEqual(self.transport.producerState, "producing")


class DataTests(LMTPTestCase):
    def test_per_recipient_replies_after_the_dot(self) -> None:
        self.transaction("alice", "nobody", "bob@example.org")
        replies = self.send(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n")
        self.assertEqual(replies, [b"250 2.0.0 <alice> Delivered as m1",
                                   b"250 2.0.0 <bob@example.org> Delivered as m2"])
        self.assertEqual(self.stored("alice"), [b"Subject: hi\n\n.dot\nbody\n"])
        self.assertEqual(self.stored("bob"), [b"Subject: hi\n\n.dot\nbody\n"])
        self.assertEqual(self.send(b"MAIL FROM:<a@b>\r\n"), [b"250 2.1.0 Ok"])  # a new transaction

    def test_a_mailbox_named_twice_gets_the_message_once(self) -> None:
        """The same address twice, or two addresses of one user: one copy, and each RCPT the
        reply of that copy (as Dovecot's LMTP; an MTA that expanded an alias twice must not
        make a user download the message twice)."""
        self.transaction("alice", "alice@example.org", "alice")
        replies = self.send(b"Subject: once\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(replies, [b"250 2.0.0 <alice> Delivered as m1",
                                   b"250 2.0.0 <alice@example.org> Delivered as m1",
                                   b"250 2.0.0 <alice> Delivered as m1"])
        self.assertEqual(self.stored("alice"), [b"Subject: once\n\nbody\n"])

    def test_any_chunking_gives_the_same_message(self) -> None:
        body = b".leading dot\r\nline\r\n\r\n...\r\nlast\r\n.\r\n"
        self.transaction("alice")
        for i in range(len(body)):
            self.proto.dataReceived(body[i:i + 1])
        self.assertEqual(self.take(), [b"250 2.0.0 <alice> Delivered as m1"])
        self.assertEqual(self.stored("alice"), [b"leading dot\nline\n\n..\nlast\n"])

    def test_pipelined_transactions_in_one_write(self) -> None:
        replies = self.send(b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice>\r\nDATA\r\none\r\n.\r\n"
                            b"MAIL FROM:<a@b>\r\nRCPT TO:<bob>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n")
        self.assertEqual(replies[5:], [
            b"250 2.1.0 Ok", b"250 2.1.5 <alice> Ok", b"354 Start mail input; end with <CRLF>.<CRLF>",
            b"250 2.0.0 <alice> Delivered as m1",
            b"250 2.1.0 Ok", b"250 2.1.5 <bob> Ok", b"354 Start mail input; end with <CRLF>.<CRLF>",
            b"250 2.0.0 <bob> Delivered as m2", b"221 2.0.0 mx.test Bye"])
        self.assertEqual((self.stored("alice"), self.stored("bob")), ([b"one\n"], [b"two\n"]))

    def test_message_over_the_limit_is_refused_for_each_recipient(self) -> None:
        self.transaction("alice", "bob")
        line = b"x" * 99 + b"\r\n"
        replies = self.send(line * 101 + b".\r\n")
        self.assertEqual(replies, [b"552 5.3.4 <alice> Message too big",
                                   b"552 5.3.4 <bob> Message too big"])
        self.assertEqual(self.store.maildrops, {})
        self.assertEqual(self.send(b"NOOP\r\n"), [b"250 2.0.0 Ok"])

    def test_trace_headers(self) -> None:
        self.factory.config = self.proto.config = LMTPConfig(hostname="mx.test", trace_headers=True)
        self.transaction("alice@example.org")
        self.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        stored = self.stored("alice")[0]
        head, _, rest = stored.partition(b"Subject: hi\n")
        self.assertEqual(rest, b"\nbody\n")
        lines = head.split(b"\n")
        self.assertEqual(lines[:3], [b"Return-Path: <sender@x.test>", b"Delivered-To: alice@example.org",
                                     b"Received: from client.test ([192.168.1.1])"])
        self.assertEqual(lines[3], b"\tby mx.test with LMTP id " + lines[3].split()[-1])
        self.assertTrue(lines[4].startswith(b"\tfor <alice@example.org>; "), lines[4])

    def test_a_spool_that_cannot_be_written_is_temporary(self) -> None:
        missing = self.mktemp()  # bodies over 1 MiB go to a file there: it does not exist
        self.factory.config = self.proto.config = LMTPConfig(hostname="mx.test", trace_headers=False,
                                                             spool_dir=missing)
        self.transaction("alice", "bob")
        replies = self.send((b"z" * 998 + b"\r\n") * 1100 + b".\r\n")
        self.assertEqual([r[:22] for r in replies], [b"451 4.3.0 <alice> Temp", b"451 4.3.0 <bob> Tempor"])
        self.assertEqual(self.store.maildrops, {})
        self.assertEqual(self.send(b"RSET\r\n"), [b"250 2.0.0 Ok"])

    def test_connection_lost_inside_data_delivers_nothing(self) -> None:
        self.transaction("alice")
        self.send(b"Subject: cut\r\n\r\npartial")
        self.proto.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.store.maildrops, {})


class StoreFailureTests(LMTPTestCase):
    def fail_with(self, error: BaseException) -> List[bytes]:
        self.store = FailingStore("bob", error)
        self.connect()
        self.transaction("alice", "bob")
        return self.send(b"Subject: x\r\n\r\n" + b"y" * 200 + b"\r\n.\r\n")

    def test_full_disk(self) -> None:
        replies = self.fail_with(OSError(errno.ENOSPC, "No space left on device"))
        self.assertEqual(replies, [b"250 2.0.0 <alice> Delivered as m1",
                                   b"452 4.3.1 <bob> Insufficient system storage, try again later "
                                   b"(No space left on device)"])

    def test_over_quota(self) -> None:
        self.assertEqual(self.fail_with(OSError(errno.EDQUOT, "Disk quota exceeded"))[1],
                         b"452 4.2.2 <bob> Mailbox full, try again later (Disk quota exceeded)")

    def test_temporary_failure(self) -> None:
        self.assertEqual(self.fail_with(TemporaryFailure("Database unavailable"))[1],
                         b"451 4.3.0 <bob> Database unavailable")

    def test_permanent_failure(self) -> None:
        self.assertEqual(self.fail_with(PermanentFailure("Maildrop is not a directory"))[1],
                         b"550 5.2.0 <bob> Maildrop is not a directory")

    def test_a_mailbox_named_twice_shares_its_failure(self) -> None:
        self.store = FailingStore("bob", TemporaryFailure("Database unavailable"))
        self.connect()
        self.transaction("bob", "alice", "bob@example.org")
        self.assertEqual(self.send(b"Subject: x\r\n\r\ny\r\n.\r\n"),
                         [b"451 4.3.0 <bob> Database unavailable", b"250 2.0.0 <alice> Delivered as m1",
                          b"451 4.3.0 <bob@example.org> Database unavailable"])

    def test_unexpected_error_is_temporary_and_logged(self) -> None:
        self.assertEqual(self.fail_with(ZeroDivisionError())[1],
                         b"451 4.3.0 <bob> Temporary failure of the mail store, try again later")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class BlockingStore(MemoryStore):
    """Deliveries wait for :attr:`release` (set by the test): a slow disk."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def deliver(self, user: str, source: Any) -> str:
        self.started.set()
        self.release.wait(30)
        return super().deliver(user, source)


class RealThreadsTests(LMTPTestCase):
    """A real thread pool and the running reactor: the reply waits for the store, and pipelined
    commands after the dot wait for the reply."""

    def setUp(self) -> None:
        self.store = BlockingStore()
        self.pool = ThreadPool(0, 2, name="test-lmtp")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.connect(pool=self.pool, the_reactor=reactor)

    @defer.inlineCallbacks
    def test_reply_only_once_stored(self) -> Any:
        self.transaction("alice")
        self.assertEqual(self.send(b"one\r\n.\r\nNOOP\r\n"), [])
        yield deferred_until(lambda: self.store.started.is_set())
        self.assertEqual(self.take(), [])  # the store has not returned: no 250, NOOP waits
        self.assertEqual(self.stored("alice"), [])
        self.store.release.set()
        yield deferred_until(lambda: self.transport.value().count(b"\r\n") == 2)
        self.assertEqual(self.take(), [b"250 2.0.0 <alice> Delivered as m1", b"250 2.0.0 Ok"])
        self.assertEqual(self.stored("alice"), [b"one\n"])


def deferred_until(predicate: Callable[[], bool], timeout: float = 30.0) -> defer.Deferred:
    """Fires once ``predicate()`` holds (polled on the reactor), fails after ``timeout`` seconds."""
    deadline: Optional[float] = None

    def poll() -> Any:
        nonlocal deadline
        if deadline is None:
            deadline = reactor.seconds() + timeout
        if predicate():
            return None
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in %s s" % timeout)
        return task.deferLater(reactor, 0.01, poll)

    return defer.maybeDeferred(poll)
