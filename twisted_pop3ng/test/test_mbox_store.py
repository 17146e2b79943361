"""The mbox store: locks that interoperate with MTAs, UPDATE that loses no mail, UIDLs, recovery.

The MTA is a real process (:mod:`twisted_pop3ng.test.test_mbox_mta`: Python's ``mailbox.mbox``
taking fcntl and the dotlock, retrying while they are busy); nothing is mocked.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from twisted_pop3ng._fs import create_temporary
from twisted_pop3ng.errors import MailboxInUse, MessageVanished, PermanentFailure, POP3Error, TemporaryFailure
from twisted_pop3ng.mailbox.mbox import rewrite as mbox_rewrite
from twisted_pop3ng.mailbox.mbox import store as mbox_store
from twisted_pop3ng.mailbox.mbox.locking import DotLock, WriteLock
from twisted_pop3ng.mailbox.mbox.store import MboxStore
from twisted_pop3ng.test.test_mbox_mta import mta_message
from twisted_pop3ng.testing.conformance import LockHolder, wire_form

USER = "alice"


def message(number: int, extra: bytes = b"") -> bytes:
    return b"Subject: message %d\n%s\nbody %d\nFrom a body line\n.dot\n" % (number, extra, number)


class MTA:
    """A ``test_mbox_mta`` writer process."""

    def __init__(self, test: unittest.TestCase, path: str, tag: str, count: int, hold: bool = False) -> None:
        args = [sys.executable, "-m", "twisted_pop3ng.test.test_mbox_mta", path, tag, str(count)]
        self.process = subprocess.Popen(args + (["--hold"] if hold else []), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        test.addCleanup(self.cleanup)

    def line(self) -> defer.Deferred:
        assert self.process.stdout is not None
        return deferToThread(self.process.stdout.readline).addCallback(lambda line: line.strip().decode())

    def finish(self) -> defer.Deferred:
        stdin, stdout, stderr = self.process.stdin, self.process.stdout, self.process.stderr
        assert stdin is not None and stdout is not None and stderr is not None
        stdin.close()

        def wait():
            out, err = stdout.read(), stderr.read()
            return self.process.wait(), out, err
        return deferToThread(wait)

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()


class StoreTestCase(unittest.TestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.store = MboxStore.from_spec(self.root + "/{user}?lock_timeout=20")
        self.path = self.store.path_for(USER)

    def deliver(self, *messages: bytes) -> list:
        return [self.store.deliver(USER, io.BytesIO(data)) for data in messages]

    @defer.inlineCallbacks
    def session(self):
        mailbox = yield defer.maybeDeferred(self.store.open_mailbox, USER)
        self.addCleanup(mailbox.close)
        return mailbox

    @defer.inlineCallbacks
    def contents(self):
        """[(uid, size, stored octets)] of a fresh session (dropped afterwards)."""
        mailbox = yield self.session()
        result = []
        for index, info in enumerate(mailbox.list_messages()):
            source = mailbox.open_message(index)
            result.append((info.uid, info.size, source.read(1 << 30)))
        mailbox.close()
        return result

    def disk(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()


class SpecTests(unittest.TestCase):
    def test_bad_specs(self):
        for spec, word in [("/var/mail/user", "{user}"), ("/var/mail/{user}?format=mmdf", "format"),
                           ("/var/mail/{user}?colour=red", "colour"), ("/var/mail/{user}/", "file"),
                           ("/var/mail/{user}?lock_timeout=x", "lock_timeout")]:
            error = self.assertRaises(ValueError, MboxStore.from_spec, spec)
            self.assertIn(word, str(error))

    def test_user_names_that_could_reach_other_files(self):
        store = MboxStore("/var/mail/{user}")
        for user in ("..", ".alice.pop3ng-lock", "a/b", "", "x\x00"):
            error = self.assertRaises(POP3Error, store.path_for, user)
            self.assertEqual(error.code, "SYS/PERM")

    def test_good_spec(self):
        store = MboxStore.from_spec("/var/mail/{user}?format=mboxo&lock_timeout=5")
        self.assertEqual((store.format, store.lock_timeout, store.path_for("bob")), ("mboxo", 5.0, "/var/mail/bob"))


class LockTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_in_use_at_once_in_this_process(self):
        """A second session of this process gets MailboxInUse from open_mailbox itself, before
        any thread or wait; once the first closes, the maildrop opens."""
        self.deliver(message(1))
        first = yield self.session()
        self.assertRaises(MailboxInUse, self.store.open_mailbox, USER)
        first.close()
        again = yield self.session()
        self.assertEqual(len(again.list_messages()), 1)

    @defer.inlineCallbacks
    def test_session_lock_does_not_block_delivery(self):
        """An open session leaves the MTA-facing locks free: delivery goes through, and the
        session's snapshot does not change."""
        self.deliver(message(1))
        mailbox = yield self.session()
        mta = MTA(self, self.path, "during", 1)
        status, out, err = yield mta.finish()
        self.assertEqual((status, out), (0, b"wrote 1\n"), err)
        self.assertFalse(os.path.exists(self.path + ".lock"))
        self.assertEqual(len(mailbox.list_messages()), 1)

    def test_stale_dotlock_of_a_dead_process_is_removed(self):
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        os.makedirs(self.root)
        with open(self.path + ".lock", "w") as f:
            f.write("%d\n" % dead.pid)
        self.assertEqual(len(self.deliver(message(1))), 1)
        self.assertFalse(os.path.exists(self.path + ".lock"))

    def test_old_dotlock_is_removed(self):
        """A dotlock older than five minutes is stale (liblockfile's rule), even with a live pid."""
        os.makedirs(self.root)
        with open(self.path + ".lock", "w") as f:
            f.write("1\n")
        os.utime(self.path + ".lock", (time.time() - 400, time.time() - 400))
        self.deliver(message(1))
        self.assertFalse(os.path.exists(self.path + ".lock"))

    def test_live_dotlock_is_respected(self):
        """A fresh dotlock of a live process makes delivery fail with SYS/TEMP after the lock
        timeout, writing nothing."""
        os.makedirs(self.root)
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.addCleanup(sleeper.wait)
        self.addCleanup(sleeper.kill)
        with open(self.path + ".lock", "w") as f:
            f.write("%d\n" % sleeper.pid)
        store = MboxStore.from_spec(self.root + "/{user}?lock_timeout=0.3")
        self.assertRaises(TemporaryFailure, store.deliver, USER, io.BytesIO(message(1)))
        self.assertEqual(os.path.getsize(self.path), 0)
        self.assertTrue(os.path.exists(self.path + ".lock"))

    def test_fcntl_lock_of_another_process_is_respected(self):
        """An fcntl (lockf) lock held by another process, with no dotlock: delivery waits, gives
        back the dotlock while it waits (no deadlock with fcntl-first agents) and fails after the
        timeout."""
        os.makedirs(self.root)
        open(self.path, "wb").close()
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'r+b'); "
             "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()", self.path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.addCleanup(holder.wait)
        self.addCleanup(holder.stdin.close)
        self.addCleanup(holder.stdout.close)
        self.assertEqual(holder.stdout.readline(), b"locked\n")
        store = MboxStore.from_spec(self.root + "/{user}?lock_timeout=0.3")
        self.assertRaises(TemporaryFailure, store.deliver, USER, io.BytesIO(message(1)))
        self.assertFalse(os.path.exists(self.path + ".lock"))
        self.assertEqual(os.path.getsize(self.path), 0)

    def test_write_lock_excludes_threads_of_this_process(self):
        """The fcntl lock is per open file description: a second WriteLock in this process waits
        (POSIX record locks would have let it in)."""
        os.makedirs(self.root)
        fds = [os.open(self.path, os.O_RDWR | os.O_CREAT) for _ in range(2)]
        for fd in fds:
            self.addCleanup(os.close, fd)
        with WriteLock(self.path, fds[0]):
            os.unlink(self.path + ".lock")  # only fcntl is left to stop the second
            self.assertRaises(TemporaryFailure, WriteLock(self.path, fds[1], timeout=0.2).acquire)

    def test_dotlock_contains_pid(self):
        os.makedirs(self.root)
        lock = DotLock(self.path)
        self.assertTrue(lock.try_acquire())
        with open(self.path + ".lock") as f:
            self.assertEqual(f.read(), "%d\n" % os.getpid())
        self.assertFalse(DotLock(self.path).try_acquire())
        lock.release()
        self.assertFalse(os.path.exists(self.path + ".lock"))
        self.assertEqual([name for name in os.listdir(self.root) if name.startswith(".lk")], [])

    def test_planted_lock_link_refused(self):
        os.makedirs(self.root)
        target = os.path.join(self.root, "elsewhere")
        open(target, "w").close()
        os.link(target, os.path.join(self.root, ".alice.pop3ng-lock"))
        self.assertRaises(PermanentFailure, self.store.open_mailbox, USER)


class UpdateTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_mta_mail_during_session_survives_update(self):
        """The key case: an MTA process appends mail while a session is open; UPDATE removes the
        session's deleted message and keeps the appended mail, which the next session lists after
        the kept messages, byte for byte, with the kept messages' UIDLs unchanged."""
        uids = self.deliver(message(1), message(2), message(3))
        before = yield self.contents()
        mailbox = yield self.session()
        mta = MTA(self, self.path, "mid-session", 3)
        status, out, err = yield mta.finish()
        self.assertEqual(status, 0, err)
        self.assertEqual([info.uid for info in mailbox.list_messages()], uids)
        yield mailbox.commit([0, 2])
        mailbox.close()
        after = yield self.contents()
        self.assertEqual(after[0], before[1])
        self.assertEqual([data for _, _, data in after[1:]], [mta_message("mid-session", n) for n in (1, 2, 3)])
        self.assertEqual([size for _, size, _ in after], [len(wire_form(data)) for _, _, data in after])
        self.assertEqual(len({uid for uid, _, _ in after} | set(uids)), 6)

    @defer.inlineCallbacks
    def test_mta_waits_while_update_rewrites(self):
        """While UPDATE holds the write lock the MTA retries and writes nothing; afterwards it
        appends, and no message is interleaved with another."""
        self.deliver(message(1), message(2))
        mailbox = yield self.session()
        lock = WriteLock(self.path, os.open(self.path, os.O_RDWR))
        self.addCleanup(os.close, lock.fd)
        lock.acquire()
        size = os.path.getsize(self.path)
        mta = MTA(self, self.path, "blocked", 2)
        self.assertEqual((yield mta.line()), "clash")
        self.assertEqual(os.path.getsize(self.path), size)
        # UPDATE itself waits for the same lock (in its thread) until it is given back.
        committing = mailbox.commit([0])
        lock.release()
        yield committing
        status, out, err = yield mta.finish()
        self.assertEqual((status, out), (0, b"wrote 2\n"), err)
        mailbox.close()
        after = yield self.contents()
        self.assertEqual([data for _, _, data in after],
                         [message(2), mta_message("blocked", 1), mta_message("blocked", 2)])

    @defer.inlineCallbacks
    def test_update_waits_for_the_mta(self):
        """An MTA holding its locks (fcntl + dotlock) makes UPDATE wait; UPDATE then completes and
        keeps the MTA's message."""
        self.deliver(message(1), message(2))
        mailbox = yield self.session()
        mta = MTA(self, self.path, "holder", 1, hold=True)
        self.assertEqual((yield mta.line()), "holding")
        committing = mailbox.commit([1])
        # Time for a commit that ignored the MTA's locks to finish (a working one cannot).
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.assertNoResult(committing)
        self.assertIn(b"Subject: message 2\n", self.disk())
        status, out, err = yield mta.finish()
        self.assertEqual(status, 0, err)
        yield committing
        mailbox.close()
        after = yield self.contents()
        self.assertEqual([data for _, _, data in after], [message(1), mta_message("holder", 1)])

    @defer.inlineCallbacks
    def test_concurrent_mta_and_sessions(self):
        """An MTA appending 30 messages while sessions delete mail over and over: every MTA
        message ends up in the mbox exactly once and intact."""
        self.deliver(*[message(n) for n in range(5)])
        mta = MTA(self, self.path, "stream", 30)
        for _ in range(6):
            mailbox = yield self.session()
            yield mailbox.commit([0])
            mailbox.close()
            self.deliver(message(99))
        status, out, err = yield mta.finish()
        self.assertEqual(status, 0, err)
        after = yield self.contents()
        got = [data for _, _, data in after if b"mta@example.org" in data]
        self.assertEqual(got, [mta_message("stream", n) for n in range(1, 31)])

    @defer.inlineCallbacks
    def test_drop_and_commit_nothing_leave_the_file_alone(self):
        self.deliver(message(1), message(2))
        disk = self.disk()
        mailbox = yield self.session()
        mailbox.close()
        mailbox = yield self.session()
        yield defer.maybeDeferred(mailbox.commit, [])
        mailbox.close()
        self.assertEqual(self.disk(), disk)

    @defer.inlineCallbacks
    def test_changed_messages_are_never_deleted(self):
        """Another program changed the file the session saw: UPDATE removes only messages that
        are still the same messages as the ones the session deleted; a deleted message whose
        body was changed meanwhile is kept, and so is everything else."""
        self.deliver(message(1), message(2), message(3))
        mailbox = yield self.session()
        changed = self.disk().replace(b"body 2", b"BODY 2")
        with open(self.path, "r+b") as f:
            f.write(changed)
        yield mailbox.commit([0, 1])
        mailbox.close()
        after = yield self.contents()
        self.assertEqual([data for _, _, data in after], [message(2).replace(b"body 2", b"BODY 2"), message(3)])

    @defer.inlineCallbacks
    def test_header_rewritten_in_place_allows_update(self):
        """Header octets changed in place at the same length (Dovecot's LDA updates its
        X-IMAPbase header so on every delivery): the messages are still the session's, UPDATE
        goes ahead and keeps the new header."""
        self.deliver(message(1, b"X-IMAPbase: 1 0000000001\n"), message(2))
        mailbox = yield self.session()
        changed = self.disk().replace(b"X-IMAPbase: 1 0000000001", b"X-IMAPbase: 1 0000000002")
        with open(self.path, "r+b") as f:
            f.write(changed)
        yield mailbox.commit([1])
        mailbox.close()
        after = yield self.contents()
        self.assertEqual([data for _, _, data in after], [message(1, b"X-IMAPbase: 1 0000000002\n")])

    @defer.inlineCallbacks
    def test_close_during_update_waits_for_it(self):
        """A connection lost while UPDATE runs: close() lets the rewrite finish on its
        descriptor, then releases the session lock."""
        self.deliver(message(1), message(2))
        mailbox = yield self.session()
        committing = mailbox.commit([0])
        mailbox.close()
        self.assertRaises(MailboxInUse, self.store.open_mailbox, USER)
        yield committing
        after = yield self.contents()
        self.assertEqual([data for _, _, data in after], [message(2)])

    @defer.inlineCallbacks
    def test_truncated_while_read_fails_rather_than_cut_short(self):
        """The mbox cut short by another program while a message streams: the read fails
        (the server then drops the connection) instead of ending early."""
        big = message(1, b"X-Big: yes\n") + b"0123456789abcdef\n" * 100000
        self.deliver(big, message(2))
        mailbox = yield self.session()
        source = mailbox.open_message(0)
        self.assertEqual(source.read(100), big[:100])
        os.truncate(self.path, 200000)
        self.assertRaises(TemporaryFailure, source.read, 1 << 30)
        self.assertRaises(MessageVanished, mailbox.open_message, 1)

    @defer.inlineCallbacks
    def test_replaced_mbox_is_followed(self):
        """A mail client replaced the mbox (a new file renamed over it, as Python's mailbox
        does), dropping message 1: the session reads message 2 from the new file, message 1 is
        vanished, and UPDATE deletes message 2 in the new file."""
        self.deliver(message(1), message(2), message(3))
        mailbox = yield self.session()
        disk = self.disk()
        second = disk.index(b"\nFrom MAILER-DAEMON", 1) + 1
        with open(self.path + ".new", "wb") as f:
            f.write(disk[second:])
        os.rename(self.path + ".new", self.path)
        self.assertRaises(MessageVanished, mailbox.open_message, 0)
        self.assertEqual(mailbox.open_message(1).read(1 << 20), message(2))
        yield mailbox.commit([1])
        mailbox.close()
        after = yield self.contents()
        self.assertEqual([data for _, _, data in after], [message(3)])

    @defer.inlineCallbacks
    def test_rewrite_elsewhere_in_place(self):
        """A mail client removed message 1 in place: message 1 is vanished (never another
        message's octets), message 2 is found where it moved, and UPDATE deleting message 1
        succeeds without touching the rest."""
        self.deliver(message(1), message(2))
        mailbox = yield self.session()
        disk = self.disk()
        second = disk.index(b"\nFrom MAILER-DAEMON", 1) + 1
        with open(self.path, "r+b") as f:
            f.write(disk[second:])
            f.truncate()
        self.assertRaises(MessageVanished, mailbox.open_message, 0)
        self.assertRaises(MessageVanished, mailbox.read_whole, 0, 1 << 20)
        self.assertEqual(mailbox.read_whole(1, 1 << 20), message(2))
        yield mailbox.commit([0])
        self.assertEqual(self.disk(), disk[second:])

    @defer.inlineCallbacks
    def test_update_keeps_inode_owner_and_mode(self):
        """Compaction is in place: the MTAs' open descriptors stay valid."""
        self.deliver(message(1), message(2))
        os.chmod(self.path, 0o640)
        before = os.stat(self.path)
        mailbox = yield self.session()
        yield mailbox.commit([0])
        after = os.stat(self.path)
        self.assertEqual((after.st_ino, after.st_mode, after.st_uid), (before.st_ino, before.st_mode, before.st_uid))


