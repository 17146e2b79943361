"""One session's maildrop in PostgreSQL: the login snapshot, reads, and the UPDATE.

A :class:`PostgresMailbox` answers from its snapshot (``list_messages``, ``uidl_listing``) or hands
work to its store's worker threads and returns a Deferred (``open_message``, ``commit``). Small
messages come in batches, the next batch fetched while this one is sent; large ones through a
:class:`~twisted_pop3ng.mailbox.postgresql.chunks.ChunkReader`.

Rules of this module: no SQL (the store runs the queries); reactor thread only; every operation
first checks that the session's maildrop lock is still held (the UPDATE checks it again in
PostgreSQL).
"""

from __future__ import annotations

import io
from collections.abc import Sequence as SequenceABC
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet import defer
from zope.interface import implementer

from twisted_pop3ng.errors import MessageVanished, TemporaryFailure
from twisted_pop3ng.interfaces import IMailbox, IUIDLListing, IWholeMessageReader
from twisted_pop3ng.mailbox.postgresql.chunks import CHUNK_OCTETS, ChunkReader
from twisted_pop3ng.mailbox.postgresql.locks import LockToken
from twisted_pop3ng.model import MessageTable

#: A RETR of a small message fetches the next small messages of the snapshot with it, up to these
#: bounds, and their RETRs open them from memory without a Deferred: pipelined RETRs cost one query
#: per batch, not one thread hop and query each. (Not ``IWholeMessageReader``: its ``read_whole``
#: must answer for every message at once, which only a query could.)
BATCH_MESSAGES = 128
BATCH_OCTETS = 1 << 20
#: The -ERR [SYS/TEMP] text of a session whose maildrop lock died with its database connection.
LOCK_LOST = "The maildrop lock was lost (database connection failure): reconnect"


class _Uids(SequenceABC):
    """The UIDL column of a snapshot, made from the ids when one is asked for."""

    def __init__(self, prefix: str, ids: Sequence[int]) -> None:
        self._prefix = prefix + "."
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._prefix + str(i) for i in self._ids[index]]
        return self._prefix + str(self._ids[index])


