"""The maildir commit path (RFC 1939 UPDATE) on real files: what is on disk after QUIT, after a
hang-up, after another agent moved or removed messages, and the order of unlink, fsync and index
write that makes a crash lose no deletion and resurrect no message. Written to kill the mutants
that survived the other maildir tests (cosmic-ray, see ``docs/`` "Mutation testing")."""

from __future__ import annotations

import os
import stat
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

from twisted.trial import unittest

from twisted_pop3ng.mailbox.maildir import index as mi
from twisted_pop3ng.mailbox.maildir import store as md
from twisted_pop3ng.testing import SessionDriver
from twisted_pop3ng.testing.rfc1939 import wire_message
from twisted_pop3ng.test.maildir_fixture import alice_maildir

MESSAGES = [(b"Subject: one\n\nfirst\n", "1700000001.a.host"),
            (b"Subject: two\r\n\r\nsecond\r\n.dot\r\n", "1700000002.b.host"),
            (b"Subject: three\n\nthird, no final newline", "1700000003.c.host")]


def fd_target(fd: int) -> str:
    return os.readlink("/proc/self/fd/%d" % fd)


class CommitTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.root, self.store, self.path = alice_maildir(self, fresh_cache=True)
        for data, name in MESSAGES:
            md.deliver(self.path, data, name)

    def on_disk(self) -> Dict[str, List[str]]:
        return {sub: sorted(os.listdir(os.path.join(self.path, sub))) for sub in ("new", "cur")}

    def move_to_cur(self, name: str, flags: str = ":2,S") -> None:
        """What an IMAP server or MUA does to a message it has seen."""
        os.rename(os.path.join(self.path, "new", name), os.path.join(self.path, "cur", name + flags))

    def session(self) -> SessionDriver:
        driver = SessionDriver(users={"alice": "secret"}, store=self.store)
        self.addCleanup(driver.close)
        driver.login("alice", "secret")
        return driver

    def record_fsyncs(self, observe: Callable[[], Any]) -> List[Tuple[str, Any]]:
        """Every fsync from now on: (what the descriptor names, ``observe()`` just before it)."""
        calls: List[Tuple[str, Any]] = []
        fsync = os.fsync

        def recording(fd: int) -> None:
            calls.append((fd_target(fd), observe()))
            fsync(fd)

        self.patch(os, "fsync", recording)
        return calls


