"""The maildir backend on real files: snapshot, UIDLs, sizes, index, lock, commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Callable

from twisted.trial import unittest

from twisted_pop3ng import _maildir, wire
from twisted_pop3ng.errors import MailboxInUse, MessageVanished, POP3Error, TemporaryFailure
from twisted_pop3ng.mailbox.maildir import store as md
from twisted_pop3ng.mailbox import MailboxSpecError, store_from_spec
from twisted_pop3ng.testing import SessionDriver
from twisted_pop3ng.test.maildir_fixture import alice_maildir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class MaildirTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root, self.store, self.path = alice_maildir(self)

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

    def test_uids_are_the_names_exactly_when_they_are_valid_uids(self) -> None:
        # RFC 1939 section 7: 0x21-0x7E. "!" and "~" (the ends of the range) keep the name; a space
        # or DEL (just outside it) would break a client's UIDL parsing and gets a digest instead --
        # also when it is the only odd name of a maildir (whose names are checked all at once).
        for user, names in (("ends", ["1700000001.!a~.host", "1700000002.b.host"]),
                            ("space", ["1700000001.a b.host", "1700000002.b.host"]),
                            ("del", ["1700000001.a\x7fb.host", "1700000002.b.host"])):
            for name in names:
                md.deliver(self.store.path_for(user), b"x\n", name)
            box = self.store.open_mailbox(user)
            self.addCleanup(box.close)
            uids = [m.uid for m in box.list_messages()]
            self.assertEqual(uids[1], names[1])
            self.assertTrue(wire.is_valid_uid(uids[0]), (user, uids[0]))
            self.assertEqual(uids[0] == names[0], user == "ends", (user, uids[0]))

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


def _open_briefly(path: str) -> None:
    """Open a FIFO for writing (and close it) if someone is reading it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # (ENXIO: nobody waits for it)