class CrashRecoveryTests(StoreTestCase):
    """A rewrite interrupted after its journal was written is finished by the next locker."""

    @defer.inlineCallbacks
    def crash_during_apply(self, deleted):
        """Run UPDATE until the compaction has overwritten part of the file, then "crash"."""
        self.patch(mbox_rewrite, "CHUNK", 64)
        journal = mbox_rewrite.journal_path(self.path)
        mailbox = yield self.session()
        disk = self.disk()
        calls = []

        class Crash(Exception):
            pass

        def touch():
            if os.path.exists(journal):
                calls.append(1)
                if len(calls) == 2:
                    raise Crash()
        real = mbox_rewrite.rewrite

        def crashing(*args):
            args = list(args)
            args[6] = touch
            return real(*args)
        self.patch(mbox_rewrite, "rewrite", crashing)
        self.patch(mbox_store, "rewrite", crashing)
        yield self.assertFailure(mailbox.commit(deleted), Crash)
        mailbox.close()
        self.assertTrue(os.path.exists(journal))
        damaged = self.disk()
        self.assertEqual(len(damaged), len(disk))  # (overwritten in part, not yet truncated)
        self.assertNotEqual(damaged, disk)
        self.patch(mbox_store, "rewrite", real)

    @defer.inlineCallbacks
    def test_interrupted_rewrite_is_finished(self):
        uids = self.deliver(*[message(n, b"X-Pad: %s\n" % (b"p" * 200)) for n in range(4)])
        before = yield self.contents()
        yield self.crash_during_apply([0])
        after = yield self.contents()
        self.assertEqual(after, before[1:])
        self.assertFalse(os.path.exists(mbox_rewrite.journal_path(self.path)))
        self.assertEqual([uid for uid, _, _ in after], uids[1:])

    @defer.inlineCallbacks
    def test_mail_appended_after_the_crash_is_kept(self):
        self.deliver(*[message(n, b"X-Pad: %s\n" % (b"p" * 200)) for n in range(4)])
        before = yield self.contents()
        yield self.crash_during_apply([1, 2])
        status, out, err = yield MTA(self, self.path, "after-crash", 2).finish()
        self.assertEqual(status, 0, err)
        after = yield self.contents()
        self.assertEqual(after[:2], [before[0], before[3]])
        self.assertEqual([data for _, _, data in after[2:]],
                         [mta_message("after-crash", 1), mta_message("after-crash", 2)])

    @defer.inlineCallbacks
    def test_crash_after_truncation(self):
        """Truncated but the journal not yet removed, then more mail: only bookkeeping is left."""
        self.deliver(message(1), message(2), message(3))
        before = yield self.contents()
        mailbox = yield self.session()
        real_apply = mbox_rewrite._apply

        def apply_without_cleanup(path, fd, touch, on_applied):
            def stop(uids):
                raise KeyboardInterrupt()  # (the process dies here)
            try:
                real_apply(path, fd, touch, stop)
            except KeyboardInterrupt:
                pass
        self.patch(mbox_rewrite, "_apply", apply_without_cleanup)
        yield mailbox.commit([0])
        mailbox.close()
        self.patch(mbox_rewrite, "_apply", real_apply)
        self.assertTrue(os.path.exists(mbox_rewrite.journal_path(self.path)))
        self.deliver(message(4))
        after = yield self.contents()
        self.assertEqual(after[:2], before[1:])
        self.assertEqual(after[2][2], message(4))
        self.assertFalse(os.path.exists(mbox_rewrite.journal_path(self.path)))

    @defer.inlineCallbacks
    def test_a_journal_half_written_by_a_killed_rewrite_is_removed(self):
        """kill -9 while the journal was written leaves its temporary file (the mbox is intact):
        the next rewrite removes it, and nothing else beside the mbox."""
        self.deliver(message(1), message(2))
        journal = mbox_rewrite.journal_path(self.path)
        stale, fd = create_temporary(journal)
        os.write(fd, b"half a journal")
        os.close(fd)
        stale_index, fd = create_temporary(os.path.join(os.path.dirname(self.path), ".alice.pop3ng-uidl"))
        os.close(fd)
        neighbour = os.path.join(os.path.dirname(self.path), ".other.pop3ng-journal.tmp.1.ab")
        with open(neighbour, "wb") as f:
            f.write(b"another mbox's")
        before = yield self.contents()
        mailbox = yield self.session()
        yield mailbox.commit([0])
        mailbox.close()
        self.assertFalse(os.path.exists(stale))
        self.assertFalse(os.path.exists(stale_index))
        self.assertTrue(os.path.exists(neighbour))
        after = yield self.contents()
        self.assertEqual(after, before[1:])


class UidTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_x_uidl_used_when_valid_and_unique(self):
        uids = self.deliver(message(1, b"X-UIDL: abc123\n"), message(2, b"X-UIDL: abc123\n"),
                            message(3, b"X-UIDL: has space\n"), message(4, b"X-UIDL: " + b"x" * 71 + b"\n"),
                            message(5))
        self.assertEqual(uids[0], "abc123")
        self.assertEqual(len(set(uids)), 5)
        after = yield self.contents()
        self.assertEqual([uid for uid, _, _ in after], uids)

    @defer.inlineCallbacks
    def test_uidls_survive_rewrites_and_mua_headers(self):
        """Removing other messages keeps a message's UIDL; so does a mail client adding Status:
        headers (as mutt and Dovecot do) to every message in place."""
        uids = self.deliver(message(1), message(2), message(3))
        mailbox = yield self.session()
        yield mailbox.commit([1])
        mailbox.close()
        with open(self.path, "rb") as f:
            disk = f.read()
        with open(self.path, "r+b") as f:
            f.write(disk.replace(b"\nSubject: ", b"\nStatus: RO\nSubject: "))
        after = yield self.contents()
        self.assertEqual([uid for uid, _, _ in after], [uids[0], uids[2]])

    @defer.inlineCallbacks
    def test_mta_mail_gets_persistent_uidls(self):
        os.makedirs(self.root)
        status, _, err = yield MTA(self, self.path, "m", 2).finish()
        self.assertEqual(status, 0, err)
        first = yield self.contents()
        second = yield self.contents()
        self.assertEqual(first, second)

    @defer.inlineCallbacks
    def test_lost_index_never_reuses(self):
        """With the index gone, messages get new UIDLs, never ones given before."""
        old = self.deliver(message(1), message(2))
        mailbox = yield self.session()
        yield mailbox.commit([0])
        mailbox.close()
        os.unlink(os.path.join(self.root, ".alice.pop3ng-uidl"))
        new = self.deliver(message(3))
        after = yield self.contents()
        self.assertEqual(set(uid for uid, _, _ in after) & set(old + new[:0]), set())
        self.assertEqual(len(after), 2)