class SessionUpdateTests(CommitTestCase):
    """What a POP3 client sees and leaves on disk."""

    def test_quit_removes_exactly_the_deleted_messages(self) -> None:
        driver = self.session()
        self.assertTrue(driver.command("DELE 1").ok)
        self.assertTrue(driver.command("DELE 3").ok)
        self.assertEqual(driver.send("QUIT"), b"+OK Logging out, messages deleted.\r\n")
        self.assertEqual(self.on_disk(), {"new": ["1700000002.b.host"], "cur": []})
        # The next session lists the survivor alone, from this process's cache and after a restart
        # (the index on disk, written from the login's snapshot, is not trusted: new/ changed).
        size = len(wire_message(MESSAGES[1][0]))
        for restart in (False, True):
            if restart:
                mi.forget()
            driver = self.session()
            self.assertEqual(driver.command("LIST").lines, [b"1 %d" % size])
            self.assertEqual(driver.command("UIDL").lines, [b"1 1700000002.b.host"])
            self.assertEqual(driver.send("QUIT"), b"+OK Logging out.\r\n")

    def test_hang_up_or_rset_deletes_nothing(self) -> None:
        driver = self.session()
        driver.command("DELE 1")
        driver.close()  # no QUIT: no UPDATE state (RFC 1939 section 6)
        driver = self.session()
        driver.command("DELE 2")
        driver.command("RSET")
        self.assertEqual(driver.send("QUIT"), b"+OK Logging out.\r\n")
        self.assertEqual(self.on_disk(), {"new": sorted(name for _, name in MESSAGES), "cur": []})

    def test_messages_moved_or_removed_by_another_agent_during_the_session(self) -> None:
        driver = self.session()
        for number in (1, 2, 3):
            driver.command("DELE %d" % number)
        self.move_to_cur("1700000001.a.host")  # seen and flagged by an IMAP server meanwhile
        self.move_to_cur("1700000002.b.host", "")  # moved to cur/ without an info part
        os.unlink(os.path.join(self.path, "new", "1700000003.c.host"))  # expunged meanwhile
        self.assertEqual(driver.send("QUIT"), b"+OK Logging out, messages deleted.\r\n")
        self.assertEqual(self.on_disk(), {"new": [], "cur": []})

    def test_no_other_message_is_taken_for_a_moved_one(self) -> None:
        # 1700000001.a.host is gone when the session deletes it; an older message seen by a MUA
        # (sorted before it), a name it is a prefix of, and a later one with flags must all stay.
        md.deliver(self.path, b"old\n", "1600000000.old.host")
        self.move_to_cur("1600000000.old.host")
        md.deliver(self.path, b"other\n", "1700000001.a.host2")
        driver = self.session()
        os.unlink(os.path.join(self.path, "new", "1700000001.a.host"))
        md.deliver(self.path, b"later\n", "1700000001.a.hostX")
        self.move_to_cur("1700000001.a.hostX")
        self.assertEqual(driver.command("UIDL 2").text, "2 1700000001.a.host")
        driver.command("DELE 2")
        self.assertEqual(driver.send("QUIT"), b"+OK Logging out, messages deleted.\r\n")
        self.assertEqual(self.on_disk(), {"new": ["1700000001.a.host2", "1700000002.b.host", "1700000003.c.host"],
                                          "cur": ["1600000000.old.host:2,S", "1700000001.a.hostX:2,S"]})


    def test_deleting_a_message_never_touches_one_named_like_its_tail(self) -> None:
        md.deliver(self.path, b"from 1992\n", "700000001.a.host")  # 1700000001.a.host minus its "1"
        driver = self.session()
        self.assertEqual(driver.command("UIDL 2").text, "2 1700000001.a.host")
        driver.command("DELE 2")
        self.assertEqual(driver.send("QUIT"), b"+OK Logging out, messages deleted.\r\n")
        self.assertEqual(self.on_disk()["new"], ["1700000002.b.host", "1700000003.c.host", "700000001.a.host"])


