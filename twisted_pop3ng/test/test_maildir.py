"""The maildir backend on real files: snapshot, UIDLs, sizes, index, lock, commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from twisted.trial import unittest

from twisted_pop3ng import wire
from twisted_pop3ng.errors import MailboxInUse, MessageVanished, POP3Error
from twisted_pop3ng.mailbox.maildir import store as md
from twisted_pop3ng.mailbox import MailboxSpecError, store_from_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MaildirTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.store = md.MaildirStore(os.path.join(self.root, "{user}", "Maildir"))
        self.path = self.store.path_for("alice")

    def deliver(self, data: bytes, name: str) -> str:
        return md.deliver(self.path, data, name)

    def open(self) -> md.MaildirMailbox:
        box = self.store.open_mailbox("alice")
        self.addCleanup(box.close)
        return box

    def read(self, box: md.MaildirMailbox, index: int) -> bytes:
        with box.open_message(index) as f:
            return f.read()

    def test_creates_missing_maildir(self) -> None:
        box = self.open()
        self.assertEqual(box.list_messages(), [])
        for sub in ("cur", "new", "tmp"):
            self.assertTrue(os.path.isdir(os.path.join(self.path, sub)))

    def test_sizes_uids_and_order(self) -> None:
        self.deliver(b"b\nb\n", "1700000002.b.host")
        self.deliver(b"a\r\n", "1700000001.a.host")
        box = self.open()
        self.assertEqual(box.list_messages(), [
            md.MessageInfo("1700000001.a.host", 3),
            md.MessageInfo("1700000002.b.host", 6),
        ])
        self.assertEqual(self.read(box, 1), b"b\nb\n")

    def test_w_field_gives_size_without_reading(self) -> None:
        self.deliver(b"x\n", "1700000001.x.host,S=2,W=999")
        self.assertEqual(self.open().list_messages()[0].size, 999)

    def test_uid_stable_across_rename_and_flags(self) -> None:
        name = self.deliver(b"hello\n", "1700000001.a.host")
        box = self.open()
        uid = box.list_messages()[0].uid
        # Another agent (an IMAP server) moves it to cur/ and sets flags during the session.
        os.rename(os.path.join(self.path, "new", name), os.path.join(self.path, "cur", name + ":2,S"))
        self.assertEqual(self.read(box, 0), b"hello\n")
        box.close()
        again = self.open()
        self.assertEqual(again.list_messages()[0].uid, uid)

    def test_invalid_base_names_get_digest_uids(self) -> None:
        self.deliver(b"x\n", "x" * 100)
        self.deliver(b"y\n", "caf\u00e9.host")
        uids = [m.uid for m in self.open().list_messages()]
        self.assertEqual(len(set(uids)), 2)
        for uid in uids:
            self.assertTrue(wire.is_valid_uid(uid), uid)

    def test_snapshot_ignores_later_delivery(self) -> None:
        self.deliver(b"one\n", "1700000001.a.host")
        box = self.open()
        self.deliver(b"two\n", "1700000002.b.host")
        self.assertEqual(len(box.list_messages()), 1)

    def test_commit_deletes_only_marked_and_follows_renames(self) -> None:
        first = self.deliver(b"one\n", "1700000001.a.host")
        self.deliver(b"two\n", "1700000002.b.host")
        box = self.open()
        os.rename(os.path.join(self.path, "new", first), os.path.join(self.path, "cur", first + ":2,S"))
        box.commit([0])
        self.assertEqual(os.listdir(os.path.join(self.path, "cur")), [])
        self.assertEqual(os.listdir(os.path.join(self.path, "new")), ["1700000002.b.host"])

    def test_vanished_message(self) -> None:
        name = self.deliver(b"one\n", "1700000001.a.host")
        box = self.open()
        os.unlink(os.path.join(self.path, "new", name))
        self.assertRaises(MessageVanished, box.open_message, 0)
        box.commit([0])  # already gone: the goal of the deletion is reached

    def test_index_caches_sizes_and_survives_corruption(self) -> None:
        self.deliver(b"line\n" * 10, "1700000001.a.host")
        self.open().close()
        index = os.path.join(self.path, md.INDEX_NAME)
        with open(index) as f:
            self.assertIn("60 1700000001.a.host", f.read())
        with open(index, "w") as f:
            f.write("garbage\x00\n12 x y\n")
        box = self.open()
        self.assertEqual(box.list_messages()[0].size, 60)
        box.close()  # the index is written at logout, still under the lock
        with open(index) as f:
            self.assertTrue(f.read().startswith(md.INDEX_HEADER))

    def test_second_open_is_in_use_until_closed(self) -> None:
        box = self.store.open_mailbox("alice")
        self.assertRaises(MailboxInUse, self.store.open_mailbox, "alice")
        box.close()
        self.open()

    def test_lock_across_processes_and_stale_lock_recovery(self) -> None:
        os.makedirs(self.path)
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from twisted_pop3ng.mailbox.maildir import MaildirLock
            lock = MaildirLock(sys.argv[1]); lock.acquire()
            print("locked", flush=True); time.sleep(60)
        """), self.path], stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=REPO))
        self.addCleanup(holder.kill)
        self.assertEqual(holder.stdout.readline().strip(), b"locked")
        self.assertRaises(MailboxInUse, self.store.open_mailbox, "alice")
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
        self.open()  # the dead process's lock is gone with it

    def test_read_whole_and_uidl_listing_follow_the_snapshot(self) -> None:
        self.deliver(b"one\n", "1700000001.a.host")
        self.deliver(b"two\n" * 10, "1700000002.b.host")
        box = self.open()
        self.assertEqual(box.read_whole(0, 100), b"one\n")
        self.assertIsNone(box.read_whole(1, 40))  # 40 octets: not shorter than the limit
        self.assertEqual(box.read_whole(1, 41), b"two\n" * 10)
        listing = b"1 1700000001.a.host\r\n2 1700000002.b.host\r\n"
        self.assertEqual(box.uidl_listing(), listing)
        self.assertEqual(box.uidl_listing(), listing)  # kept
        # Moved to cur/ with flags by another agent: still read, by its new name.
        os.rename(os.path.join(self.path, "new", "1700000001.a.host"),
                  os.path.join(self.path, "cur", "1700000001.a.host:2,S"))
        self.assertEqual(box.read_whole(0, 100), b"one\n")
        box.commit([0])
        box.close()
        # The next session has a new snapshot, and a new listing.
        self.deliver(b"three\n", "1700000003.c.host")
        again = self.open()
        self.assertEqual(again.uidl_listing(), b"1 1700000002.b.host\r\n2 1700000003.c.host\r\n")

    def test_read_whole_of_a_vanished_message(self) -> None:
        self.deliver(b"gone soon\n", "1700000001.a.host")
        box = self.open()
        os.unlink(os.path.join(self.path, "new", "1700000001.a.host"))
        self.assertRaises(MessageVanished, box.read_whole, 0, 100)

    def test_unsafe_user_names_refused(self) -> None:
        for user in ("..", "a/b", ".", "", "x\ny"):
            self.assertRaises(POP3Error, self.store.open_mailbox, user)
        self.assertFalse(os.path.exists(os.path.join(self.root, "Maildir")))

    def test_spec_parsing(self) -> None:
        self.assertIsInstance(store_from_spec("maildir:/x/{user}"), md.MaildirStore)
        self.assertRaises(MailboxSpecError, store_from_spec, "mbax:/x/{user}")
        self.assertRaises(ValueError, store_from_spec, "maildir:/x/no-user")