class DeliveryTests(StoreTestCase):
    def test_failed_delivery_leaves_nothing(self):
        """A source that fails mid-message: the mbox is cut back to its length before."""
        self.deliver(message(1))
        disk = self.disk()

        class Broken(io.BytesIO):
            def read(self, n=-1):
                data = super().read(min(n, 100))
                if not data:
                    raise OSError("connection lost")
                return data
        self.assertRaises(OSError, self.store.deliver, USER, Broken(message(2) * 50))
        self.assertEqual(self.disk(), disk)

    def test_envelope_line(self):
        self.deliver(message(1))
        first = self.disk().split(b"\n", 1)[0]
        self.assertRegex(first.decode(), r"^From MAILER-DAEMON \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$")

    @defer.inlineCallbacks
    def test_careless_last_message_keeps_its_content(self):
        """An mbox whose last message has no empty line after it (nor a final newline): a
        delivery adds the separator, and that message reads the same as before."""
        os.makedirs(self.root)
        with open(self.path, "wb") as f:
            f.write(b"From x Thu Dec  3 10:00:00 2026\nSubject: careless\n\nno newline")
        before = yield self.contents()
        self.deliver(message(1))
        after = yield self.contents()
        self.assertEqual(wire_form(after[0][2]), wire_form(before[0][2]))
        self.assertEqual(after[0][:2], before[0][:2])
        self.assertEqual(after[1][2], message(1))

    def test_symlinked_mbox_refused(self):
        os.makedirs(self.root)
        os.symlink("/etc/passwd", self.path)
        self.assertRaises(PermanentFailure, self.store.deliver, USER, io.BytesIO(message(1)))


class KillTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_session_lock_dies_with_a_killed_server(self):
        """SIGKILL of a process holding a session: the maildrop opens at once afterwards."""
        self.deliver(message(1))
        holder = LockHolder("mbox:" + self.root + "/{user}", USER)
        self.addCleanup(holder.cleanup)
        line = yield holder.first_line()
        self.assertTrue(line.startswith("locked 1 "), line)
        self.assertRaises(MailboxInUse, self.store.open_mailbox, USER)
        yield holder.kill()
        self.assertEqual(holder.process.returncode, -signal.SIGKILL)
        mailbox = yield self.session()
        self.assertEqual(len(mailbox.list_messages()), 1)



#: A program that rewrites the mbox the way Python's ``mailbox`` (and mutt) do: under the lock,
#: into a new file renamed over the old one. It takes the lock, says "locked", waits for a line,
#: removes the first message, and lets go.
_RENAMING_WRITER = """
import mailbox, sys
box = mailbox.mbox(sys.argv[1], create=False)
box.lock()
print("locked", flush=True)
sys.stdin.readline()
box.remove(next(iter(box.keys())))
box.flush()
box.unlock()
box.close()
"""


class ReplacedWhileWaitingTests(StoreTestCase):
    """Another program renamed a rewritten copy over the mbox while we waited for its lock: what
    we then did to the descriptor we had opened went to a file no name leads to any more."""

    @defer.inlineCallbacks
    def while_replaced(self, operation):
        writer = subprocess.Popen([sys.executable, "-c", _RENAMING_WRITER, self.path], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: writer.poll() is None and writer.kill())
        line = yield deferToThread(writer.stdout.readline)
        self.assertEqual(line, b"locked\n", writer.stderr.read() if writer.poll() is not None else b"")
        running = deferToThread(operation)
        yield task.deferLater(reactor, 0.5, lambda: None)  # (it has opened the file, and waits)
        writer.stdin.write(b"go\n")
        writer.stdin.close()
        result = yield running
        yield deferToThread(writer.wait)
        writer.stdout.close()
        writer.stderr.close()
        return result

    @defer.inlineCallbacks
    def test_a_delivery_lands_in_the_new_file(self):
        self.deliver(message(1), message(2))
        yield self.while_replaced(lambda: self.store.deliver(USER, io.BytesIO(message(3))))
        after = yield self.contents()
        self.assertEqual([data for _, _, data in after], [message(2), message(3)])

    @defer.inlineCallbacks
    def test_an_update_deletes_in_the_new_file(self):
        self.deliver(message(1), message(2), message(3))
        mailbox = yield self.session()
        yield self.while_replaced(lambda: mailbox.commit_now([2]))
        mailbox.close()
        after = yield self.contents()
        self.assertEqual([data for _, _, data in after], [message(2)])


