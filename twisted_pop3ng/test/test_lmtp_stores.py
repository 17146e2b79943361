"""``IMailboxDelivery.deliver`` of the maildir and memory stores: the UIDL it returns is the one
the next session reports, the size in the name is the LIST size, a source is streamed, and a
failure leaves nothing visible."""

from __future__ import annotations

import io
import os
import threading
from typing import Any, List

from twisted.trial import unittest

from twisted_pop3ng.interfaces import IMailboxDelivery
from twisted_pop3ng.mailbox.maildir.store import MaildirStore
from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.wire import wire_size_of

MESSAGE = b"Subject: hello\n\n.dot\r\nbody\n"


class ChunkedSource:
    """A source handing out ``total`` octets in pieces of at most ``piece``, failing after
    ``fail_after`` octets when given (a client gone, a disk error while reading the spool)."""

    def __init__(self, total: int, piece: int = 65536, fail_after: int = -1) -> None:
        self.left, self.piece, self.fail_after, self.given = total, piece, fail_after, 0
        self.largest_read = 0

    def read(self, size: int = -1) -> bytes:
        if 0 <= self.fail_after <= self.given:
            raise OSError(5, "Input/output error")
        n = min(self.left, self.piece, size if size >= 0 else self.piece)
        self.left -= n
        self.given += n
        self.largest_read = max(self.largest_read, n)
        return (b"0123456789abcde\n" * (n // 16 + 1))[:n]


class MaildirDeliverTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        self.store = MaildirStore(os.path.join(self.root, "{user}", "Maildir"))

    def maildir(self, sub: str) -> List[str]:
        path = os.path.join(self.root, "alice", "Maildir", sub)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def test_provides_the_interface(self) -> None:
        self.assertTrue(IMailboxDelivery.providedBy(self.store))

    def test_uid_and_size_are_what_the_next_session_reports(self) -> None:
        uid = self.store.deliver("alice", io.BytesIO(MESSAGE))  # the maildir is created
        mailbox = self.store.open_mailbox("alice")
        try:
            [info] = mailbox.list_messages()
            self.assertEqual((info.uid, info.size), (uid, wire_size_of(MESSAGE)))
            with mailbox.open_message(0) as f:
                self.assertEqual(f.read(), MESSAGE)
        finally:
            mailbox.close()
        [name] = self.maildir("new")
        self.assertTrue(name.endswith(",S=%d,W=%d" % (len(MESSAGE), wire_size_of(MESSAGE))), name)
        self.assertEqual((self.maildir("tmp"), os.stat(os.path.join(self.root, "alice", "Maildir", "new",
                                                                        name)).st_mode & 0o777), ([], 0o600))

    def test_delivery_while_a_session_holds_the_maildrop(self) -> None:
        first = self.store.deliver("alice", io.BytesIO(b"one\n"))
        mailbox = self.store.open_mailbox("alice")
        second = self.store.deliver("alice", io.BytesIO(b"two\n"))  # no lock needed
        self.assertEqual([i.uid for i in mailbox.list_messages()], [first])
        mailbox.close()
        mailbox = self.store.open_mailbox("alice")
        self.assertEqual([i.uid for i in mailbox.list_messages()], [first, second])
        mailbox.close()

    def test_streamed_in_pieces(self) -> None:
        source = ChunkedSource(5_000_000)
        self.store.deliver("alice", source)
        self.assertLessEqual(source.largest_read, 1 << 20)
        [name] = self.maildir("new")
        self.assertEqual(os.path.getsize(os.path.join(self.root, "alice", "Maildir", "new", name)), 5_000_000)

    def test_a_failure_leaves_nothing(self) -> None:
        self.assertRaises(OSError, self.store.deliver, "alice", ChunkedSource(3_000_000, fail_after=1_000_000))
        self.assertEqual((self.maildir("new"), self.maildir("tmp"), self.maildir("cur")), ([], [], []))

    def test_uids_are_unique_across_threads(self) -> None:
        uids: List[str] = []

        def deliver_some() -> None:
            for i in range(20):
                uids.append(self.store.deliver("alice", io.BytesIO(b"m%d\n" % i)))

        threads = [threading.Thread(target=deliver_some) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(set(uids)), 80)
        self.assertEqual(len(self.maildir("new")), 80)

    def test_bad_user_name_is_permanent(self) -> None:
        from twisted_pop3ng.errors import POP3Error

        error = self.assertRaises(POP3Error, self.store.deliver, "../bob", io.BytesIO(b"x\n"))
        self.assertEqual(error.code, "SYS/PERM")


class MemoryDeliverTests(unittest.TestCase):
    def test_bytes_and_files(self) -> None:
        store = MemoryStore()
        self.assertTrue(IMailboxDelivery.providedBy(store))
        first = store.deliver("alice", b"one\n")
        second = store.deliver("alice", ChunkedSource(3_000_000))
        self.assertEqual([uid for uid, _ in store.maildrops["alice"]], [first, second])
        self.assertEqual(len(store.maildrops["alice"][1][1]), 3_000_000)

    def test_deliveries_from_threads_while_sessions_commit(self) -> None:
        store = MemoryStore()
        delivered: List[str] = []
        deleted: List[str] = []
        done = threading.Event()

        def deliver_many() -> Any:
            for i in range(300):
                delivered.append(store.deliver("alice", b"new %d\n" % i))
            done.set()

        worker = threading.Thread(target=deliver_many)
        worker.start()
        while True:  # sessions deleting everything they saw, meanwhile
            mailbox = store.open_mailbox("alice")
            deleted.extend(info.uid for info in mailbox.list_messages())
            mailbox.commit(range(len(mailbox.list_messages())))
            mailbox.close()
            if done.is_set():
                break
        worker.join()
        left = [uid for uid, _ in store.maildrops.get("alice", [])]
        # Each delivery was either seen (and deleted) by a session or is still there: none lost.
        self.assertEqual(sorted(deleted + left), sorted(delivered))
