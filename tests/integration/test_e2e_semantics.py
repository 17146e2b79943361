"""Black-box conformance: session semantics on a real maildir.

Snapshot at login, stable and unique UIDLs across sessions and renames, deletions only at QUIT,
nothing committed on a drop, the maildrop lock, and storage errors that leave the session alive.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import time

from .e2e import USERS, TwistdTestCase, maildir_files, stuffed, wait_for, wire_lines, wire_message
from .support import Session


@contextlib.contextmanager
def new_swapped_for_symlink(maildir: str, elsewhere: str):
    """The user's move: ``new/`` replaced by a symlink to ``elsewhere`` (put back afterwards)."""
    new = os.path.join(maildir, "new")
    os.rename(new, new + ".orig")
    os.symlink(elsewhere, new)
    try:
        yield
    finally:
        os.unlink(new)
        os.rename(new + ".orig", new)


def message(i: int) -> bytes:
    return b"Subject: message %d\r\n\r\nbody of message %d\r\n.dot\r\n" % (i, i)


def relogin(case: TwistdTestCase, user: str, timeout: float = 10.0) -> Session:
    """Log in once the server has noticed the previous session's disconnect (which unlocks)."""
    deadline = time.monotonic() + timeout
    while True:
        s = case.session()
        s.line()
        s.command(b"USER " + user.encode())
        reply = s.command(b"PASS " + USERS[user].encode())
        if reply.startswith(b"+OK") or time.monotonic() > deadline:
            case.assertTrue(reply.startswith(b"+OK"), reply)
            return s
        s.close()
        time.sleep(0.05)


