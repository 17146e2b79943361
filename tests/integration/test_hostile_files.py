"""Black-box: files a local user controls in their maildir cannot hang or mislead the server.

Audit findings F8 (the index read), F9 (a FIFO or a huge sparse file in cur/ or new/) and F10
(the maildir path itself a symlink to another user's). Each test starts its own ``twistd
pop3ng`` (one test stops it with SIGTERM) and talks to it from remote loopback addresses over
POP3S, as a client on another host would. The tests run as root here, like the server, so "the
user's" symlinks are given to another owner (``lchown``) where that matters.

Rules of this module: assertions are on replies and on the server staying responsive, with
socket timeouts as generous bounds, never on measured durations.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import unittest

from .sasl_clients import connect_from
from .support import ServerProcess, Session, start_server

USERS = {"alice": "alice's long password", "bob": "bob's long password"}
#: An unprivileged owner for the links "the user" makes (as root, the tests' own would be root's).
NOBODY = 65534


def message(i: int) -> bytes:
    return b"Subject: message %d\r\n\r\nbody of message %d\r\n" % (i, i)


class HostileFilesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = tempfile.mkdtemp(prefix="pop3ng-hostile-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.server: ServerProcess = start_server(self.root, users=dict(USERS))
        self.addCleanup(self.server.stop)
        self.sessions: list = []
        self.addCleanup(lambda: [s.close() for s in self.sessions])

    def login(self, user: str, source: str) -> Session:
        """A POP3S session from ``source`` (a remote peer), logged in as ``user``."""
        s = connect_from(self.server, source, tls=True)
        s.sock.settimeout(20)
        self.sessions.append(s)
        reply = s.login(user.encode(), USERS[user].encode())
        self.assertTrue(reply.startswith(b"+OK"), reply)
        return s

    def retr_works(self, user: str, source: str, expected: bytes) -> None:
        """A normal session: log in, RETR 1 gets ``expected``, QUIT."""
        s = self.login(user, source)
        reply = s.command(b"RETR 1")
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertEqual(s.body(), expected + b".\r\n")
        self.assertTrue(s.command(b"QUIT").startswith(b"+OK"))

    def assertNoTraceback(self) -> None:
        self.assertNotIn("Traceback", self.server.log())

    # -- F9 ---------------------------------------------------------------------------------------

    def test_fifo_in_cur_is_refused_while_others_are_served_and_sigterm_stops(self) -> None:
        # alice's message becomes a FIFO after her login (so it is in her snapshot); RETR of it
        # must not block the server: -ERR [SYS/PERM] for it, bob served meanwhile, SIGTERM works
        name = self.server.deliver("alice", message(1), name="1700000000.M1P1.alice")
        self.server.deliver("bob", message(2), name="1700000000.M2P1.bob")
        alice = self.login("alice", "127.0.0.2")
        self.assertTrue(alice.command(b"STAT").startswith(b"+OK 1 "))
        path = os.path.join(self.server.maildir("alice"), "new", name)
        os.unlink(path)
        os.mkfifo(path)
        alice.send(b"RETR 1\r\n")  # before the fix the open() of the FIFO blocked the reactor
        self.retr_works("bob", "127.0.0.3", message(2))
        reply = alice.line()
        self.assertTrue(reply.startswith(b"-ERR [SYS/PERM]"), reply)
        self.assertTrue(alice.command(b"NOOP").startswith(b"+OK"))  # her session goes on
        self.server.process.send_signal(signal.SIGTERM)
        try:
            self.server.process.wait(30)
        except subprocess.TimeoutExpired:
            self.fail("SIGTERM did not stop the server:\n" + self.server.log())
        self.assertNoTraceback()

    def test_fifo_planted_before_login_is_not_a_message(self) -> None:
        self.server.deliver("alice", message(1), name="1700000001.M1P1.real")
        maildir = self.server.maildir("alice")
        os.mkfifo(os.path.join(maildir, "cur", "1700000000.M1P1.fifo:2,S"))
        # a FIFO someone holds open for writing (reads would fail with EAGAIN, not end)
        writer_path = os.path.join(maildir, "new", "1700000002.M1P1.fifo")
        os.mkfifo(writer_path)
        reader = os.open(writer_path, os.O_RDONLY | os.O_NONBLOCK)
        writer = os.open(writer_path, os.O_WRONLY)
        self.addCleanup(os.close, reader)
        self.addCleanup(os.close, writer)
        s = self.login("alice", "127.0.0.2")
        self.assertEqual(s.command(b"STAT"), b"+OK 1 %d\r\n" % len(message(1)))
        self.assertTrue(s.command(b"UIDL").startswith(b"+OK"))
        self.assertEqual(s.body(), b"1 1700000001.M1P1.real\r\n.\r\n")
        reply = s.command(b"RETR 1")
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertEqual(s.body(), message(1) + b".\r\n")
        self.assertNoTraceback()

    def test_huge_sparse_file_does_not_stall_the_server(self) -> None:
        # 200 GB that use no disk: before the fix the cold scan read them all during the login
        self.server.deliver("alice", message(1), name="1700000000.M1P1.real")
        self.server.deliver("bob", message(2), name="1700000000.M2P1.bob")
        sparse = os.path.join(self.server.maildir("alice"), "cur", "1700000001.M1P1.sparse:2,S")
        with open(sparse, "wb") as f:
            f.truncate(200 << 30)
        alice = self.login("alice", "127.0.0.2")
        self.assertEqual(alice.command(b"STAT"), b"+OK 2 %d\r\n" % (len(message(1)) + (200 << 30)))
        self.assertEqual(alice.command(b"LIST 2"), b"+OK 2 %d\r\n" % (200 << 30))
        self.retr_works("bob", "127.0.0.3", message(2))
        reply = alice.command(b"RETR 1")
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertEqual(alice.body(), message(1) + b".\r\n")
        self.assertTrue(alice.command(b"QUIT").startswith(b"+OK"))
        self.assertNoTraceback()

    # -- F8 ---------------------------------------------------------------------------------------

    def test_index_that_is_a_fifo_or_a_symlink_to_dev_zero_is_ignored(self) -> None:
        # the first login of a maildir in a server process reads its index file
        for user, source, plant in (("alice", "127.0.0.2", "fifo"), ("bob", "127.0.0.3", "zero")):
            maildir = self.server.maildir(user)
            self.server.deliver(user, message(1), name="1700000000.M1P1." + user)
            index = os.path.join(maildir, "pop3ng-index")
            if plant == "fifo":
                os.mkfifo(index)
            else:
                os.symlink("/dev/zero", index)
            self.retr_works(user, source, message(1))
            # the server replaced it with a real index at logout (rename: nothing written through)
            self.assertFalse(os.path.islink(index))
            with open(index, "rb") as f:
                self.assertTrue(f.read().startswith(b"pop3ng-index 2\n"))
        self.assertNoTraceback()

    # -- F10 --------------------------------------------------------------------------------------

    def test_maildir_symlinked_to_another_users_is_refused(self) -> None:
        # alice (owning the directory her maildir is in) replaces her maildir with a symlink to
        # bob's: before the fix she could list, read and delete bob's mail
        if os.geteuid() != 0:
            self.skipTest("two owners are needed (the server's and alice's): run as root")
        self.server.deliver("bob", message(2), name="1700000000.M2P1.bob")
        alice_dir = os.path.dirname(self.server.maildir("alice"))
        os.makedirs(alice_dir)
        link = os.path.join(alice_dir, "Maildir")
        os.symlink(self.server.maildir("bob"), link)
        os.lchown(link, NOBODY, NOBODY)  # alice's link, not root's
        s = connect_from(self.server, "127.0.0.2", tls=True)
        self.sessions.append(s)
        s.sock.settimeout(20)
        reply = s.login(b"alice", USERS["alice"].encode())
        self.assertTrue(reply.startswith(b"-ERR [SYS/PERM]"), reply)
        self.assertNotIn(b"1700000000.M2P1.bob", s.buffer)
        self.retr_works("bob", "127.0.0.3", message(2))  # bob's mail is still there
        self.assertNoTraceback()

