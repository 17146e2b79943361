"""What the PostgreSQL store does beyond the conformance suite: chunked storage and its wire sizes,
batched reads, the pool size, and sessions whose database connection or maildrop lock is lost.
Against a real PostgreSQL (:mod:`twisted_pop3ng.testing.postgresql`), a fresh database per test."""

from __future__ import annotations

import io
from typing import Any, Generator, List

import psycopg
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from twisted_pop3ng.errors import MailboxInUse, PermanentFailure, TemporaryFailure
from twisted_pop3ng.mailbox.postgresql.chunks import CHUNK_OCTETS, ChunkReader
from twisted_pop3ng.mailbox.postgresql.maildrop import BATCH_MESSAGES
from twisted_pop3ng.mailbox.postgresql.store import PostgresStore
from twisted_pop3ng.testing.postgresql import drop_database, fresh_database
from twisted_pop3ng.wire import wire_size_of


class _StoreCase(unittest.TestCase):
    pool_size = 3

    def setUp(self) -> None:
        self.dsn = fresh_database()
        self.addCleanup(drop_database, self.dsn)
        self.store = PostgresStore.from_spec("%s pool_size=%d" % (self.dsn, self.pool_size))
        self.addCleanup(self.store.stop)

    def deliver(self, user: str, data: bytes) -> defer.Deferred:
        return deferToThread(self.store.deliver, user, io.BytesIO(data))

    def sql(self, query: str, *params: Any) -> List[Any]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    @defer.inlineCallbacks
    def read(self, mailbox: Any, index: int) -> Generator[Any, Any, bytes]:
        source = yield defer.maybeDeferred(mailbox.open_message, index)
        parts = []
        while True:
            chunk = source.read(65536)
            if not chunk:
                break
            parts.append(chunk)
        source.close()
        return b"".join(parts)


class ChunkedStorageTests(_StoreCase):
    @defer.inlineCallbacks
    def test_wire_size_across_chunk_boundaries(self) -> Generator[Any, Any, None]:
        """The wire size, counted chunk by chunk during delivery, is the whole message's, whatever
        falls on a chunk boundary: a CRLF split in two, a bare CR, an LF, a missing final newline."""
        messages = []
        for tail in (b"\r\n", b"\r", b"\n", b"x"):
            head = b"Subject: boundary\n\n" + b"a" * (CHUNK_OCTETS - 20 - len(tail) + 1)
            head = head[:CHUNK_OCTETS - 1] + tail[:1]  # the chunk ends in tail's first octet
            messages.append(head + tail[1:] + b"next line\nlast line without newline")
        messages.append(b"")  # an empty message is one empty chunk
        for data in messages:
            yield self.deliver("alice", data)
        mailbox = yield self.store.open_mailbox("alice")
        self.addCleanup(mailbox.close)
        table = mailbox.list_messages()
        self.assertEqual([info.size for info in table], [wire_size_of(data) for data in messages])
        for index, data in enumerate(messages):
            read = yield self.read(mailbox, index)
            self.assertEqual(read, data)
        rows = self.sql("SELECT chunks, octets FROM messages ORDER BY id")
        self.assertEqual(rows, [(2, len(data)) for data in messages[:4]] + [(1, 0)])

    @defer.inlineCallbacks
    def test_big_message_is_stored_in_chunks(self) -> Generator[Any, Any, None]:
        data = b"".join(b"line %07d of a bigger message\n" % i for i in range(40000))
        yield self.deliver("alice", data)
        rows = self.sql("SELECT seq, length(data) FROM message_chunks ORDER BY seq")
        self.assertEqual([seq for seq, _ in rows], list(range(len(rows))))
        self.assertTrue(all(length == CHUNK_OCTETS for _, length in rows[:-1]), rows)
        self.assertEqual(sum(length for _, length in rows), len(data))

    @defer.inlineCallbacks
    def test_failed_delivery_leaves_nothing(self) -> Generator[Any, Any, None]:
        """A source that fails half-way (the LMTP client went away) leaves no message and no chunk."""
        class Failing(io.BytesIO):
            def read(self, n: int = -1) -> bytes:
                if self.tell() >= 3 * CHUNK_OCTETS:
                    raise ConnectionError("client went away")
                return super().read(n)

        with self.assertRaises(ConnectionError):
            yield deferToThread(self.store.deliver, "alice", Failing(b"x\n" * (4 * CHUNK_OCTETS)))
        self.assertEqual(self.sql("SELECT count(*) FROM messages"), [(0,)])
        self.assertEqual(self.sql("SELECT count(*) FROM message_chunks"), [(0,)])

    def test_unstorable_user_name_is_permanent(self) -> None:
        """A user name PostgreSQL cannot store (NUL) is a permanent failure (LMTP 5xx, no retry)."""
        with self.assertRaises(PermanentFailure):
            self.store.deliver("al\0ice", io.BytesIO(b"Subject: x\n\n"))

    @defer.inlineCallbacks
    def test_uidls_distinct_across_maildrops(self) -> Generator[Any, Any, None]:
        """A maildrop is made at the first delivery or login; each has its own UIDL prefix."""
        alice = yield self.deliver("alice", b"Subject: a\n\n")
        mailbox = yield self.store.open_mailbox("bob")  # first login, no mail yet
        self.assertEqual(list(mailbox.list_messages()), [])
        mailbox.close()
        bob = yield self.deliver("bob", b"Subject: b\n\n")
        self.assertNotEqual(alice.split(".")[0], bob.split(".")[0])
        self.assertEqual(sorted(row[0] for row in self.sql("SELECT username FROM maildrops")), ["alice", "bob"])