class SemanticsTests(TwistdTestCase):
    def deliver(self, user, count, start=0):
        return [self.server.deliver(user, message(start + i)) for i in range(count)]

    def quit(self, s):
        reply = s.command(b"QUIT")
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertTrue(s.closed())

    def test_snapshot(self):
        user, _ = self.fresh_user()
        self.deliver(user, 2)
        s = self.login(user)
        self.assertEqual(s.command(b"STAT")[:6], b"+OK 2 ")
        before_list = self.list_map(s)
        before_uidl = self.uidl_map(s)
        self.server.deliver(user, message(99))
        self.assertEqual(s.command(b"STAT")[:6], b"+OK 2 ")
        self.assertEqual(self.list_map(s), before_list)
        self.assertEqual(self.uidl_map(s), before_uidl)
        self.err(s, b"RETR 3")
        self.err(s, b"LIST 3")
        self.ok(s, b"DELE 1")
        self.quit(s)
        s = self.login(user)
        self.assertEqual(s.command(b"STAT")[:6], b"+OK 2 ")
        uids = self.uidl_map(s)
        self.assertEqual(uids[1], before_uidl[2])
        self.assertNotIn(uids[2], before_uidl.values())
        self.assertEqual(self.retr(s, 2), stuffed(wire_lines(message(99))))

    def test_uidl_stable_across_sessions_and_renames(self):
        user, _ = self.fresh_user()
        names = self.deliver(user, 5)
        s = self.login(user)
        first = self.uidl_map(s)
        self.quit(s)
        self.assertEqual(len(set(first.values())), 5)
        md = self.server.maildir(user)
        # another agent (an IMAP server, a MUA) marks two messages seen between sessions
        os.rename(os.path.join(md, "new", names[0]), os.path.join(md, "cur", names[0] + ":2,S"))
        os.rename(os.path.join(md, "new", names[3]), os.path.join(md, "cur", names[3] + ":2,"))
        s = self.login(user)
        self.assertEqual(self.uidl_map(s), first)
        # ... and during a session: the message stays retrievable under its UIDL
        os.rename(os.path.join(md, "new", names[1]), os.path.join(md, "cur", names[1] + ":2,S"))
        os.rename(os.path.join(md, "cur", names[0] + ":2,S"), os.path.join(md, "cur", names[0] + ":2,RS"))
        self.assertEqual(self.uidl_map(s), first)
        for i in range(5):
            self.assertEqual(self.retr(s, i + 1), stuffed(wire_lines(message(i))))
        self.ok(s, b"DELE 2")  # renamed during the session
        self.quit(s)
        s = self.login(user)
        expected = {n: first[o] for n, o in zip(range(1, 5), (1, 3, 4, 5))}
        self.assertEqual(self.uidl_map(s), expected)
        self.assertEqual(len(maildir_files(self.server, user)), 4)

    def test_uidls_unique_and_valid(self):
        user, _ = self.fresh_user()
        self.deliver(user, 60)
        # odd but legal maildir names
        self.server.deliver(user, message(100), name="1700000000.M1P1.host,S=42")
        self.server.deliver(user, message(101), name="1700000001.M2P2.h\u00e9st")
        self.server.deliver(user, message(104), name="1700000002.M3P3.host:2,S")
        self.server.deliver(user, message(102), name="a" * 100)
        self.server.deliver(user, message(103), name="b" * 100)
        s = self.login(user)
        uids = self.uidl_map(s)
        self.assertEqual(len(uids), 65)
        self.assertEqual(len(set(uids.values())), 65)
        for uid in uids.values():
            self.assertTrue(re.match(rb"\A[\x21-\x7e]{1,70}\Z", uid), uid)
        for n, uid in uids.items():
            self.assertEqual(s.command(b"UIDL %d" % n), b"+OK %d %s\r\n" % (n, uid))
        self.quit(s)
        self.assertEqual(self.uidl_map(self.login(user)), uids)

    def test_deletions_only_at_quit_and_rset(self):
        user, _ = self.fresh_user()
        self.deliver(user, 4)
        s = self.login(user)
        uids = self.uidl_map(s)
        for n in (1, 2, 4):
            self.ok(s, b"DELE %d" % n)
        self.assertEqual(len(maildir_files(self.server, user)), 4)
        self.ok(s, b"RSET")
        self.ok(s, b"DELE 3")
        self.assertEqual(len(maildir_files(self.server, user)), 4)
        self.quit(s)
        self.assertEqual(len(maildir_files(self.server, user)), 3)
        s = self.login(user)
        self.assertEqual(list(self.uidl_map(s).values()), [uids[1], uids[2], uids[4]])

    def test_dropped_connection_after_dele_deletes_nothing(self):
        user, _ = self.fresh_user()
        self.deliver(user, 3)
        for how in ("close", "reset"):
            s = self.login(user)
            self.ok(s, b"DELE 1")
            self.ok(s, b"DELE 2")
            if how == "reset":
                s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
            # the lock is released on disconnect; nothing was deleted
            s = relogin(self, user)
            self.assertEqual(s.command(b"STAT")[:6], b"+OK 3 ")
            s.close()
        self.assertEqual(len(maildir_files(self.server, user)), 3)

    def test_message_deleted_behind_the_servers_back(self):
        user, _ = self.fresh_user()
        names = self.deliver(user, 3)
        s = self.login(user)
        os.unlink(os.path.join(self.server.maildir(user), "new", names[1]))
        for command in (b"RETR 2", b"TOP 2 0"):
            reply = s.command(command)
            self.assertTrue(reply.startswith(b"-ERR [SYS/"), reply)
            self.assertLessEqual(len(reply), 512)
            self.ok(s, b"NOOP")
        self.assertEqual(self.retr(s, 3), stuffed(wire_lines(message(2))))
        self.ok(s, b"DELE 2")
        self.ok(s, b"DELE 3")
        self.quit(s)
        self.assertEqual(len(maildir_files(self.server, user)), 1)

    def test_unreadable_message_file_during_session(self):
        self.tracebacks_allowed = True  # an unexpected storage error is logged with its traceback
        # Tests run as root, so chmod 000 cannot deny a read; a directory in place of the file can.
        user, _ = self.fresh_user()
        names = self.deliver(user, 3)
        s = self.login(user)
        path = os.path.join(self.server.maildir(user), "new", names[0])
        os.unlink(path)
        os.mkdir(path)
        for command in (b"RETR 1", b"TOP 1 1"):
            reply = s.command(command)
            self.assertTrue(reply.startswith(b"-ERR [SYS/PERM]") or reply.startswith(b"-ERR [SYS/TEMP]"), reply)
            # the reply names the problem, not the server's internals
            for internal in (b"Traceback", b"Errno", path.encode()):
                self.assertNotIn(internal, reply)
            self.ok(s, b"NOOP")
        self.assertEqual(self.retr(s, 2), stuffed(wire_lines(message(1))))
        self.quit(s)
        os.rmdir(path)

    def test_unreadable_message_file_at_login(self):
        self.tracebacks_allowed = True  # an unexpected storage error is logged with its traceback
        # One unreadable file must not lock the user out of the rest of the mailbox.
        user, _ = self.fresh_user()
        names = self.deliver(user, 3)
        path = os.path.join(self.server.maildir(user), "new", names[1])
        os.unlink(path)
        os.mkdir(path)
        try:
            s = self.login(user)
            stat = s.command(b"STAT")
            self.assertTrue(stat.startswith(b"+OK"), stat)
            uids = self.uidl_map(s)
            for n in uids:
                reply = s.command(b"RETR %d" % n)
                if reply.startswith(b"+OK"):
                    self.assertIn(s.body(), [stuffed(wire_lines(message(i))) for i in (0, 2)])
                else:
                    self.assertTrue(reply.startswith(b"-ERR [SYS/"), reply)
            self.assertEqual(self.retr(s, 1), stuffed(wire_lines(message(0))))
            self.quit(s)
        finally:
            os.rmdir(path)