class HostileFileTests(unittest.TestCase):
    """Files a local user controls in their maildir (audit F9, F10, F17, and F18's short reads):
    no hang, no truncated message sent as complete, no other user's files, no write through a
    planted link."""

    timeout = 30  # (before the fixes, opening a FIFO blocked for ever)

    def setUp(self) -> None:
        self.root, self.store, self.path = alice_maildir(self)

    def open(self, user: str = "alice") -> md.MaildirMailbox:
        box = self.store.open_mailbox(user)
        self.addCleanup(box.close)
        return box

    def assertCode(self, code: str, f: Callable[..., object], *args: object) -> POP3Error:
        error = self.assertRaises(POP3Error, f, *args)
        self.assertEqual(error.code, code, error)
        return error

    def test_fifo_message_is_refused_not_waited_for(self) -> None:
        md.deliver(self.path, b"soon a fifo\n", "1700000001.a.host")
        box = self.open()
        path = os.path.join(self.path, "new", "1700000001.a.host")
        os.unlink(path)
        os.mkfifo(path)
        # Before the fix the open() blocked until a writer came: this one comes after 5 s, so
        # that such a server fails this test instead of hanging it.
        unblock = threading.Timer(5, _open_briefly, (path,))
        unblock.start()
        self.addCleanup(unblock.cancel)
        self.assertCode("SYS/PERM", box.read_whole, 0, 1 << 16)
        self.assertCode("SYS/PERM", box.open_message, 0)

    def test_short_reads_are_not_the_end(self) -> None:
        data = b"Subject: x\n\n" + b"line\n" * 50
        md.deliver(self.path, data, "1700000001.a.host")
        box = self.open()
        real_read = os.read
        self.patch(os, "read", lambda fd, n: real_read(fd, min(n, 7)))  # (FUSE, NFS)
        self.assertEqual(box.read_whole(0, 1 << 16), data)

    def test_file_growing_while_read_is_a_temporary_failure(self) -> None:
        data = b"x" * 100
        md.deliver(self.path, data, "1700000001.a.host")
        box = self.open()
        path = os.path.join(self.path, "new", "1700000001.a.host")
        real_read = os.read
        calls = []

        def short_then_growing(fd: int, n: int) -> bytes:
            calls.append(n)
            if len(calls) == 2:
                with open(path, "ab") as f:
                    f.write(b"more")
            return real_read(fd, min(n, 10))

        self.patch(os, "read", short_then_growing)
        self.assertCode("SYS/TEMP", box.read_whole, 0, 1 << 16)

    def test_streamed_file_truncated_while_read_fails_at_its_end(self) -> None:
        data = b"y" * 1000
        md.deliver(self.path, data, "1700000001.a.host")
        box = self.open()
        with box.open_message(0) as f:
            self.assertEqual(f.read(100), data[:100])
            os.truncate(os.path.join(self.path, "new", "1700000001.a.host"), 500)
            self.assertEqual(f.read(1000), data[100:500])  # a short read is not the end...
            self.assertCode("SYS/TEMP", f.read, 1000)  # ...and the end comes too early
        with box.open_message(0) as f:  # unchanged since opened: read as usual
            self.assertEqual(f.read(), data[:500])
            self.assertEqual(f.read(10), b"")

    def make_bobs_maildir(self) -> str:
        bob = self.store.path_for("bob")
        md.deliver(bob, b"Subject: for bob only\n\n", "1700000009.bob.host")
        return bob

    def test_maildir_that_is_a_users_symlink_is_refused(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("two owners are needed: run as root")
        bob = self.make_bobs_maildir()  # (root's, as bob's would be bob's)
        os.makedirs(os.path.dirname(self.path))
        os.symlink(bob, self.path)
        os.lchown(self.path, 65534, 65534)  # alice's link
        self.assertCode("SYS/PERM", self.store.open_mailbox, "alice")
        # the user's directory itself a symlink (the part of the template with {user})
        os.unlink(self.path)
        os.rmdir(os.path.dirname(self.path))
        os.symlink(os.path.dirname(bob), os.path.dirname(self.path))
        os.lchown(os.path.dirname(self.path), 65534, 65534)
        self.assertCode("SYS/PERM", self.store.open_mailbox, "alice")
        self.assertEqual(os.listdir(os.path.join(bob, "new")), ["1700000009.bob.host"])
        # a hard link of root's symlink (fs.protected_hardlinks=0) is not root's symlink
        os.unlink(os.path.dirname(self.path))
        roots = os.path.join(self.root, "roots-link")
        os.symlink(os.path.dirname(bob), roots)
        os.link(roots, os.path.dirname(self.path), follow_symlinks=False)
        self.assertCode("SYS/PERM", self.store.open_mailbox, "alice")

    def test_users_own_symlink_to_their_own_directory_is_followed(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("two owners are needed: run as root")
        home = os.path.dirname(self.path)
        inbox = os.path.join(home, "mail", "inbox")
        md.deliver(inbox, b"mine\n", "1700000001.a.host")
        for directory in (home, os.path.join(home, "mail"), inbox):
            os.chown(directory, 65534, 65534)
        os.symlink("mail/inbox", self.path)  # ~/Maildir -> ~/mail/inbox
        os.lchown(self.path, 65534, 65534)
        self.assertEqual(self.open().read_whole(0, 100), b"mine\n")

    def test_administrators_symlink_is_followed(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("only root owns a symlink the server trusts")
        elsewhere = os.path.join(self.root, "disk2", "alice")
        md.deliver(os.path.join(elsewhere, "Maildir"), b"hello\n", "1700000001.a.host")
        os.symlink(elsewhere, os.path.dirname(self.path))  # /home/alice -> /disk2/alice
        box = self.open()
        self.assertEqual(box.read_whole(0, 100), b"hello\n")

    def test_maildir_swapped_for_a_symlink_during_the_session(self) -> None:
        bob = self.make_bobs_maildir()
        md.deliver(self.path, b"Subject: for alice\n\n", "1700000009.bob.host")  # bob's name
        box = self.open()
        moved = self.path + ".moved"
        os.rename(self.path, moved)
        os.symlink(bob, self.path)
        self.assertEqual(box.read_whole(0, 1000), b"Subject: for alice\n\n")
        box.close()
        self.assertTrue(os.path.exists(os.path.join(moved, "pop3ng-index")))
        self.assertFalse(os.path.exists(os.path.join(bob, "pop3ng-index")))

    def test_lock_file_hard_linked_to_another_file_is_refused(self) -> None:
        _maildir.make_maildir(self.path)
        victim = os.path.join(self.root, "victim")
        with open(victim, "wb") as f:
            f.write(b"root's precious file\n")
        os.link(victim, os.path.join(self.path, md.LOCK_NAME))  # fs.protected_hardlinks=0
        self.assertCode("SYS/PERM", self.store.open_mailbox, "alice")
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"root's precious file\n")

    def test_lock_file_of_another_owner_is_refused(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("only root can give a file away")
        _maildir.make_maildir(self.path)
        lock = os.path.join(self.path, md.LOCK_NAME)
        with open(lock, "wb") as f:
            f.write(b"someone else's\n")
        os.chown(lock, 65534, 65534)  # neither the server's (root) nor the maildir owner's
        self.assertCode("SYS/PERM", self.store.open_mailbox, "alice")
        os.chown(self.path, 65534, 65534)  # the maildir's owner's own lock file: fine
        self.open()

    def test_server_drops_a_session_whose_message_shrank_while_streamed(self) -> None:
        # the whole path: RETR streams a large message; the file loses its end meanwhile; the
        # client must not get a terminated (so complete-looking) message it may then DELE
        data = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * (200 * 1024)  # 3.2 MB: streamed
        name = md.deliver(self.path, data, "1700000001.a.host")
        path = os.path.join(self.path, "new", name)
        read = md.MessageFile.read
        cut: list = []

        def truncated_after_the_first_read(f: md.MessageFile, size: int = -1) -> bytes:
            chunk = read(f, size)
            if not cut:
                os.truncate(path, len(data) // 2)
                cut.append(True)
            return chunk

        self.patch(md.MessageFile, "read", truncated_after_the_first_read)
        driver = SessionDriver(users={"alice": "secret"}, store=self.store)
        driver.login("alice", "secret")
        out = driver.send("RETR 1")
        self.assertTrue(out.startswith(b"+OK"), out[:80])
        self.assertFalse(out.endswith(b"\r\n.\r\n"))
        self.assertLess(len(out), len(data))
        self.assertFalse(driver.connected)
        # The store said what happened (a TemporaryFailure): one warning line, not a traceback.
        self.assertEqual(self.flushLoggedErrors(TemporaryFailure), [])