class BatchedReadTests(_StoreCase):
    @defer.inlineCallbacks
    def test_small_messages_come_in_batches(self) -> Generator[Any, Any, None]:
        """Small messages read in order (pipelined RETRs) are fetched a batch at a time, the next
        batch while the current one is sent: at most one open_message per batch waits (a
        Deferred), the others answer at once; every message comes back exact."""
        messages = [b"Subject: %d\n\nbody %d\n" % (i, i) for i in range(3 * BATCH_MESSAGES + 5)]
        for data in messages:
            yield self.deliver("alice", data)
        mailbox = yield self.store.open_mailbox("alice")
        self.addCleanup(mailbox.close)
        waited = 0
        for index, data in enumerate(messages):
            opened = mailbox.open_message(index)
            if isinstance(opened, defer.Deferred):
                waited += 1
                opened = yield opened
            self.assertEqual(opened.read(), data)
        self.assertLessEqual(waited, 5)

    @defer.inlineCallbacks
    def test_reads_out_of_order(self) -> Generator[Any, Any, None]:
        """A client that jumps around (TOP of the last message, then RETR 1) gets the right ones."""
        messages = [b"Subject: %d\n\nbody %d\n" % (i, i) for i in range(10)]
        for data in messages:
            yield self.deliver("alice", data)
        mailbox = yield self.store.open_mailbox("alice")
        self.addCleanup(mailbox.close)
        for index in (9, 0, 5, 5, 1, 9):
            data = yield self.read(mailbox, index)
            self.assertEqual(data, messages[index])