class InUseTests(TwistdTestCase):
    """A held maildrop refuses a second login at once: -ERR [IN-USE] without the failure delay
    (a wrong password's); the refused session stays in AUTHORIZATION."""

    #: A failure delay far beyond the reply wait below: a delayed IN-USE cannot pass unnoticed.
    extra_args = ["--auth-failure-delay", "120"]

    def in_use(self, session: Session, password: str) -> bytes:
        session.sock.settimeout(60)
        try:
            return session.command(b"PASS " + password.encode())
        except (socket.timeout, TimeoutError):
            self.fail("-ERR [IN-USE] was held back like a failed login")
        finally:
            session.sock.settimeout(20)

    def test_second_login_in_use(self):
        user, password = self.fresh_user()
        self.server.deliver(user, message(0))
        first = self.login(user)
        for tls in (False, True):
            second = self.session(tls=tls)
            second.line()
            self.ok(second, b"USER " + user.encode())
            reply = self.in_use(second, password)
            self.assertTrue(reply.startswith(b"-ERR [IN-USE]"), reply)
            # the refused session stays in AUTHORIZATION and can try again
            self.err(second, b"STAT")
        # the first session is unaffected
        self.assertEqual(first.command(b"STAT")[:6], b"+OK 1 ")
        self.assertTrue(first.command(b"QUIT").startswith(b"+OK"))
        self.assertTrue(first.closed())
        self.ok(second, b"USER " + user.encode())
        self.ok(second, b"PASS " + password.encode())
        # now the roles are swapped; a disconnect releases the lock too
        third = self.session()
        third.line()
        third.command(b"USER " + user.encode())
        self.assertTrue(self.in_use(third, password).startswith(b"-ERR [IN-USE]"))
        second.close()
        third.close()
        relogin(self, user)