#: ``store.deliver`` of a big message in a process that SIGKILLs itself part-way through reading
#: it (so part of it is already in the mbox): what a kill or a power loss leaves.
_KILLED_DELIVERY = """
import io, os, signal, sys
from twisted_pop3ng.mailbox.mbox.store import MboxStore

KILL_AFTER, LINE_END = int(sys.argv[3]), sys.argv[4] == "lines"

class Source(io.RawIOBase):
    sent = 0
    def readable(self):
        return True
    def readinto(self, buffer):
        if self.sent >= KILL_AFTER:
            os.kill(os.getpid(), signal.SIGKILL)
        n = min(len(buffer), 1 << 16)
        buffer[:n] = b"x" * (n - 1) + (b"\\n" if LINE_END else b"x")
        self.sent += n
        return n

MboxStore.from_spec(sys.argv[1]).deliver(sys.argv[2], io.BufferedReader(Source()))
"""


class KilledDeliveryTests(StoreTestCase):
    """A delivery cut short (kill -9, a power loss) was never acknowledged: the next locker
    removes what it appended; POP3 never serves the torn message."""

    def killed_delivery(self, kill_after: int = 3 << 20, lines: bool = True) -> None:
        before = len(self.disk())
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        result = subprocess.run([sys.executable, "-c", _KILLED_DELIVERY, self.root + "/{user}", USER,
                                 str(kill_after), "lines" if lines else "one-line"],
                                capture_output=True, timeout=120,
                                env=dict(os.environ, PYTHONPATH=here))  # (this checkout's code)
        self.assertEqual(result.returncode, -signal.SIGKILL, result.stderr)
        if kill_after:
            self.assertGreater(len(self.disk()), before + (1 << 20))  # (part of it is in the file)
        else:
            self.assertEqual(len(self.disk()), before)  # (killed before it wrote anything)
        if os.path.exists(self.path + ".lock"):
            os.unlink(self.path + ".lock")  # (the dead one's dotlock, which MTAs break when stale)

    def python_appends(self, data: bytes) -> None:
        import mailbox

        box = mailbox.mbox(self.path, create=False)
        box.lock()
        box.add(b"From other@example.org Thu Jan  1 00:00:00 2026\n" + data)
        box.flush()
        box.unlock()
        box.close()

    @defer.inlineCallbacks
    def test_killed_before_writing_then_another_program_appended(self):
        """The announcement is there, the octets at its offset are another program's: it came
        first after the kill. Nothing of it may be removed."""
        self.deliver(message(1))
        self.killed_delivery(kill_after=0)
        self.python_appends(message(8))
        self.python_appends(message(9))
        self.deliver(message(2))
        after = yield self.contents()
        self.assertEqual([data for _, _, data in after], [message(1), message(8), message(9), message(2)])

    @defer.inlineCallbacks
    def test_cut_inside_a_line_then_another_programs_from_line_on_it(self):
        """An appender that adds no line break first: its From_ line sits on the cut line. The
        cut-short message ends there, and the appended ones are kept whole."""
        self.deliver(message(1))
        self.killed_delivery(lines=False)
        foreign = (b"From other@example.org Thu Jan  1 00:00:00 2026\nSubject: nine\n\nbody\n\n"
                   b"From other@example.org Thu Jan  1 00:00:01 2026\nSubject: ten\n\nbody\n\n")
        with open(self.path, "ab") as f:  # (an appender that adds no line break first)
            f.write(foreign)
        self.deliver(message(2))
        self.assertIn(foreign, self.disk())
        after = yield self.contents()
        self.assertEqual([data for _, _, data in after],
                         [message(1), b"Subject: nine\n\nbody\n", b"Subject: ten\n\nbody\n", message(2)])

    @defer.inlineCallbacks
    def test_the_next_login_removes_it(self):
        self.deliver(message(1), message(2))
        before = yield self.contents()
        self.killed_delivery()
        after = yield self.contents()
        self.assertEqual(after, before)
        self.deliver(message(3))
        after = yield self.contents()
        self.assertEqual([data for _, _, data in after], [message(1), message(2), message(3)])

    @defer.inlineCallbacks
    def test_mail_another_program_appended_after_it_is_kept(self):
        self.deliver(message(1))
        self.killed_delivery()
        self.python_appends(message(9))
        self.deliver(message(2))  # (the next locker: the unfinished one goes, the rest stays)
        after = yield self.contents()
        self.assertEqual([data for _, _, data in after], [message(1), message(9), message(2)])