class PoolSizeTests(_StoreCase):
    pool_size = 2

    @defer.inlineCallbacks
    def test_connections_bounded_by_pool_size(self) -> Generator[Any, Any, None]:
        """Many sessions at once use pool_size connections plus the one lock connection."""
        for user in range(8):
            yield self.deliver("u%d" % user, b"Subject: hi\n\nhello\n")
        mailboxes = yield defer.gatherResults([self.store.open_mailbox("u%d" % user) for user in range(8)])
        reads = yield defer.gatherResults([self.read(mailbox, 0) for mailbox in mailboxes])
        self.assertEqual(reads, [b"Subject: hi\n\nhello\n"] * 8)
        names = self.sql("SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                         "AND pid <> pg_backend_pid()")
        self.assertEqual(sorted(name for (name,) in names), [""] * 2 + ["pop3ng locks"])
        for mailbox in mailboxes:
            mailbox.close()


class LostConnectionTests(_StoreCase):
    """A database restart or failover cuts every connection: sessions that relied on their lock end
    with TemporaryFailure ([SYS/TEMP]) and commit nothing; new sessions work again."""

    def cut_connections(self, application: str = "%") -> None:
        """Terminate the store's backends and wait until they are gone (locks released)."""
        self.sql("SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND pid <> pg_backend_pid() AND application_name LIKE %s", application)

    @defer.inlineCallbacks
    def test_commit_refused_after_lock_connection_died(self) -> Generator[Any, Any, None]:
        """Even before the process notices, the commit's own pg_locks check refuses to delete."""
        for i in range(3):
            yield self.deliver("alice", b"Subject: %d\n\n" % i)
        mailbox = yield self.store.open_mailbox("alice")
        self.cut_connections("pop3ng locks")
        with self.assertRaises(TemporaryFailure) as caught:
            yield mailbox.commit([0, 1])
        self.assertIn("lock was lost", caught.exception.text)
        mailbox.close()
        self.assertEqual(self.sql("SELECT count(*) FROM messages"), [(3,)])
        again = yield self.store.open_mailbox("alice")  # a new lock connection
        self.assertEqual(len(again.list_messages()), 3)
        yield again.commit([0])
        again.close()
        self.assertEqual(self.sql("SELECT count(*) FROM messages"), [(2,)])

    @defer.inlineCallbacks
    def test_noticed_loss_ends_reads(self) -> Generator[Any, Any, None]:
        """Once the keepalive check notices the dead lock connection, the session's reads fail."""
        yield self.deliver("alice", b"Subject: x\n\nhello\n")
        mailbox = yield self.store.open_mailbox("alice")
        self.addCleanup(mailbox.close)
        self.cut_connections("pop3ng locks")
        yield deferToThread(self.store.locks.check)
        with self.assertRaises(TemporaryFailure):
            mailbox.open_message(0)
        with self.assertRaises(TemporaryFailure):
            mailbox.commit([0])

    @defer.inlineCallbacks
    def test_pool_recovers_after_restart(self) -> Generator[Any, Any, None]:
        """Every connection cut (a restart): the next operations fail with TemporaryFailure at
        worst, never hang, and the store serves again without a restart of its own."""
        yield self.deliver("alice", b"Subject: x\n\nhello\n")
        mailbox = yield self.store.open_mailbox("alice")
        mailbox.close()
        self.cut_connections()
        outcomes = []
        for attempt in range(2 * self.pool_size + 2):
            try:
                mailbox = yield self.store.open_mailbox("alice")
            except TemporaryFailure:
                outcomes.append("temp")
                continue
            data = yield self.read(mailbox, 0)
            mailbox.close()
            outcomes.append(data)
        self.assertEqual(outcomes[-1], b"Subject: x\n\nhello\n", outcomes)


class InProcessLockTests(_StoreCase):
    @defer.inlineCallbacks
    def test_in_use_without_asking_the_database(self) -> Generator[Any, Any, None]:
        """A second login in the same process is refused synchronously (no thread hop)."""
        mailbox = yield self.store.open_mailbox("alice")
        with self.assertRaises(MailboxInUse):
            self.store.open_mailbox("alice")
        mailbox.close()
        again = yield self.store.open_mailbox("alice")  # closed: at once free again in this process
        again.close()


class TwoStoresTests(_StoreCase):
    """Two stores on one database (as two front ends): each has its own lock connection."""

    @defer.inlineCallbacks
    def test_close_fires_once_unlocked(self) -> Generator[Any, Any, None]:
        """close() returns a Deferred that fires once PostgreSQL released the lock: after it the
        other store opens the maildrop at the first attempt; before it, MailboxInUse at once."""
        other = PostgresStore.from_spec(self.dsn + " pool_size=2")
        self.addCleanup(other.stop)
        yield self.deliver("alice", b"Subject: x\n\n")
        mailbox = yield self.store.open_mailbox("alice")
        with self.assertRaises(MailboxInUse):
            yield other.open_mailbox("alice")
        yield mailbox.close()
        again = yield other.open_mailbox("alice")
        self.assertEqual(len(again.list_messages()), 1)
        with self.assertRaises(MailboxInUse):
            yield self.store.open_mailbox("alice")
        yield again.close()


class ChunkReaderTests(unittest.TestCase):
    """The reader the server streams from: fetches ahead in workers, a bounded number of chunks."""

    def test_reads_ahead_a_bounded_number(self) -> None:
        chunks = [bytes([65 + i]) * 10 for i in range(10)]
        jobs: List[Any] = []
        reader = ChunkReader(chunks[0], len(chunks), lambda seq: chunks[seq],
                             lambda f, *a: jobs.append((f, a)))
        self.assertEqual([a[0] for _, a in jobs], [1, 2, 3])
        out = []
        while True:
            for f, a in jobs:  # the "workers" run what was asked so far
                f(*a)
            jobs.clear()
            data = reader.read(4)
            if not data:
                break
            out.append(data)
        self.assertEqual(b"".join(out), b"".join(chunks))

    def test_fetch_error_reaches_the_reader(self) -> None:
        def fetch(seq: int) -> bytes:
            raise TemporaryFailure("database gone")

        reader = ChunkReader(b"first", 3, fetch, lambda f, *a: f(*a))
        self.assertEqual(reader.read(100), b"first")
        with self.assertRaises(TemporaryFailure):
            reader.read(100)