class SnapshotFreshnessTests(TwistdTestCase):
    """Whatever the server caches between sessions, a new session sees exactly the maildir."""

    def quit(self, s):
        self.assertTrue(s.command(b"QUIT").startswith(b"+OK"))
        self.assertTrue(s.closed())

    def test_delivery_right_before_login_is_seen(self):
        user, _ = self.fresh_user()
        md = self.server.maildir(user)
        expected = []
        for i in range(40):
            expected.append(self.server.deliver(user, message(i)))
            if i % 3 == 1:
                # another agent marks a message seen (a rename inside the same clock tick)
                name = expected[-2]
                if os.path.exists(os.path.join(md, "new", name)):
                    os.rename(os.path.join(md, "new", name), os.path.join(md, "cur", name + ":2,S"))
            if i % 5 == 4:
                # ... or deletes one
                victim = expected.pop(0)
                for sub, suffix in (("new", ""), ("cur", ":2,S")):
                    try:
                        os.unlink(os.path.join(md, sub, victim + suffix))
                    except FileNotFoundError:
                        pass
            s = self.login(user)
            uids = self.uidl_map(s)
            self.assertEqual(sorted(uids.values()), sorted(n.encode() for n in expected), i)
            self.assertEqual(s.command(b"STAT")[:len(b"+OK %d " % len(expected))], b"+OK %d " % len(expected))
            self.quit(s)

    def test_damaged_or_missing_index(self):
        user, _ = self.fresh_user()
        for i in range(5):
            self.server.deliver(user, message(i))
        s = self.login(user)
        uids, sizes = self.uidl_map(s), self.list_map(s)
        self.quit(s)
        md = self.server.maildir(user)
        index = [n for n in os.listdir(md) if "index" in n]
        self.assertEqual(index, ["pop3ng-index"])  # else the loop below would damage nothing
        for damage in (b"garbage\n", b"", b"pop3ng-index 2\ndirs 1:2 3:4\n-5 x cur/y\n", None):
            for name in index:
                path = os.path.join(md, name)
                if damage is None:
                    if os.path.exists(path):
                        os.unlink(path)
                else:
                    with open(path, "wb") as f:
                        f.write(damage)
            s = self.login(user)
            self.assertEqual(self.uidl_map(s), uids)
            self.assertEqual(self.list_map(s), sizes)
            self.assertEqual(self.retr(s, 5), stuffed(wire_lines(message(4))))
            self.quit(s)


class MessageOrderTests(TwistdTestCase):
    def test_numbers_follow_delivery_time(self):
        # Standard maildir names are TIME.M<usec>P<pid>...: the microseconds are not zero-padded,
        # so name order is not delivery order; message numbers follow delivery time (as Dovecot's).
        user, _ = self.fresh_user()
        names = ["999999999.M1P1.host", "1700000000.M5P1.host", "1700000000.M999P1.host",
                 "1700000000.M1000P1.host", "1700000000.M999999P1.host", "1700000001.M0P1.host",
                 "1700000010.M20P1.host"]
        for i, name in enumerate(reversed(names)):
            self.server.deliver(user, message(len(names) - 1 - i), name=name)
        s = self.login(user)
        self.assertEqual(self.uidl_map(s), {i + 1: n.encode() for i, n in enumerate(names)})
        for i in range(len(names)):
            self.assertEqual(self.retr(s, i + 1), stuffed(wire_lines(message(i))))


class EmptyAndLargeMailboxTests(TwistdTestCase):
    def test_empty_mailbox(self):
        user, _ = self.fresh_user()
        s = self.login(user)  # the maildir does not even exist yet
        self.assertEqual(s.command(b"STAT"), b"+OK 0 0\r\n")
        status, body = self.multi(s, b"LIST")
        self.assertEqual(body, b".\r\n")
        status, body = self.multi(s, b"UIDL")
        self.assertEqual(body, b".\r\n")
        for command in (b"LIST 1", b"UIDL 1", b"RETR 1", b"TOP 1 0", b"DELE 1"):
            self.err(s, command)
        self.ok(s, b"RSET")
        self.assertTrue(s.command(b"QUIT").startswith(b"+OK"))

    def test_5000_messages(self):
        user, _ = self.fresh_user()
        md = self.server.maildir(user)
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        for i in range(5000):
            with open(os.path.join(md, "new" if i % 2 else "cur", "%d.M%dP1.big%s" % (
                    1_600_000_000 + i, i, "" if i % 2 else ":2,S")), "wb") as f:
                f.write(message(i))
        s = self.login(user)
        self.assertEqual(s.command(b"STAT"), b"+OK 5000 %d\r\n" % sum(len(wire_message(message(i)))
                                                                     for i in range(5000)))
        listing = self.list_map(s)
        uids = self.uidl_map(s)
        self.assertEqual(len(listing), 5000)
        self.assertEqual(len(set(uids.values())), 5000)
        self.assertEqual(self.retr(s, 4321), stuffed(wire_lines(message(4320))))
        for n in range(1, 5001, 7):
            self.ok(s, b"DELE %d" % n)
        self.assertTrue(s.command(b"QUIT").startswith(b"+OK"))
        self.assertTrue(s.closed())
        self.assertEqual(len(maildir_files(self.server, user)), 5000 - len(range(1, 5001, 7)))


