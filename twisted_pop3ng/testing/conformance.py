"""The backend conformance suite: what every ``--mailbox`` store must do, checked through its interfaces.

A store passes when a subclass combining these mixins with ``twisted.trial.unittest.TestCase``
passes (see ``docs/backends.rst``)::

    class MyStoreTests(StoreConformanceMixin, CrossProcessConformanceMixin, unittest.TestCase):
        def make_store(self):
            self.spec = "mystore:" + self.mktemp()
            return store_from_spec(self.spec)

* :class:`StoreConformanceMixin`: every store. Snapshot semantics, wire sizes, byte-exact content,
  UIDL stability and uniqueness, commit only on ``commit()``, ``MailboxInUse`` at once, 50 MB
  streamed with bounded memory, the optional ``IWholeMessageReader``/``IUIDLListing`` consistent.
* :class:`CrossProcessConformanceMixin`: stores another process can open (``spec`` is not None):
  the lock holds across processes and dies with its holder (SIGKILL).
* :class:`ExternalRemovalConformanceMixin`: stores whose messages another agent can remove
  (a mail client on the maildir, ``DELETE`` in the database): a vanished message is an error
  the server can answer, never a crash; the other messages and QUIT unharmed.

The calls mirror the server's: ``open_mailbox`` then ``list_messages`` at once (the snapshot),
``read_whole``/``open_message`` + ``read(n)`` for RETR, ``commit(indexes)`` at QUIT only,
``close()`` at logout; each may return a Deferred (``maybeDeferred``), except ``read_whole`` and
``uidl_listing``, which the server calls synchronously. Expected wire forms are computed by a small
RFC 1939 oracle here (:func:`wire_form`), never with the server's codec.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tracemalloc
from typing import Any, Callable, Dict, Generator, List, NoReturn, Optional, Sequence, Tuple

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from twisted_pop3ng.errors import MailboxInUse, MessageVanished
from twisted_pop3ng.testing.rfc1939 import wire_message
from twisted_pop3ng.interfaces import (IMailbox, IMailboxDelivery, IMailboxStore, IUIDLListing,
                                       IWholeMessageReader)

__all__ = [
    "StoreConformanceMixin", "CrossProcessConformanceMixin", "ExternalRemovalConformanceMixin",
    "CORPUS", "wire_form", "WireFormStream", "GeneratedMessage",
]

#: Messages as a delivering MTA hands them over, by what they exercise: both line-ending forms,
#: dot lines, mbox "From " lines, 8-bit and NUL octets, a bare CR, an empty body, no final newline.
CORPUS: Dict[str, bytes] = {
    "lf": (b"From: alice@example.org\nTo: bob@example.org\nSubject: lf\n\n"
           b"body line\n.starts with a dot\n..two dots\n.\n. \nend\n"),
    "crlf": (b"From: alice@example.org\r\nSubject: crlf\r\n\r\n"
             b"body line\r\n.starts with a dot\r\n.\r\nend\r\n"),
    "from-lines": (b"From: carol@example.org\nSubject: From lines\n\n"
                   b"From the start of a line\n>From already quoted\n>>From twice\nFrom \n"
                   b"From bob@example.org Fri Dec  4 22:00:00 2026\n\nFrom after a blank line\n"),
    "starts-with-from": b"From nobody Fri Dec  4 22:00:00 2026\nSubject: first line From\n\nbody\n",
    "eight-bit": (b"Subject: =?utf-8?q?8bit?=\nContent-Transfer-Encoding: 8bit\n\n"
                  b"gr\xc3\xbc\xc3\x9fe \xff\xfe\x80\x00nul\x00\n" + bytes(range(0x80, 0x100)) + b"\n"),
    "bare-cr": b"Subject: bare CR\n\nbare\rCR inside a line\nCR at the end\r\n\r\n",
    "mixed-endings": b"Subject: mixed\r\n\nline one\r\nline two\nline three\r\n",
    "empty-body": b"Subject: empty body\n\n",
    "header-only": b"Subject: header only, no blank line\n",
    "no-final-newline": b"Subject: no final newline\n\nlast line without a newline",
    "long-line": b"Subject: long line\n\n" + b"y" * 5000 + b"\n.\n" + b"z" * 1001,
}

#: The big message: 50 MiB, streamed both ways.
BIG_SIZE = 50 << 20
#: Bound on Python allocations (all threads) while the big message is delivered or read; 16 MiB
#: leaves room for any sane chunk size and is a third of the message.
BIG_MEMORY_BOUND = 16 << 20
#: Generous bounds on waits that must end "at once" (a lock that waits instead fails after this).
PROMPT = 60.0
#: How long a lock may outlive a SIGKILLed holder while the store notices the death (a database
#: sees the broken connection asynchronously); a lock that survives this is stale.
LOCK_RELEASE_GRACE = 15.0


# -- the RFC 1939 oracle (independent of twisted_pop3ng.wire) -------------------------------------

def wire_form(stored: bytes) -> bytes:
    """The message a client stores after RETR (its length is the ``LIST``/``STAT`` size)."""
    return wire_message(stored)


class WireFormStream:
    """:func:`wire_form` of a message fed in chunks: its SHA-256 and length, without holding it."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self._carry = b""  # a CR at the end of a chunk: data, or half of a CRLF
        self._last = b""

    def _emit(self, data: bytes) -> None:
        if data:
            self.sha.update(data)
            self.size += len(data)
            self._last = data[-1:]

    def feed(self, chunk: bytes) -> None:
        data = self._carry + chunk
        self._carry = b""
        if data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        self._emit(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))

    def finish(self) -> Tuple[str, int]:
        self._emit(self._carry)
        self._carry = b""
        if self.size and self._last != b"\n":
            self._emit(b"\r\n")
        return self.sha.hexdigest(), self.size