@implementer(IMailbox, IUIDLListing, IWholeMessageReader)
class PostgresMailbox:
    """One session's locked maildrop: the login snapshot, reads through the store's workers."""

    #: Its UIDLs follow RFC 1939's rule (made so where they are made): the server need not check.
    uidls_valid = True

    def __init__(self, store: Any, username: str, token: LockToken, prefix: str,
                 ids: Sequence[int], sizes: Sequence[int]) -> None:
        self.store = store
        self.username = username
        self.token = token
        self._prefix = prefix
        self._ids = ids
        self._sizes = sizes
        self._table = MessageTable(_Uids(prefix, ids), sizes)
        #: Small messages fetched with an earlier one, by index, until the server takes them.
        self._ahead: Dict[int, bytes] = {}
        #: The next batch while a worker fetches it (its indexes, fired once they are in _ahead).
        self._pending: Any = None
        self._pending_batch: List[int] = []
        #: The index after the last message fetched ahead (or being fetched).
        self._ahead_end = 0
        self._closed = False

    def list_messages(self) -> MessageTable:
        return self._table

    def uidl_listing(self) -> bytes:
        prefix = self._prefix.encode("ascii")
        return b"".join(b"%d %s.%d\r\n" % (n, prefix, i) for n, i in enumerate(self._ids, 1))

    def _check_lock(self) -> None:
        if self._closed or not self.store.locks.holds(self.token):
            raise TemporaryFailure(LOCK_LOST)

    def read_whole(self, index: int, limit: int) -> Optional[bytes]:
        """The message when an earlier RETR fetched it along and it is shorter than ``limit``,
        else None (the server then calls :meth:`open_message`): one write, no file object."""
        self._check_lock()
        data = self._ahead.get(index)
        if data is None or len(data) >= limit:
            return None
        del self._ahead[index]
        self._read_ahead(index + 1)
        return data

    def open_message(self, index: int) -> Any:
        """A file of the message: at once when an earlier RETR fetched it along, else a Deferred."""
        self._check_lock()
        ahead = self._ahead.pop(index, None)
        if ahead is not None:
            self._read_ahead(index + 1)
            return io.BytesIO(ahead)
        if self._pending is not None and index in self._pending_batch:
            opened: Any = defer.Deferred()
            self._pending.addBoth(lambda _: defer.maybeDeferred(self.open_message, index).chainDeferred(opened))
            return opened
        message_id = self._ids[index]
        if self._sizes[index] >= CHUNK_OCTETS:
            return self.store._run(self.store._fetch_head, message_id).addCallback(self._reader, message_id)
        batch = self._batch(index)
        return self.store._run(self.store._fetch_small, [self._ids[i] for i in batch]).addCallback(
            self._fetched, index, batch)

    def _batch(self, index: int) -> List[int]:
        """``index`` and the small messages after it, within BATCH_MESSAGES and BATCH_OCTETS
        (empty when ``index`` is past the end or a large message)."""
        if index >= len(self._ids) or self._sizes[index] >= CHUNK_OCTETS:
            return []
        batch, octets = [index], self._sizes[index]
        for i in range(index + 1, min(len(self._ids), index + BATCH_MESSAGES)):
            size = self._sizes[i]
            if size >= CHUNK_OCTETS or octets + size > BATCH_OCTETS:
                break
            batch.append(i)
            octets += size
        return batch

    def _fetched(self, found: Dict[int, bytes], index: int, batch: List[int]) -> io.BytesIO:
        data = found.get(self._ids[index])
        if data is None:
            raise MessageVanished()
        self._keep(found, batch[1:])
        self._read_ahead(index + 1)
        return io.BytesIO(data)

    def _keep(self, found: Dict[int, bytes], batch: List[int]) -> None:
        if self._closed:
            return
        if len(self._ahead) > 2 * BATCH_MESSAGES:  # a client that skipped what we fetched for it
            self._ahead.clear()
        self._ahead.update((i, found[self._ids[i]]) for i in batch if self._ids[i] in found)
        self._ahead_end = max(self._ahead_end, batch[-1] + 1) if batch else self._ahead_end

    def _read_ahead(self, index: int) -> None:
        """Fetch the next batch while less than a batch's count of messages is fetched ahead of
        ``index``, so that a client pipelining RETRs finds the next messages in memory (a worker
        fetches while the reactor sends). About two batches per session are in memory at most."""
        if self._pending is not None or self._closed:
            return
        start = max(self._ahead_end, index)
        if start - index >= BATCH_MESSAGES:
            return
        batch = self._batch(start)
        if not batch:
            return

        def landed(found: Dict[int, bytes]) -> None:
            self._keep(found, batch)

        def done(_: Any) -> None:  # (a failure is not this RETR's: the message's own fetch reports it)
            self._pending, self._pending_batch = None, []

        self._ahead_end = batch[-1] + 1
        self._pending_batch = batch
        self._pending = self.store._run(self.store._fetch_small, [self._ids[i] for i in batch])
        self._pending.addCallback(landed).addBoth(done)

    def _reader(self, head: Tuple[int, bytes], message_id: int) -> ChunkReader:
        chunks, first = head
        store = self.store
        threads = store._threads
        return ChunkReader(first, chunks, lambda seq: store._fetch_chunk(message_id, seq),
                           threads.callInThread, self._check_lock)

    def commit(self, deleted: Sequence[int]) -> Any:
        self._check_lock()
        return self.store._run(self.store._commit_job, self.token, [self._ids[i] for i in deleted])

    def close(self) -> Any:
        """Unlock: a Deferred that fires once PostgreSQL released the lock (idempotent)."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        self._ahead = {}
        self._pending_batch = []
        return self.store._closed(self)