class CrashConsistencyTests(CommitTestCase):
    """The order of the writes: a crash (power loss) at any point leaves either the old or the new
    state of each file, and a deletion the client was told about is durable."""

    def test_deletions_are_done_before_both_directories_are_fsynced(self) -> None:
        self.move_to_cur("1700000002.b.host")
        box = self.store.open_mailbox("alice")
        self.addCleanup(box.close)
        calls = self.record_fsyncs(self.on_disk)
        box.commit([0, 1])
        fsynced = dict(calls)
        after = {"new": ["1700000003.c.host"], "cur": []}
        self.assertEqual(self.on_disk(), after)
        # Both directories reach the disk, each after every unlink in it.
        self.assertEqual(fsynced.get(os.path.join(self.path, "new")), after)
        self.assertEqual(fsynced.get(os.path.join(self.path, "cur")), after)

    def test_only_directories_a_name_left_are_fsynced(self) -> None:
        box = self.store.open_mailbox("alice")
        self.addCleanup(box.close)
        calls = self.record_fsyncs(self.on_disk)
        box.commit([0])
        self.assertEqual([name for name, _ in calls], [os.path.join(self.path, "new")])
        calls[:] = []
        box.commit([])  # nothing deleted (a QUIT after RSET): nothing to make durable
        self.assertEqual(calls, [])

    def test_index_is_fsynced_before_it_replaces_the_old_one_then_the_directory(self) -> None:
        index = os.path.join(self.path, md.INDEX_NAME)
        box = self.store.open_mailbox("alice")
        box.close()  # the first index
        with open(index, "rb") as f:
            old = f.read()
        md.deliver(self.path, b"Subject: four\n\nfourth\n", "1700000004.d.host")
        box = self.store.open_mailbox("alice")  # rescans: the index is rewritten at logout

        def index_now() -> bytes:
            with open(index, "rb") as f:
                return f.read()

        calls = self.record_fsyncs(index_now)
        box.close()
        new = index_now()
        self.assertNotEqual(new, old)
        self.assertIn(b"1700000004.d.host", new)
        targets = [target for target, _ in calls]
        temporary = [t for t in targets if t.startswith(index + ".tmp.")]
        # The new file's data is on disk while the old index is still in place, then it is renamed
        # over it and the directory holding the name is fsynced.
        self.assertEqual(len(temporary), 1, targets)
        self.assertEqual(dict(calls)[temporary[0]], old)
        self.assertEqual(dict(calls).get(self.path), new)
        self.assertLess(targets.index(temporary[0]), targets.index(self.path))
        # Only the index's own name is left: no temporary file, and the file is the owner's alone.
        self.assertEqual(sorted(n for n in os.listdir(self.path) if n.startswith(md.INDEX_NAME)), [md.INDEX_NAME])
        self.assertEqual(stat.S_IMODE(os.stat(index).st_mode), 0o600)

    def test_unchanged_snapshot_does_not_rewrite_the_index(self) -> None:
        past = time.time() - 60
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.path, sub), (past, past))
        self.store.open_mailbox("alice").close()
        index = os.path.join(self.path, md.INDEX_NAME)
        before = os.stat(index)
        box = self.store.open_mailbox("alice")
        calls = self.record_fsyncs(lambda: None)
        box.close()
        self.assertEqual(calls, [])
        self.assertEqual(os.stat(index).st_ino, before.st_ino)


class IndexWriteTests(CommitTestCase):
    """The index written at logout: a failure to write it costs a rescan, never the session, and
    it is only ever written as a new file."""

    def age_directories(self) -> None:
        past = time.time() - 60
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.path, sub), (past, past))

    def test_unwritable_index_leaves_the_session_and_no_temporary_file(self) -> None:
        os.makedirs(os.path.join(self.path, md.INDEX_NAME))  # os.replace onto it fails: EISDIR
        driver = self.session()
        driver.command("DELE 1")
        self.assertEqual(driver.send("QUIT"), b"+OK Logging out, messages deleted.\r\n")
        self.assertEqual(self.on_disk()["new"], ["1700000002.b.host", "1700000003.c.host"])
        self.assertEqual([n for n in os.listdir(self.path) if n.startswith(md.INDEX_NAME)], [md.INDEX_NAME])
        self.assertEqual(os.listdir(os.path.join(self.path, md.INDEX_NAME)), [])

    def test_a_file_planted_at_the_temporary_name_is_never_written_through(self) -> None:
        # The temporary name is random; a user who guessed it (here: the first random draw is
        # known) and linked it to a victim gets a fresh name taken instead, and the victim intact.
        victim = os.path.join(self.root, "victim")
        with open(victim, "wb") as f:
            f.write(b"root's precious file\n")
        draws = [b"\x01" * 6]
        urandom = os.urandom
        self.patch(os, "urandom", lambda n: draws.pop() if draws else urandom(n))
        index = os.path.join(self.path, md.INDEX_NAME)
        os.link(victim, "%s.tmp.%d.%s" % (index, os.getpid(), (b"\x01" * 6).hex()))
        self.age_directories()
        box = self.store.open_mailbox("alice")
        box.close()
        self.assertEqual(draws, [])
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"root's precious file\n")
        with open(index, "rb") as f:
            self.assertTrue(f.read().startswith(md.INDEX_HEADER.encode() + b"\n"))

    def test_a_name_that_looks_escaped_comes_back_from_the_index_as_it_is(self) -> None:
        # "%" is escaped in the index: a name that merely looks escaped ("%20") must not be read
        # back as another name ("a b") after a restart, when the index file is what is trusted.
        name = "1700000004.a%20b.host"
        md.deliver(self.path, b"Subject: percent\n\n", name)
        self.age_directories()
        self.session().send("QUIT")
        mi.forget()  # a restart: the next login reads the index file
        driver = self.session()
        self.assertEqual(driver.command("UIDL 4").text, "4 " + name)
        self.assertEqual(driver.command("RETR 4").lines, [b"Subject: percent", b""])