class GeneratedMessage:
    """A deterministic message of ``size`` octets made on the fly (a binary file for
    ``deliver``), so nothing holds it whole: blocks of ~1 MiB of CRLF lines, each block numbered
    by its first line, every eighth line starting with a dot; the last line is cut at ``size``."""

    _TEMPLATE = b"".join(b"%s%05d %s\r\n" % (b"." if n % 8 == 0 else b"L", n, b"0123456789abcdef" * 4)
                         for n in range(1, 14_000))

    def __init__(self, size: int = BIG_SIZE) -> None:
        self.size = size
        self._made = 0
        self._block = b"Subject: fifty megabytes\r\n\r\n"
        self._offset = 0
        self._blocks = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._made
        n = min(n, self.size - self._made)
        parts, have = [], 0
        while have < n:
            if self._offset == len(self._block):
                self._blocks += 1
                self._block, self._offset = b"Block %06d\r\n" % self._blocks + self._TEMPLATE, 0
            piece = self._block[self._offset:self._offset + n - have]
            self._offset += len(piece)
            parts.append(piece)
            have += len(piece)
        self._made += have
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        pass

    def expected(self) -> Tuple[str, int]:
        """SHA-256 and length of the wire form of the whole message (generated again)."""
        again, oracle = GeneratedMessage(self.size), WireFormStream()
        while True:
            chunk = again.read(1 << 20)
            if not chunk:
                return oracle.finish()
            oracle.feed(chunk)


def _valid_uidl(uid: Any) -> bool:
    """RFC 1939 §7: 1 to 70 characters in 0x21-0x7E."""
    return isinstance(uid, str) and 1 <= len(uid) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in uid)