class CrossProcessLockTests(TwistdTestCase):
    """Two server processes on the same maildirs: the lock holds across them, and a killed server's
    lock is gone with it."""

    def test_lock_across_processes_and_after_kill(self):
        from .support import start_server
        import tempfile

        user, password = self.fresh_user()
        self.server.deliver(user, message(1))
        template = os.path.join(self.server.root, "mail", "{user}", "Maildir")
        other_root = tempfile.mkdtemp(prefix="pop3ng-e2e-other-")
        other = start_server(other_root, users=dict(USERS), tls=False,
                             extra_args=["--mailbox", "maildir:" + template])
        self.addCleanup(shutil.rmtree, other_root, True)
        self.addCleanup(other.stop)
        # a session on the other server holds the maildrop and marks the message deleted
        s = Session(other.connect())
        self.addCleanup(s.close)
        self.assertTrue(s.login(user.encode(), password.encode()).startswith(b"+OK"))
        self.assertTrue(s.command(b"DELE 1").startswith(b"+OK"))
        t = self.session()
        t.line()
        t.command(b"USER " + user.encode())
        self.assertTrue(t.command(b"PASS " + password.encode()).startswith(b"-ERR [IN-USE]"))
        # the other server dies without any chance to clean up
        other.process.kill()
        other.process.wait()
        t.command(b"USER " + user.encode())
        self.assertTrue(t.command(b"PASS " + password.encode()).startswith(b"+OK"))
        self.assertEqual(t.command(b"STAT")[:6], b"+OK 1 ")


class PermissionDeniedTests(TwistdTestCase):
    """A message file the server may not read (chmod 000): a clear -ERR, the session goes on.

    Root reads anything, so when the suite runs as root the server drops to nobody
    (``twistd --uid/--gid``) and the maildir is given to nobody."""

    tls = False
    twistd_args = ["--uid", "65534", "--gid", "65534"] if os.geteuid() == 0 else []

    def setUp(self):
        super().setUp()
        # EACCES is unexpected for the server: it logs it with its traceback (by design)
        self.tracebacks_allowed = True
        if os.geteuid() == 0:
            for path in (self.server.root, os.path.join(self.server.root, "mail")):
                os.makedirs(path, exist_ok=True)
                os.chmod(path, 0o755)

    def give_away(self, user):
        if os.geteuid() == 0:
            for dirpath, dirnames, filenames in os.walk(os.path.dirname(self.server.maildir(user))):
                os.chown(dirpath, 65534, 65534)
                for name in filenames:
                    os.chown(os.path.join(dirpath, name), 65534, 65534)

    def test_unreadable_at_login_and_during_session(self):
        user, _ = self.fresh_user()
        names = [self.server.deliver(user, message(i), name="%d.M1P1.perm" % (1_700_000_000 + i))
                 for i in range(4)]
        md = self.server.maildir(user)
        self.give_away(user)
        os.chmod(os.path.join(md, "new", names[1]), 0)
        s = self.login(user)
        with open("/proc/%d/status" % self.server.process.pid) as f:
            uid = [line.split()[1] for line in f if line.startswith("Uid:")][0]
        self.assertEqual(uid, "65534" if os.geteuid() == 0 else str(os.geteuid()))
        self.assertEqual(s.command(b"STAT")[:6], b"+OK 4 ")
        for command in (b"RETR 2", b"TOP 2 0"):
            reply = s.command(command)
            self.assertTrue(reply.startswith(b"-ERR [SYS/"), reply)
            self.ok(s, b"NOOP")
        self.assertEqual(self.retr(s, 1), stuffed(wire_lines(message(0))))
        os.chmod(os.path.join(md, "new", names[2]), 0)
        reply = s.command(b"RETR 3")
        self.assertTrue(reply.startswith(b"-ERR [SYS/"), reply)
        self.assertEqual(self.retr(s, 4), stuffed(wire_lines(message(3))))
        # deleting an unreadable message works (unlink needs the directory, not the file)
        self.ok(s, b"DELE 2")
        self.assertTrue(s.command(b"QUIT").startswith(b"+OK"))
        self.assertTrue(s.closed())
        self.assertEqual(len(maildir_files(self.server, user)), 3)
        # once readable again, the message is served with the right size
        os.chmod(os.path.join(md, "new", names[2]), 0o600)
        s = self.login(user)
        self.assertEqual(s.command(b"LIST 2"), b"+OK 2 %d\r\n" % len(wire_message(message(2))))
        self.assertEqual(self.retr(s, 2), stuffed(wire_lines(message(2))))

    def test_quit_reports_a_failed_deletion(self):
        # RFC 1939 §6: QUIT answers -ERR when some deleted messages could not be removed
        user, _ = self.fresh_user()
        for i in range(2):
            self.server.deliver(user, message(i))
        md = self.server.maildir(user)
        self.give_away(user)
        s = self.login(user)
        self.ok(s, b"DELE 1")
        os.chmod(os.path.join(md, "new"), 0o555)
        try:
            reply = s.command(b"QUIT")
            self.assertTrue(reply.startswith(b"-ERR"), reply)
            self.assertTrue(s.closed())
        finally:
            os.chmod(os.path.join(md, "new"), 0o700)
        self.assertEqual(len(maildir_files(self.server, user)), 2)
        s = self.login(user)
        self.assertEqual(s.command(b"STAT")[:6], b"+OK 2 ")