def _open_briefly(path: str) -> None:
    """Open a FIFO for writing (and close it) if someone is reading it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # (ENXIO: nobody waits for it)


class HostileDirectoryTests(CommitTestCase):
    """new/ and cur/ are the user's: what they put there during a session neither redirects the
    deletions elsewhere nor hangs the server, and the session leaves no descriptor behind."""

    timeout = 30  # (a FIFO opened without O_DIRECTORY would block for ever)

    def test_new_swapped_for_a_symlink_deletes_nothing_elsewhere(self) -> None:
        victim = os.path.join(self.root, "victim")
        os.makedirs(victim)
        with open(os.path.join(victim, "1700000001.a.host"), "wb") as f:
            f.write(b"not alice's to delete\n")
        driver = self.session()
        driver.command("DELE 1")
        new = os.path.join(self.path, "new")
        os.rename(new, new + ".real")
        os.symlink(victim, new)
        self.assertTrue(driver.send("QUIT").startswith(b"-ERR [SYS/PERM] Some deleted messages were not removed"))
        self.assertEqual(os.listdir(victim), ["1700000001.a.host"])
        # The ELOOP is the user's doing, not a bug: a warning line, no logged traceback.
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_new_swapped_for_a_fifo_is_refused_not_waited_for(self) -> None:
        driver = self.session()
        driver.command("DELE 1")
        new = os.path.join(self.path, "new")
        os.rename(new, new + ".real")
        os.mkfifo(new)
        # Opened as a directory it is refused at once; opened as a file the server would wait for
        # a writer: this one comes after 5 s, so that such a server fails instead of hanging.
        unblock = threading.Timer(5, _open_briefly, (new,))
        unblock.start()
        self.addCleanup(unblock.cancel)
        self.assertTrue(driver.send("QUIT").startswith(b"-ERR [SYS/PERM] Some deleted messages were not removed"))
        self.assertTrue(unblock.is_alive(), "the server waited on the FIFO")
        self.assertEqual(self.flushLoggedErrors(), [])  # (ENOTDIR: a warning line, no traceback)

    def test_flags_set_in_new_while_cur_is_gone(self) -> None:
        # An agent that renames in place (flags in new/) and a cur/ removed meanwhile: the message
        # is still found in new/ and deleted.
        driver = self.session()
        driver.command("DELE 1")
        os.rmdir(os.path.join(self.path, "cur"))
        new = os.path.join(self.path, "new")
        os.rename(os.path.join(new, "1700000001.a.host"), os.path.join(new, "1700000001.a.host:2,S"))
        # Nothing was removed from cur/, so only new/ is fsynced: the commit succeeded.
        self.assertTrue(driver.send("QUIT").startswith(b"+OK"))
        self.assertEqual(sorted(os.listdir(new)), ["1700000002.b.host", "1700000003.c.host"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_no_descriptor_is_left_open_after_the_session(self) -> None:
        def open_targets() -> List[str]:
            targets = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    targets.append(os.readlink("/proc/self/fd/" + fd))
                except OSError:
                    pass  # (the listing's own descriptor, closed already)
            return [t for t in targets if t.startswith(self.path)]

        before = open_targets()
        self.move_to_cur("1700000002.b.host")
        driver = self.session()
        self.assertTrue(driver.command("RETR 2").ok)
        driver.command("DELE 1")
        driver.command("DELE 2")
        self.assertTrue(open_targets())  # the session holds the maildir, new/ and cur/ open
        self.assertEqual(driver.send("QUIT"), b"+OK Logging out, messages deleted.\r\n")
        self.assertEqual(open_targets(), before)