def _child_environment() -> Dict[str, str]:
    """This process's import path for a child (a third-party backend's plugin is found there too)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


class Session:
    """One opened maildrop and the snapshot ``list_messages`` gave right after the open."""

    def __init__(self, mailbox: Any, infos: Sequence[Any]) -> None:
        self.mailbox = mailbox
        self.infos = list(infos)

    @property
    def uids(self) -> List[str]:
        return [info.uid for info in self.infos]

    @property
    def sizes(self) -> List[int]:
        return [info.size for info in self.infos]


class _ConformanceBase:
    """The subclass's hooks and the helpers the mixins share."""

    #: The ``--mailbox`` value with which another process opens the same store (set it in
    #: ``make_store`` when it names a temporary directory); None for a store of this process only.
    spec: Optional[str] = None
    #: True for a store that keeps mail in this process's memory (``memory:``): delivering 50 MB
    #: into it then holds 50 MB by design, so only the read is bounded.
    stores_in_process_memory = False
    #: The messages most tests deliver. A store whose format cannot keep one of them may drop it
    #: here, saying why (mboxo cannot tell a quoted ``>From `` line from a quoted ``From `` one);
    #: "lf", "crlf", "eight-bit" and "long-line" are used by name and must stay.
    corpus: Dict[str, bytes] = CORPUS
    user = "alice"
    other_user = "bob"

    # what trial's TestCase provides (the mixins are combined with it)
    addCleanup: Callable[..., None]
    assertEqual: Callable[..., None]
    assertIn: Callable[..., None]
    assertNotIn: Callable[..., None]
    assertIsNone: Callable[..., None]
    assertLess: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    fail: Callable[..., NoReturn]

    def make_store(self) -> Any:
        """A fresh, empty store providing ``IMailboxStore`` and ``IMailboxDelivery`` (or a Deferred)."""
        raise NotImplementedError("a conformance test case must define make_store()")

    def deliver_source(self, store: Any, user: str, source: Any) -> Any:
        """Deliver the message read from the binary file ``source``; its UIDL (or a Deferred).
        Default: ``IMailboxDelivery.deliver`` in a thread (it blocks)."""
        return deferToThread(store.deliver, user, source)

    def deliver(self, store: Any, user: str, data: bytes) -> Any:
        """Deliver ``data`` (as stored: LF or CRLF lines); its UIDL (or a Deferred)."""
        return self.deliver_source(store, user, io.BytesIO(data))

    # -- helpers ----------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _store(self) -> Generator[Any, Any, Any]:
        store = yield defer.maybeDeferred(self.make_store)
        self.assertTrue(IMailboxStore.providedBy(store), "%r does not provide IMailboxStore" % (store,))
        return store

    @defer.inlineCallbacks
    def _deliver_all(self, store: Any, messages: Sequence[bytes],
                     user: Optional[str] = None) -> Generator[Any, Any, Any]:
        """Deliver in order (message 1 first); the UIDLs the store returned."""
        uids = []
        for data in messages:
            uid = yield self._prompt(defer.maybeDeferred(self.deliver, store, user or self.user, data),
                                     "deliver")
            uids.append(uid)
        return uids

    def _prompt(self, d: defer.Deferred, what: str) -> defer.Deferred:
        """``d``, failed with a clear message when it takes longer than :data:`PROMPT`."""
        def timed_out(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError):
                self.fail("%s did not finish within %d s (it must not wait for a lock)" % (what, PROMPT))
            return failure
        return d.addTimeout(PROMPT, reactor).addErrback(timed_out)

    @defer.inlineCallbacks
    def _open(self, store: Any, user: Optional[str] = None) -> Generator[Any, Any, Any]:
        """Open and list as the server's login does; closed at cleanup (close is idempotent)."""
        mailbox = yield self._prompt(defer.maybeDeferred(store.open_mailbox, user or self.user), "open_mailbox")
        self.addCleanup(defer.maybeDeferred, mailbox.close)
        self.assertTrue(IMailbox.providedBy(mailbox), "%r does not provide IMailbox" % (mailbox,))
        infos = yield defer.maybeDeferred(mailbox.list_messages)
        return Session(mailbox, infos)

    @defer.inlineCallbacks
    def _close(self, session: Session, commit: Optional[Sequence[int]] = None) -> Generator[Any, Any, Any]:
        """QUIT (commit the deletions, then close) or a dropped session (``commit`` None)."""
        if commit is not None:
            yield defer.maybeDeferred(session.mailbox.commit, list(commit))
        yield defer.maybeDeferred(session.mailbox.close)

    @defer.inlineCallbacks
    def _read(self, session: Session, index: int, chunk: int = 1 << 16) -> Generator[Any, Any, Any]:
        """The stored octets of message ``index``, read through ``open_message`` as RETR streams."""
        source = yield defer.maybeDeferred(session.mailbox.open_message, index)
        parts = []
        try:
            while True:
                data = source.read(chunk)
                if not data:
                    break
                parts.append(data)
        finally:
            source.close()
        return b"".join(parts)

    @defer.inlineCallbacks
    def _contents(self, store: Any, user: Optional[str] = None) -> Generator[Any, Any, Any]:
        """A fresh session's ``[(uid, size, stored octets)]``, the session then dropped."""
        session = yield self._open(store, user)
        result = []
        for index, info in enumerate(session.infos):
            data = yield self._read(session, index)
            result.append((info.uid, info.size, data))
        yield self._close(session)
        return result

    @defer.inlineCallbacks
    def _assert_in_use(self, store: Any, user: Optional[str] = None) -> Generator[Any, Any, Any]:
        try:
            mailbox = yield self._prompt(defer.maybeDeferred(store.open_mailbox, user or self.user),
                                         "a second open_mailbox")
        except MailboxInUse:
            return
        yield defer.maybeDeferred(mailbox.close)
        self.fail("a second open_mailbox of a locked maildrop succeeded; it must raise MailboxInUse")