class NotMessagesTests(TwistdTestCase):
    def test_tmp_and_dot_files_are_not_messages(self):
        user, _ = self.fresh_user()
        self.server.deliver(user, message(1))
        md = self.server.maildir(user)
        for path in (os.path.join(md, "tmp", "1700000000.M1P1.inflight"), os.path.join(md, "new", ".hidden"),
                     os.path.join(md, "cur", ".1700000000.M2P2.x:2,S")):
            with open(path, "wb") as f:
                f.write(b"Subject: not a message\n\n")
        s = self.login(user)
        self.assertEqual(s.command(b"STAT"), b"+OK 1 %d\r\n" % len(wire_message(message(1))))


class SymlinkTests(TwistdTestCase):
    def test_symlinked_message_is_not_followed(self):
        # a user who can write to a maildir must not make the server (root, here) send other files
        self.tracebacks_allowed = True  # ELOOP is logged like any storage error
        user, _ = self.fresh_user()
        self.server.deliver(user, message(0), name="1700000000.M1P1.real")
        secret = os.path.join(self.server.root, "secret")
        with open(secret, "wb") as f:
            f.write(b"Subject: secret\n\nTOP SECRET CONTENT\n")
        os.chmod(secret, 0o600)
        os.symlink(secret, os.path.join(self.server.maildir(user), "new", "1700000001.M1P1.link"))
        s = self.login(user)
        for command in (b"RETR 2", b"TOP 2 5"):
            reply = s.command(command)
            self.assertTrue(reply.startswith(b"-ERR"), reply)
        self.assertEqual(self.retr(s, 1), stuffed(wire_lines(message(0))))
        # nothing of the secret anywhere in the rest of the conversation, up to the close
        s.send(b"QUIT\r\n")
        self.assertTrue(s.closed())
        self.assertTrue(s.buffer.startswith(b"+OK"), s.buffer)
        self.assertNotIn(b"SECRET", s.buffer)

    def test_new_swapped_for_a_symlink_during_the_session(self):
        # the user delivers a message named like a file elsewhere, logs in, then swaps new/ for a
        # symlink to that elsewhere: RETR must not follow it
        self.tracebacks_allowed = True
        user, _ = self.fresh_user()
        elsewhere = os.path.join(self.server.root, "elsewhere")
        os.makedirs(elsewhere, exist_ok=True)
        with open(os.path.join(elsewhere, "secret"), "wb") as f:
            f.write(b"Subject: secret\n\nTOP SECRET CONTENT\n")
        self.server.deliver(user, message(0), name="secret")
        s = self.login(user)
        with new_swapped_for_symlink(self.server.maildir(user), elsewhere):
            reply = s.command(b"RETR 1")
            if reply.startswith(b"+OK"):
                self.assertNotIn(b"SECRET", s.body())
            else:
                self.assertTrue(reply.startswith(b"-ERR"), reply)
            self.ok(s, b"NOOP")

    def test_dele_then_new_swapped_for_a_symlink(self):
        self.tracebacks_allowed = True  # the refused operations are logged
        # ... and QUIT must not delete the file elsewhere either
        user, _ = self.fresh_user()
        elsewhere = os.path.join(self.server.root, "elsewhere2")
        os.makedirs(elsewhere, exist_ok=True)
        victim = os.path.join(elsewhere, "victim")
        with open(victim, "wb") as f:
            f.write(b"precious\n")
        self.server.deliver(user, message(0), name="victim")
        s = self.login(user)
        self.ok(s, b"DELE 1")
        with new_swapped_for_symlink(self.server.maildir(user), elsewhere):
            s.command(b"QUIT")
            self.assertTrue(s.closed())
            self.assertTrue(os.path.exists(victim))

    def _plant(self, md: str, name: str, index: int) -> str:
        target = os.path.join(self.server.root, "target-%s-%d" % (name, index))
        with open(target, "wb") as f:
            f.write(b"precious\n")
        os.symlink(target, os.path.join(md, name))
        return target

    def test_planted_symlink_for_the_lock_file(self):
        self.tracebacks_allowed = True  # the refused lock is logged
        # pop3ng.lock is opened O_NOFOLLOW: a symlink there refuses the login and its target
        # (which root would otherwise open for writing) stays as it was.
        user, _ = self.fresh_user()
        self.server.deliver(user, message(0))
        md = self.server.maildir(user)
        target = self._plant(md, "pop3ng.lock", 0)
        s = self.session()
        s.line()
        self.ok(s, b"USER " + user.encode())
        reply = s.command(b"PASS " + USERS[user].encode())
        self.assertTrue(reply.startswith(b"-ERR [SYS/"), reply)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"precious\n")
        self.assertTrue(os.path.islink(os.path.join(md, "pop3ng.lock")))

    def test_planted_symlink_for_the_index_file(self):
        # The index is read O_NOFOLLOW and replaced by rename(2), which replaces a planted link
        # itself: the login works, the target is untouched, and a real index file is written.
        # (Its temporary file has a random name, created O_EXCL: nothing can be planted there.)
        user, _ = self.fresh_user()
        for i in range(3):
            self.server.deliver(user, message(i))
        md = self.server.maildir(user)
        target = self._plant(md, "pop3ng-index", 0)
        s = self.login(user)
        self.assertTrue(s.command(b"STAT").startswith(b"+OK 3 "))
        self.ok(s, b"QUIT")
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"precious\n")
        index = os.path.join(md, "pop3ng-index")
        self.assertTrue(wait_for(lambda: os.path.isfile(index) and not os.path.islink(index), 30),
                        "no index file replaced the planted link")

    def test_planted_symlink_for_the_index_temporary_file(self):
        # The index's temporary file once had a predictable name (pop3ng-index.tmp.PID) and was
        # opened following links: root truncated whatever a link planted there pointed at. Alone
        # here (no lock link to refuse the login first), so the index really gets written.
        user, _ = self.fresh_user()
        for i in range(3):
            self.server.deliver(user, message(i))
        md = self.server.maildir(user)
        planted = "pop3ng-index.tmp.%d" % self.server.process.pid
        target = self._plant(md, planted, 0)
        s = self.login(user)
        self.assertTrue(s.command(b"STAT").startswith(b"+OK 3 "))
        self.ok(s, b"QUIT")
        self.assertTrue(s.closed())
        index = os.path.join(md, "pop3ng-index")
        self.assertTrue(wait_for(lambda: os.path.isfile(index) and not os.path.islink(index), 30),
                        "the index was not written as a file of its own")
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"precious\n")
        self.assertEqual(os.readlink(os.path.join(md, planted)), target)
        # the next session reads that index: same listing
        s = self.login(user)
        self.assertEqual(s.command(b"STAT"), b"+OK 3 %d\r\n" % sum(len(wire_message(message(i))) for i in range(3)))
