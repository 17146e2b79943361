"""Every ``--mailbox`` backend under the real ``twistd -n pop3ng``, through real sockets, byte for byte.

One class per backend: a :class:`BackendBlackBox` subclass naming its ``--mailbox`` spec (and, for
a store of the server's own process, how mail gets in). Each class runs one server for its tests;
each test takes users nobody else touched. Expected replies come from the RFC 1939 oracle of
:mod:`.e2e` (never from the server's codec); mail is delivered the way an MTA would, through the
store's ``IMailboxDelivery`` in this process (``store_from_spec(spec)``), while the server runs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, List, Optional, Tuple


from twisted_pop3ng.interfaces import IMailboxDelivery
from twisted_pop3ng.mailbox import store_from_spec

from .e2e import (USERS, StreamingBody, TwistdTestCase, stuffed, top_lines, wait_for, wire_lines,
                  wire_message)
from .support import ROOT, ServerProcess, Session, start_server

#: Stored forms a delivering MTA hands over: both line endings, dot lines, "From " lines, 8-bit
#: octets, a bare CR, an empty body, no final newline.
MESSAGES: List[bytes] = [
    b"From: a@example.org\nSubject: lf\n\nbody\n.dot line\n..two dots\n.\nend\n",
    b"From: a@example.org\r\nSubject: crlf\r\n\r\nline 1\r\nline 2\r\n.\r\nline 4\r\n",
    b"Subject: From lines\n\nFrom the start\n>From quoted\nFrom \n",
    b"Subject: 8bit\n\ngr\xc3\xbc\xc3\x9fe \xff\x80 bare\rCR\n",
    b"Subject: empty body\n\n",
    b"Subject: no final newline\n\nfirst\nsecond\nlast",
]


class BackendBlackBox:
    """The tests; a concrete class adds :class:`.e2e.TwistdTestCase` (one server per class, a pool
    of users nobody else touched) and :meth:`make_spec`."""

    server: ServerProcess
    spec: str
    tls = False
    _store: Any = None
    _store_root = ""
    #: Arguments for ``twistd pop3ng`` besides --mailbox (a backend's own options).
    backend_args: List[str] = []

    # (from TwistdTestCase)
    assertEqual: Any
    assertTrue: Any
    assertIn: Any
    assertNotIn: Any
    fail: Any
    addCleanup: Any
    session: Any
    ok: Any
    multi: Any

    @classmethod
    def make_spec(cls, root: str) -> str:
        """The --mailbox value for a store kept under ``root`` (a new temporary directory)."""
        raise NotImplementedError

    def deliver(self, user: str, data: bytes) -> Optional[str]:
        """Deliver ``data`` into ``user``'s maildrop as an MTA would; its UIDL when known."""
        cls = type(self)
        if cls._store is None:
            cls._store = store_from_spec(self.spec)
        store = cls._store
        self.assertTrue(IMailboxDelivery.providedBy(store), "%r takes no deliveries" % (store,))
        return str(store.deliver(user, io.BytesIO(data)))

    # -- the class's server: TwistdTestCase's, on this backend's store ---------------------------

    def setUp(self) -> None:
        cls = type(self)
        if cls.__dict__.get("_server") is None:  # the class's first test here: its server starts
            cls._store_root = tempfile.mkdtemp(prefix="pop3ng-backend-")
            cls.spec = cls.make_spec(cls._store_root)
            # (start_server's own --mailbox comes first: the later one counts)
            cls.extra_args = ["--mailbox", cls.spec] + list(cls.backend_args)
        super().setUp()  # type: ignore[misc]

    @classmethod
    def _stop_server(cls) -> None:
        running = cls.__dict__.get("_server") is not None
        super()._stop_server()  # type: ignore[misc]
        if running:
            store, cls._store = cls._store, None
            if hasattr(store, "stop"):
                store.stop()  # (a database store's pool and threads)
            cls.cleanup_store()
            shutil.rmtree(cls._store_root, ignore_errors=True)

    @classmethod
    def cleanup_store(cls) -> None:
        """Remove what :meth:`make_spec` made outside the temporary directory (a database)."""

    # -- a client ---------------------------------------------------------------------------------

    def fresh_user(self) -> str:
        return super().fresh_user()[0]  # type: ignore[misc]

    def login_when_free(self, user: str, timeout: float = 30.0) -> Session:
        """Log in once the server has noticed a dropped session (its close unlocks the maildrop)."""
        deadline = time.monotonic() + timeout
        while True:
            session = self.session()
            reply = session.login(user.encode(), USERS[user].encode())
            if reply.startswith(b"+OK "):
                return session
            session.close()
            if not reply.startswith(b"-ERR [IN-USE]") or time.monotonic() > deadline:
                self.fail("login after a dropped session: %r" % (reply,))
            time.sleep(0.05)

    def listing(self, session: Session, verb: bytes) -> List[bytes]:
        """The second column of LIST or UIDL, message 1 first."""
        _, body = self.multi(session, verb)
        lines = body.split(b"\r\n")[:-2]
        self.assertEqual([line.split(b" ")[0] for line in lines], [b"%d" % n for n in range(1, len(lines) + 1)])
        return [line.split(b" ")[1] for line in lines]

    def quit(self, session: Session) -> None:
        reply = session.command(b"QUIT")
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertTrue(session.closed())

    def deliver_all(self, user: str, messages: List[bytes]) -> List[Optional[str]]:
        return [self.deliver(user, data) for data in messages]

    # -- the tests --------------------------------------------------------------------------------

    def test_transaction_commands(self) -> None:
        """STAT, LIST, UIDL, RETR and TOP (whole listings and single messages) byte for byte."""
        user = self.fresh_user()
        uids = self.deliver_all(user, MESSAGES)
        s = self.login(user)
        total = sum(len(wire_message(m)) for m in MESSAGES)
        self.assertEqual(s.command(b"STAT"), b"+OK %d %d\r\n" % (len(MESSAGES), total))
        self.assertEqual(self.listing(s, b"LIST"), [b"%d" % len(wire_message(m)) for m in MESSAGES])
        listed = self.listing(s, b"UIDL")
        if all(uid is not None for uid in uids):
            self.assertEqual(listed, [str(uid).encode() for uid in uids])
        self.assertEqual(len(set(listed)), len(MESSAGES))
        for n, data in enumerate(MESSAGES, 1):
            self.assertEqual(s.command(b"LIST %d" % n), b"+OK %d %d\r\n" % (n, len(wire_message(data))))
            self.assertEqual(s.command(b"UIDL %d" % n), b"+OK %d %s\r\n" % (n, listed[n - 1]))
            self.assertEqual(self.multi(s, b"RETR %d" % n)[1], stuffed(wire_lines(data)), n)
            for lines in (0, 1, 5):
                self.assertEqual(self.multi(s, b"TOP %d %d" % (n, lines))[1], stuffed(top_lines(data, lines)),
                                 (n, lines))
        self.quit(s)

    def test_dele_and_quit_commit(self) -> None:
        """DELE takes effect at QUIT: the others stay with their UIDLs and content."""
        user = self.fresh_user()
        self.deliver_all(user, MESSAGES[:4])
        s = self.login(user)
        uids = self.listing(s, b"UIDL")
        self.ok(s, b"DELE 2")
        self.ok(s, b"DELE 4")
        self.assertEqual(s.command(b"RETR 2")[:4], b"-ERR")
        self.quit(s)
        s = self.login(user)
        self.assertEqual(self.listing(s, b"UIDL"), [uids[0], uids[2]])
        self.assertEqual(self.multi(s, b"RETR 2")[1], stuffed(wire_lines(MESSAGES[2])))

    def test_rset_undeletes(self) -> None:
        user = self.fresh_user()
        self.deliver_all(user, MESSAGES[:2])
        s = self.login(user)
        self.ok(s, b"DELE 1")
        self.ok(s, b"RSET")
        self.quit(s)
        s = self.login(user)
        self.assertEqual(s.command(b"STAT")[:6], b"+OK 2 ")

    def test_drop_commits_nothing(self) -> None:
        """A connection closed without QUIT deletes nothing, and its maildrop is unlocked."""
        user = self.fresh_user()
        self.deliver_all(user, MESSAGES[:3])
        s = self.login(user)
        uids = self.listing(s, b"UIDL")
        self.ok(s, b"DELE 1")
        self.ok(s, b"DELE 2")
        s.close()
        s = self.login_when_free(user)
        self.assertEqual(self.listing(s, b"UIDL"), uids)

    def test_in_use(self) -> None:
        """A second session of a held maildrop gets -ERR [IN-USE] at once; after QUIT it logs in."""
        user = self.fresh_user()
        self.deliver_all(user, MESSAGES[:1])
        first = self.login(user)
        second = self.session()
        reply = second.login(user.encode(), USERS[user].encode())
        self.assertTrue(reply.startswith(b"-ERR [IN-USE]"), reply)
        self.assertEqual(first.command(b"STAT")[:6], b"+OK 1 ")
        self.quit(first)
        third = self.login(user)
        self.assertEqual(third.command(b"STAT")[:6], b"+OK 1 ")

    def test_delivery_during_session(self) -> None:
        """Mail delivered during a session is not in it, and is in the next one, last."""
        user = self.fresh_user()
        self.deliver_all(user, MESSAGES[:2])
        s = self.login(user)
        before = self.listing(s, b"UIDL")
        self.deliver(user, MESSAGES[3])
        self.assertEqual(s.command(b"STAT")[:6], b"+OK 2 ")
        self.assertEqual(self.listing(s, b"UIDL"), before)
        self.assertEqual(s.command(b"RETR 3")[:4], b"-ERR")
        self.ok(s, b"DELE 1")
        self.quit(s)
        s = self.login(user)
        after = self.listing(s, b"UIDL")
        self.assertEqual(after[:1], before[1:])
        self.assertEqual(len(after), 2)
        self.assertNotIn(after[1], before)
        self.assertEqual(self.multi(s, b"RETR 2")[1], stuffed(wire_lines(MESSAGES[3])))

    def test_large_message_streamed(self) -> None:
        """A 3 MB message (streamed by the server, not sent whole) arrives intact; LIST agrees."""
        user = self.fresh_user()
        lines = [b"Subject: big\r\n\r\n"] + [b"%s%07d %s\r\n" % (b"." if i % 5 == 0 else b"x", i, b"y" * 60)
                                           for i in range(43_000)]
        data = b"".join(lines)
        self.deliver(user, data)
        s = self.login(user)
        self.assertEqual(s.command(b"LIST 1"), b"+OK 1 %d\r\n" % len(data))
        self.ok(s, b"RETR 1")
        body = StreamingBody(s)
        self.assertEqual(body.read(), (hashlib.sha256(data).hexdigest(), len(data)))
        self.assertTrue(not body.bad_line_ending and not body.bad_stuffing)
        self.quit(s)