class StoreConformanceMixin(_ConformanceBase):
    """What every store must do (add ``twisted.trial.unittest.TestCase`` and ``make_store``)."""

    @defer.inlineCallbacks
    def test_provides_interfaces(self) -> Generator[Any, Any, Any]:
        """A store opens maildrops and takes deliveries (LMTP and ``pop3ng deliver`` use any store)."""
        store = yield self._store()
        self.assertTrue(IMailboxDelivery.providedBy(store), "%r does not provide IMailboxDelivery" % (store,))

    @defer.inlineCallbacks
    def test_empty_maildrop(self) -> Generator[Any, Any, Any]:
        """A user who never got mail has an empty maildrop; QUIT on it works; close is idempotent."""
        store = yield self._store()
        session = yield self._open(store)
        self.assertEqual(session.infos, [])
        yield self._close(session, commit=[])
        yield defer.maybeDeferred(session.mailbox.close)
        again = yield self._open(store)
        self.assertEqual(again.infos, [])

    @defer.inlineCallbacks
    def test_delivery_order_and_uidls(self) -> Generator[Any, Any, Any]:
        """The listing is in delivery order and its UIDLs are the ones ``deliver`` returned:
        valid (1-70 characters 0x21-0x7E) and distinct."""
        store = yield self._store()
        uids = yield self._deliver_all(store, list(self.corpus.values()))
        for uid in uids:
            self.assertTrue(_valid_uidl(uid), "invalid UIDL %r" % (uid,))
        self.assertEqual(len(set(uids)), len(uids), uids)
        session = yield self._open(store)
        self.assertEqual(session.uids, uids)

    @defer.inlineCallbacks
    def test_sizes_are_wire_sizes(self) -> Generator[Any, Any, Any]:
        """LIST sizes are octets of the CRLF wire form (RFC 1939 §11), whatever the stored form."""
        store = yield self._store()
        yield self._deliver_all(store, list(self.corpus.values()))
        session = yield self._open(store)
        expected = {name: len(wire_form(data)) for name, data in self.corpus.items()}
        self.assertEqual(dict(zip(self.corpus, session.sizes)), expected)

    @defer.inlineCallbacks
    def test_content_is_exact(self) -> Generator[Any, Any, Any]:
        """open_message gives the message back exactly as delivered, as the client receives it:
        every octet, dot and "From " line, whichever line ending the store keeps."""
        store = yield self._store()
        yield self._deliver_all(store, list(self.corpus.values()))
        session = yield self._open(store)
        for index, (name, data) in enumerate(self.corpus.items()):
            stored = yield self._read(session, index)
            self.assertEqual(wire_form(stored), wire_form(data), "message %r changed" % (name,))
            self.assertEqual(len(wire_form(stored)), session.sizes[index], "size of %r" % (name,))

    @defer.inlineCallbacks
    def test_small_reads(self) -> Generator[Any, Any, Any]:
        """``read(n)`` with a small n, as a reader of any chunk size does, gives the same octets."""
        store = yield self._store()
        yield self._deliver_all(store, [CORPUS["lf"], CORPUS["long-line"]])
        session = yield self._open(store)
        for index, name in enumerate(["lf", "long-line"]):
            whole = yield self._read(session, index)
            piecewise = yield self._read(session, index, chunk=7)
            self.assertEqual(piecewise, whole)
            self.assertEqual(wire_form(piecewise), wire_form(CORPUS[name]))

    @defer.inlineCallbacks
    def test_whole_reader_agrees(self) -> Generator[Any, Any, Any]:
        """``read_whole`` (when provided) gives exactly ``open_message``'s octets when shorter than
        the limit -- or None when it has no copy at hand --, and None at the limit, synchronously
        (the server mixes both for one message)."""
        store = yield self._store()
        yield self._deliver_all(store, list(self.corpus.values()))
        session = yield self._open(store)
        if not IWholeMessageReader.providedBy(session.mailbox):
            return  # optional: the server then always streams through open_message
        for index, name in enumerate(self.corpus):
            streamed = yield self._read(session, index)
            whole = session.mailbox.read_whole(index, len(streamed) + 1)
            self.assertFalse(isinstance(whole, defer.Deferred), "read_whole must not return a Deferred")
            if whole is not None:
                self.assertEqual(whole, streamed, "read_whole of %r" % (name,))
            self.assertIsNone(session.mailbox.read_whole(index, len(streamed)),
                              "read_whole of %r at a limit of its own length" % (name,))

    @defer.inlineCallbacks
    def test_uidl_listing_agrees(self) -> Generator[Any, Any, Any]:
        """``uidl_listing`` (when provided) is the UIDL body of the snapshot, synchronously."""
        store = yield self._store()
        yield self._deliver_all(store, list(self.corpus.values())[:4])
        session = yield self._open(store)
        if not IUIDLListing.providedBy(session.mailbox):
            return  # optional: the server then formats the listing from list_messages
        yield self._deliver_all(store, [CORPUS["crlf"]])  # not part of this snapshot
        listing = session.mailbox.uidl_listing()
        self.assertEqual(listing, b"".join(b"%d %s\r\n" % (n, uid.encode("ascii"))
                                           for n, uid in enumerate(session.uids, 1)))

    @defer.inlineCallbacks
    def test_snapshot(self) -> Generator[Any, Any, Any]:
        """Mail delivered during a session is not in it (numbers, reads and QUIT still mean the
        login's messages) and appears in the next session, after the older ones."""
        store = yield self._store()
        old = yield self._deliver_all(store, [CORPUS["lf"], CORPUS["crlf"]])
        session = yield self._open(store)
        new = yield self._deliver_all(store, [CORPUS["eight-bit"]])
        self.assertEqual(session.uids, old)
        for index, name in enumerate(["lf", "crlf"]):
            data = yield self._read(session, index)
            self.assertEqual(wire_form(data), wire_form(CORPUS[name]))
        yield self._close(session, commit=[0])
        after = yield self._contents(store)
        self.assertEqual([uid for uid, _, _ in after], [old[1], new[0]])
        self.assertEqual(wire_form(after[1][2]), wire_form(CORPUS["eight-bit"]))

    @defer.inlineCallbacks
    def test_uidls_stable(self) -> Generator[Any, Any, Any]:
        """UIDLs and sizes stay the same from session to session, also after reading every message."""
        store = yield self._store()
        yield self._deliver_all(store, list(self.corpus.values()))
        first = yield self._contents(store)
        second = yield self._contents(store)
        self.assertEqual(second, first)

    @defer.inlineCallbacks
    def test_uidls_never_reused(self) -> Generator[Any, Any, Any]:
        """A deleted message's UIDL is never given to a later one (a client would skip it)."""
        store = yield self._store()
        seen = yield self._deliver_all(store, [CORPUS["lf"]] * 3)
        for _ in range(3):
            session = yield self._open(store)
            yield self._close(session, commit=range(len(session.infos)))
            fresh = yield self._deliver_all(store, [CORPUS["lf"]] * 3)
            self.assertEqual(set(fresh) & set(seen), set(), "UIDLs reused after deletion")
            seen += fresh
        session = yield self._open(store)
        self.assertEqual(session.uids, seen[-3:])

    @defer.inlineCallbacks
    def test_drop_commits_nothing(self) -> Generator[Any, Any, Any]:
        """A session that ends without QUIT (``close`` without ``commit``) changes nothing."""
        store = yield self._store()
        yield self._deliver_all(store, list(self.corpus.values())[:4])
        before = yield self._contents(store)
        session = yield self._open(store)
        for index in range(len(session.infos)):
            yield self._read(session, index)
        yield self._close(session)
        after = yield self._contents(store)
        self.assertEqual(after, before)

    @defer.inlineCallbacks
    def test_commit_deletes_exactly(self) -> Generator[Any, Any, Any]:
        """``commit`` removes exactly the given messages; the others keep UIDL, size and content."""
        store = yield self._store()
        yield self._deliver_all(store, list(self.corpus.values())[:5])
        before = yield self._contents(store)
        session = yield self._open(store)
        yield self._close(session, commit=[1, 3])
        after = yield self._contents(store)
        self.assertEqual(after, [before[0], before[2], before[4]])

    @defer.inlineCallbacks
    def test_commit_nothing(self) -> Generator[Any, Any, Any]:
        """QUIT without DELE (``commit([])``) changes nothing."""
        store = yield self._store()
        yield self._deliver_all(store, list(self.corpus.values())[:3])
        before = yield self._contents(store)
        session = yield self._open(store)
        yield self._close(session, commit=[])
        after = yield self._contents(store)
        self.assertEqual(after, before)

    @defer.inlineCallbacks
    def test_maildrops_are_separate(self) -> Generator[Any, Any, Any]:
        """One user's mail, deletions and lock do not touch another's."""
        store = yield self._store()
        yield self._deliver_all(store, [CORPUS["lf"]], user=self.user)
        yield self._deliver_all(store, [CORPUS["crlf"], CORPUS["eight-bit"]], user=self.other_user)
        session = yield self._open(store)
        other = yield self._open(store, self.other_user)
        self.assertEqual(len(session.infos), 1)
        self.assertEqual(len(other.infos), 2)
        yield self._close(session, commit=[0])
        yield self._close(other)
        others = yield self._contents(store, self.other_user)
        self.assertEqual([wire_form(data) for _, _, data in others],
                         [wire_form(CORPUS["crlf"]), wire_form(CORPUS["eight-bit"])])

    @defer.inlineCallbacks
    def test_in_use_at_once(self) -> Generator[Any, Any, Any]:
        """A second open of a held maildrop raises MailboxInUse at once, harms nothing, and the
        maildrop opens again once the holder closed it."""
        store = yield self._store()
        yield self._deliver_all(store, [CORPUS["lf"], CORPUS["crlf"]])
        session = yield self._open(store)
        yield self._assert_in_use(store)
        yield self._assert_in_use(store)
        data = yield self._read(session, 1)
        self.assertEqual(wire_form(data), wire_form(CORPUS["crlf"]))
        yield self._close(session, commit=[0])
        again = yield self._open(store)
        self.assertEqual(len(again.infos), 1)

    @defer.inlineCallbacks
    def test_delivery_while_locked(self) -> Generator[Any, Any, Any]:
        """Delivery never waits for the maildrop lock."""
        store = yield self._store()
        session = yield self._open(store)
        uids = yield self._deliver_all(store, [CORPUS["lf"]])
        yield self._close(session)
        again = yield self._open(store)
        self.assertEqual(again.uids, uids)

    @defer.inlineCallbacks
    def test_fifty_megabytes_streamed(self) -> Generator[Any, Any, Any]:
        """50 MiB go in through ``deliver`` and out through ``open_message`` intact, with Python
        allocations (all threads) bounded well below the message's size both ways."""
        store = yield self._store()
        message = GeneratedMessage()
        expected = message.expected()
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        try:
            yield self._prompt(defer.maybeDeferred(self.deliver_source, store, self.user, message),
                               "delivering 50 MiB")
            delivery_peak = tracemalloc.get_traced_memory()[1]
            session = yield self._open(store)
            self.assertEqual(session.sizes, [expected[1]])
            tracemalloc.reset_peak()
            # (what is traced now stays: the message itself, for a store in this process's memory)
            before_read = tracemalloc.get_traced_memory()[0]
            source = yield defer.maybeDeferred(session.mailbox.open_message, 0)
            oracle = WireFormStream()
            try:
                while True:
                    chunk = source.read(1 << 16)
                    if not chunk:
                        break
                    oracle.feed(chunk)
            finally:
                source.close()
            read_peak = tracemalloc.get_traced_memory()[1] - before_read
        finally:
            tracemalloc.stop()
        self.assertEqual(oracle.finish(), expected)
        self.assertLess(read_peak, BIG_MEMORY_BOUND, "reading 50 MiB held %d octets" % (read_peak,))
        if not self.stores_in_process_memory:
            self.assertLess(delivery_peak, BIG_MEMORY_BOUND,
                            "delivering 50 MiB held %d octets" % (delivery_peak,))


class ExternalRemovalConformanceMixin(_ConformanceBase):
    """For stores whose messages another agent can remove while a session holds the maildrop."""

    def remove_behind_back(self, store: Any, user: str, uid: str) -> Any:
        """Remove message ``uid`` the way another agent would (unlink the file, ``DELETE`` the
        row), bypassing the lock; may return a Deferred."""
        raise NotImplementedError("ExternalRemovalConformanceMixin needs remove_behind_back()")

    @defer.inlineCallbacks
    def test_vanished_message(self) -> Generator[Any, Any, Any]:
        """Reading a message removed behind the session's back raises MessageVanished (or
        OSError), which the server answers with -ERR; the other messages stay readable and QUIT
        deleting the vanished one succeeds."""
        store = yield self._store()
        uids = yield self._deliver_all(store, [CORPUS["lf"], CORPUS["crlf"], CORPUS["eight-bit"]])
        session = yield self._open(store)
        yield defer.maybeDeferred(self.remove_behind_back, store, self.user, uids[1])
        if IWholeMessageReader.providedBy(session.mailbox):
            try:
                whole = session.mailbox.read_whole(1, 1 << 20)
            except (MessageVanished, OSError):
                pass
            else:
                # None (stream it: open_message then says) or, from a copy taken with the
                # snapshot, the message exactly as listed -- never other bytes.
                if whole is not None:
                    self.assertEqual(wire_form(whole), wire_form(CORPUS["crlf"]))
        try:
            yield self._read(session, 1)
        except (MessageVanished, OSError):
            pass
        else:
            self.fail("open_message of a removed message did not raise MessageVanished or OSError")
        data = yield self._read(session, 2)
        self.assertEqual(wire_form(data), wire_form(CORPUS["eight-bit"]))
        yield self._close(session, commit=[1])
        after = yield self._contents(store)
        self.assertEqual([uid for uid, _, _ in after], [uids[0], uids[2]])