class SharedStoreBlackBox(BackendBlackBox):
    """For stores several servers share (files, a database): the lock holds across servers and
    dies with a SIGKILLed one, losing nothing."""

    def second_server(self) -> ServerProcess:
        root = tempfile.mkdtemp(prefix="pop3ng-backend-b-")
        self.addCleanup(shutil.rmtree, root, True)
        server = start_server(root, users=dict(USERS), tls=False,
                              extra_args=["--mailbox", self.spec] + list(self.extra_args))
        self.addCleanup(server.stop)
        return server

    def login_to(self, server: ServerProcess, user: str) -> Tuple[Session, bytes]:
        session = Session(server.connect(timeout=20.0))
        self.addCleanup(session.close)
        return session, session.login(user.encode(), USERS[user].encode())

    def test_in_use_across_servers_and_sigkill(self) -> None:
        """A maildrop held through server B is -ERR [IN-USE] on server A; SIGKILL of B mid-session
        (after DELE) frees it for A at once and deletes nothing."""
        user = self.fresh_user()
        self.deliver_all(user, MESSAGES[:3])
        other = self.second_server()
        held, reply = self.login_to(other, user)
        self.assertEqual(reply[:4], b"+OK ", reply)
        uids = self.listing(held, b"UIDL")
        self.ok(held, b"DELE 1")
        _, refused = self.login_to(self.server, user)
        self.assertTrue(refused.startswith(b"-ERR [IN-USE]"), refused)
        other.process.kill()
        other.process.wait()
        s = self.login_when_free(user)
        self.assertEqual(self.listing(s, b"UIDL"), uids)
        self.assertEqual(self.multi(s, b"RETR 1")[1], stuffed(wire_lines(MESSAGES[0])))


    def deliver_with_lda(self, user: str, data: bytes) -> None:
        """``pop3ng deliver --mailbox SPEC --auth ... USER < message``, as an MTA runs it."""
        done = subprocess.run([sys.executable, "-m", "twisted_pop3ng.cli", "deliver", "--mailbox", self.spec,
                               "--auth", "passwd-file:" + os.path.join(self.server.root, "users"), user],
                              input=data, capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
        self.assertEqual(done.returncode, 0, done.stderr)

    def test_delivered_by_the_lda(self) -> None:
        """Mail from ``pop3ng deliver`` (another process) during a session appears in the next
        one, byte for byte."""
        user = self.fresh_user()
        self.deliver_with_lda(user, MESSAGES[0])
        s = self.login(user)
        self.assertEqual(s.command(b"STAT"), b"+OK 1 %d\r\n" % len(wire_message(MESSAGES[0])))
        self.deliver_with_lda(user, MESSAGES[3])
        self.assertEqual(s.command(b"STAT")[:6], b"+OK 1 ")
        self.quit(s)
        s = self.login(user)
        self.assertEqual(self.multi(s, b"RETR 1")[1], stuffed(wire_lines(MESSAGES[0])))
        self.assertEqual(self.multi(s, b"RETR 2")[1], stuffed(wire_lines(MESSAGES[3])))

class MaildirBlackBoxTests(SharedStoreBlackBox, TwistdTestCase):
    @classmethod
    def make_spec(cls, root: str) -> str:
        return "maildir:" + os.path.join(root, "mail", "{user}", "Maildir")


class MboxBlackBoxTests(SharedStoreBlackBox, TwistdTestCase):
    @classmethod
    def make_spec(cls, root: str) -> str:
        os.makedirs(os.path.join(root, "mail"))  # (/var/mail exists; the store makes no directories)
        return "mbox:" + os.path.join(root, "mail", "{user}")


class PostgresBlackBoxTests(SharedStoreBlackBox, TwistdTestCase):
    """A fresh database of this process's test cluster (initdb in a temporary directory)."""

    dsn = ""

    @classmethod
    def make_spec(cls, root: str) -> str:
        from twisted_pop3ng.testing.postgresql import fresh_database

        cls.dsn = fresh_database()
        return "postgresql:" + cls.dsn

    @classmethod
    def cleanup_store(cls) -> None:
        from twisted_pop3ng.testing.postgresql import drop_database

        drop_database(cls.dsn)


class MemoryBlackBoxTests(BackendBlackBox, TwistdTestCase):
    """``memory:`` lives in the server process: mail gets in by its LMTP listener (RFC 2033),
    spoken here over a socket without a client library that would rewrite line endings."""

    # (no trace headers: the stored message is then exactly what DATA carried)
    backend_args = ["--lmtp-listen", "tcp:0:interface=127.0.0.1", "--lmtp-trace-headers", "no"]

    @classmethod
    def make_spec(cls, root: str) -> str:
        return "memory:"

    def lmtp_port(self) -> int:
        # (The POP3 listeners' lines, which start_server waits for, may come before this one.)
        def listening() -> List[str]:
            return re.findall(r"LMTPFactory starting on (\d+)", self.server.log())

        self.assertTrue(wait_for(lambda: bool(listening()), timeout=30), "no LMTP listener in the server log")
        return int(listening()[0])

    def deliver(self, user: str, data: bytes) -> Optional[str]:
        lmtp = Session(socket.create_connection(("127.0.0.1", self.lmtp_port()), 20.0))
        self.addCleanup(lmtp.close)
        self.assertEqual(lmtp.line()[:4], b"220 ")
        lmtp.send(b"LHLO client.example.org\r\n")
        while True:
            line = lmtp.line()
            self.assertEqual(line[:3], b"250", line)
            if line[3:4] == b" ":
                break
        self.assertEqual(lmtp.command(b"MAIL FROM:<sender@example.org>")[:3], b"250")
        self.assertEqual(lmtp.command(b"RCPT TO:<%s@example.org>" % user.encode())[:3], b"250")
        self.assertEqual(lmtp.command(b"DATA")[:3], b"354")
        lmtp.send(b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                           for line in wire_lines(data)) + b".\r\n")
        reply = lmtp.line()  # one reply per recipient (RFC 2033 §4.2)
        self.assertEqual(reply[:4], b"250 ", reply)
        lmtp.command(b"QUIT")
        return None