class LockHolder:
    """A ``python -m twisted_pop3ng.testing.lockholder SPEC USER`` child process."""

    def __init__(self, spec: str, user: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "twisted_pop3ng.testing.lockholder", spec, user],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_environment())

    def first_line(self) -> defer.Deferred:
        """The holder's report: ``locked N UID...``, ``in-use`` or ``error ...`` (in a thread:
        the reactor keeps running for stores that need it)."""
        assert self.process.stdout is not None
        return deferToThread(self.process.stdout.readline).addCallback(
            lambda line: line.decode("utf-8", "replace").strip())

    def release(self) -> defer.Deferred:
        """Close its stdin: it closes the maildrop and exits; its exit status and last output."""
        process, stdout, stderr = self.process, self.process.stdout, self.process.stderr
        assert process.stdin is not None and stdout is not None and stderr is not None
        process.stdin.close()

        def finish() -> Tuple[bytes, bytes]:
            out, err = stdout.read(), stderr.read()  # (a few lines at most)
            process.wait()
            return out, err
        return deferToThread(finish)

    def kill(self) -> defer.Deferred:
        """SIGKILL: nothing of the holder runs any more; fires once it is reaped."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        return deferToThread(self.process.wait)

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read().decode("utf-8", "replace")

    def cleanup(self) -> defer.Deferred:
        d = self.kill()

        def close_pipes(result: Any) -> Any:
            for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
                if pipe is not None and not pipe.closed:
                    pipe.close()
            return result
        return d.addBoth(close_pipes)


class CrossProcessConformanceMixin(_ConformanceBase):
    """For stores another process opens through ``spec`` (set in ``make_store``): the maildrop
    lock holds across processes and dies with the process holding it."""

    def _holder(self) -> LockHolder:
        if self.spec is None:
            self.fail("CrossProcessConformanceMixin needs self.spec, the --mailbox value of the store")
        holder = LockHolder(self.spec, self.user)
        self.addCleanup(holder.cleanup)
        return holder

    @defer.inlineCallbacks
    def _holding(self, holder: LockHolder) -> Generator[Any, Any, Any]:
        line = yield self._prompt(holder.first_line(), "the lock holder process")
        if not line.startswith("locked "):
            yield holder.kill()
            self.fail("the lock holder did not get the lock: %r %s" % (line, holder.stderr()))
        return line.split()[2:]

    @defer.inlineCallbacks
    def test_lock_held_by_another_process(self) -> Generator[Any, Any, Any]:
        """While another process holds the maildrop, open_mailbox raises MailboxInUse at once and
        delivery still works; once it closes the maildrop, the maildrop opens with all the mail."""
        store = yield self._store()
        uids = yield self._deliver_all(store, [CORPUS["lf"], CORPUS["crlf"]])
        holder = self._holder()
        listed = yield self._holding(holder)
        self.assertEqual(listed, uids, "the other process saw another maildrop (is spec the same store?)")
        yield self._assert_in_use(store)
        more = yield self._deliver_all(store, [CORPUS["eight-bit"]])
        out, err = yield self._prompt(holder.release(), "the lock holder's exit")
        self.assertEqual(holder.process.returncode, 0, err)
        self.assertIn(b"released", out)
        session = yield self._open(store)
        self.assertEqual(session.uids, uids + more)

    @defer.inlineCallbacks
    def test_in_use_seen_by_another_process(self) -> Generator[Any, Any, Any]:
        """A maildrop held here is MailboxInUse for another process too."""
        store = yield self._store()
        session = yield self._open(store)
        holder = self._holder()
        line = yield self._prompt(holder.first_line(), "the lock holder process")
        self.assertEqual(line, "in-use")
        status = yield self._prompt(deferToThread(holder.process.wait), "the lock holder's exit")
        self.assertEqual(status, 75, holder.stderr())  # EX_TEMPFAIL
        yield self._close(session)

    @defer.inlineCallbacks
    def test_lock_dies_with_its_process(self) -> Generator[Any, Any, Any]:
        """SIGKILL of the process holding the maildrop frees the lock (no stale lock) and loses
        nothing: the next open succeeds with all the mail."""
        store = yield self._store()
        uids = yield self._deliver_all(store, [CORPUS["lf"], CORPUS["crlf"]])
        holder = self._holder()
        yield self._holding(holder)
        yield holder.kill()
        session = yield self._open_after_death(store)
        self.assertEqual(session.uids, uids)
        yield self._close(session, commit=[0])
        after = yield self._contents(store)
        self.assertEqual([uid for uid, _, _ in after], uids[1:])

    @defer.inlineCallbacks
    def _open_after_death(self, store: Any) -> Generator[Any, Any, Any]:
        """Open once the holder is reaped; a store whose lock lives elsewhere (a database sees the
        broken connection a moment later) gets :data:`LOCK_RELEASE_GRACE` seconds."""
        deadline = reactor.seconds() + LOCK_RELEASE_GRACE
        delay = 0.01
        while True:
            try:
                session = yield self._open(store)
            except MailboxInUse:
                if reactor.seconds() > deadline:
                    self.fail("the maildrop is still locked %d s after its holder was killed"
                              % (LOCK_RELEASE_GRACE,))
                yield deferLater(delay)
                delay = min(delay * 2, 0.5)
                continue
            return session


def deferLater(seconds: float) -> defer.Deferred:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
