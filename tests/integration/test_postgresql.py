"""``twistd -n pop3ng --mailbox postgresql:DSN`` as a real process, with real POP3 clients, over a
real PostgreSQL (:mod:`twisted_pop3ng.testing.postgresql`, a fresh database per test).

What is PostgreSQL's own: the schema check at startup, ``pop3ng db`` as a command, a 50 MB message
streamed through the server with bounded memory, and sessions that outlive their database
connections. (The generic black-box semantics run for every backend in test_backends_blackbox.)
"""

from __future__ import annotations

import io
import os
import poplib
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import psycopg
from twisted.trial import unittest

from twisted_pop3ng.mailbox.postgresql.store import PostgresStore
from twisted_pop3ng.testing.conformance import GeneratedMessage
from twisted_pop3ng.testing.postgresql import drop_database, fresh_database

from .e2e import StreamingBody, stuffed, wire_lines
from .support import ROOT, TWISTD_MAIN, ServerProcess, Session, start_server

PASSWORD = "correct horse battery staple"
USERS = {"alice": PASSWORD, "bob": PASSWORD}


def start_front_end(root: str, dsn: str, pool_size: int = 3, extra_args: Optional[List[str]] = None,
                    users: Optional[Dict[str, str]] = None) -> ServerProcess:
    """One ``twistd pop3ng`` front end on ``dsn`` (a plain listener on a kernel-chosen port)."""
    return start_server(root, users=users or USERS, tls=False,
                        extra_args=["--mailbox", "postgresql:%s pool_size=%d" % (dsn, pool_size)]
                        + list(extra_args or []))


class PostgresServerCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dsn = fresh_database()
        self.addCleanup(drop_database, self.dsn)
        self.store = PostgresStore.from_spec(self.dsn + " pool_size=2")  # the MTA's side, in this process
        self.addCleanup(self.store.stop)

    def front_end(self, **kwargs: object) -> ServerProcess:
        server = start_front_end(tempfile.mkdtemp(dir=self.mktemp_dir()), self.dsn, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(server.stop)
        return server

    def mktemp_dir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def deliver(self, user: str, data: bytes) -> str:
        return self.store.deliver(user, io.BytesIO(data))

    def login(self, server: ServerProcess, user: str = "alice") -> Session:
        session = Session(server.connect())
        self.addCleanup(session.close)
        reply = session.login(user.encode(), PASSWORD.encode())
        self.assertTrue(reply.startswith(b"+OK"), reply)
        return session

    def login_when_free(self, server: ServerProcess, user: str = "alice") -> Session:
        """Log in once the maildrop is free: the unlock of a session that just ended (its QUIT
        reply is out first; a dropped connection or a killed front end is noticed a moment later)
        reaches PostgreSQL asynchronously, so a login racing it may get [IN-USE]; it must succeed
        within a generous bound."""
        deadline = time.monotonic() + 30
        while True:
            session = Session(server.connect())
            self.addCleanup(session.close)
            reply = session.login(user.encode(), PASSWORD.encode())
            if not reply.startswith(b"-ERR [IN-USE]") or time.monotonic() > deadline:
                break
            session.close()
            time.sleep(0.05)
        self.assertTrue(reply.startswith(b"+OK"), reply)
        return session

    def sql(self, query: str, *params: object) -> list:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(query, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def assertNoTraceback(self, server: ServerProcess) -> None:
        self.assertNotIn("Traceback", server.log())


MESSAGES = [
    b"From: a@example.org\nSubject: lf\n\nbody\n.dot line\n..two dots\n.\nend\n",
    b"From: a@example.org\r\nSubject: crlf\r\n\r\nline 1\r\n.\r\nline 3\r\n",
    b"Subject: 8bit\n\ngr\xc3\xbc\xc3\x9fe \xff\x80 bare\rCR\n",
    b"Subject: no final newline\n\nfirst\nlast",
]


class SessionTests(PostgresServerCase):
    def test_session_byte_exact(self) -> None:
        """STAT, LIST, UIDL and RETR over a socket, byte for byte what RFC 1939 says."""
        uids = [self.deliver("alice", data) for data in MESSAGES]
        server = self.front_end()
        s = self.login(server)
        sizes = [sum(len(line) + 2 for line in wire_lines(data)) for data in MESSAGES]
        self.assertEqual(s.command(b"STAT"), b"+OK %d %d\r\n" % (len(MESSAGES), sum(sizes)))
        s.send(b"LIST\r\n")
        s.line()
        self.assertEqual(s.body(), b"".join(b"%d %d\r\n" % (n, size) for n, size in enumerate(sizes, 1)) + b".\r\n")
        s.send(b"UIDL\r\n")
        s.line()
        self.assertEqual(s.body(), b"".join(b"%d %s\r\n" % (n, uid.encode()) for n, uid in enumerate(uids, 1))
                         + b".\r\n")
        for n, data in enumerate(MESSAGES, 1):
            self.assertTrue(s.command(b"RETR %d" % n).startswith(b"+OK"))
            self.assertEqual(s.body(), stuffed(wire_lines(data)))
        self.assertEqual(s.command(b"QUIT")[:3], b"+OK")
        self.assertNoTraceback(server)

    def test_quit_commits_and_a_drop_does_not(self) -> None:
        for data in MESSAGES:
            self.deliver("alice", data)
        server = self.front_end()
        s = self.login(server)
        self.assertTrue(s.command(b"DELE 1").startswith(b"+OK"))
        s.close()  # dropped: nothing committed
        s = self.login_when_free(server)
        self.assertTrue(s.command(b"STAT").startswith(b"+OK 4 "))
        s.command(b"DELE 1")
        s.command(b"DELE 3")
        self.assertEqual(s.command(b"QUIT"), b"+OK Logging out, messages deleted.\r\n")
        client = poplib.POP3("127.0.0.1", server.port, timeout=20)
        client.user("alice")
        client.pass_(PASSWORD)
        self.assertEqual([b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in (1, 2)],
                         [b"".join(line + b"\r\n" for line in wire_lines(data)) for data in (MESSAGES[1], MESSAGES[3])])
        client.quit()

    def test_in_use_and_delivery_during_session(self) -> None:
        self.deliver("alice", MESSAGES[0])
        server = self.front_end()
        s = self.login(server)
        other = Session(server.connect())
        self.addCleanup(other.close)
        self.assertEqual(other.login(b"alice", PASSWORD.encode())[:13], b"-ERR [IN-USE]")
        self.deliver("alice", MESSAGES[1])
        self.assertTrue(s.command(b"STAT").startswith(b"+OK 1 "))
        s.command(b"QUIT")
        s = self.login(server)
        self.assertTrue(s.command(b"STAT").startswith(b"+OK 2 "))

    def test_fifty_megabytes_through_the_server(self) -> None:
        """A 50 MiB message leaves the server intact while its memory grows by far less than that."""
        message = GeneratedMessage()
        expected = message.expected()
        self.store.deliver("alice", message)
        server = self.front_end()
        s = self.login(server)
        s.command(b"STAT")
        before = server.rss_kb()
        s.sock.settimeout(120)
        self.assertEqual(s.command(b"RETR 1"), b"+OK %d octets\r\n" % expected[1])
        body = StreamingBody(s)
        self.assertEqual(body.read(), expected)
        growth_mb = (server.rss_kb() - before) / 1024
        self.assertLess(growth_mb, 25, "the server grew by %.1f MB sending 50 MiB" % growth_mb)


class StartupTests(unittest.TestCase):
    """twistd refuses a database it cannot serve from: a clear message, exit status 1, no traceback."""

    def run_twistd(self, spec: str) -> subprocess.CompletedProcess:
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        users = os.path.join(root, "users")
        with open(users, "w") as f:
            f.write("alice:{PLAIN}x\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        return subprocess.run([sys.executable, "-c", TWISTD_MAIN, "-n", "--pidfile=", "pop3ng", "--auth",
                               "passwd-file:" + users, "--listen", "tcp:0:interface=127.0.0.1",
                               "--mailbox", spec], cwd=root, env=env, capture_output=True, timeout=60)

    def test_missing_schema(self) -> None:
        dsn = fresh_database(schema=False)
        self.addCleanup(drop_database, dsn)
        result = self.run_twistd("postgresql:" + dsn)
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertIn("schema version 0, this pop3ng needs 1: run pop3ng db upgrade", output)
        self.assertNotIn("Traceback", output)

    def test_bad_spec(self) -> None:
        result = self.run_twistd("postgresql:host=db pool_size=lots")
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertIn("pool_size='lots' is not a number", output)
        self.assertNotIn("Traceback", output)

    def test_db_upgrade_command(self) -> None:
        """``pop3ng db upgrade DSN`` (the console script's entry point) makes the schema the server needs."""
        dsn = fresh_database(schema=False)
        self.addCleanup(drop_database, dsn)
        command = [sys.executable, "-c", "import sys; from twisted_pop3ng.cli import main; sys.exit(main())"]
        first = subprocess.run(command + ["db", "upgrade", dsn], capture_output=True, timeout=60)
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertIn(b"schema upgraded from version 0 to 1", first.stdout)
        again = subprocess.run(command + ["db", "upgrade", dsn], capture_output=True, timeout=60)
        self.assertEqual((again.returncode, again.stdout), (0, b"schema is up to date (version 1)\n"))
        PostgresStore.from_spec(dsn).stop()  # accepted now


class LostDatabaseTests(PostgresServerCase):
    """A database restart or failover mid-session: -ERR [SYS/TEMP], nothing deleted, then service again."""

    def cut_server_connections(self) -> None:
        self.sql("SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND pid <> pg_backend_pid()")

    def test_the_first_login_after_a_cut_works(self) -> None:
        """Connections cut by the database (a restart, a failover, pg_terminate_backend): the
        next login used to fail once per dead connection -- the lock's, then each pooled one --
        with -ERR [SYS/TEMP] while the database was up. Now it is made again at once."""
        self.deliver("alice", MESSAGES[0])
        self.store.stop()
        server = self.front_end()
        for _ in range(3):
            s = self.login(server)  # (opens the lock connection and pooled ones)
            self.assertTrue(s.command(b"QUIT").startswith(b"+OK"))
            s.close()
            self.cut_server_connections()
            started = time.monotonic()
            s = Session(server.connect())
            self.addCleanup(s.close)
            reply = s.login(b"alice", PASSWORD.encode())
            self.assertTrue(reply.startswith(b"+OK"), reply)
            self.assertLess(time.monotonic() - started, 10)
            self.assertTrue(s.command(b"RETR 1").startswith(b"+OK"))
            self.assertEqual(s.body(), stuffed(wire_lines(MESSAGES[0])))
            s.command(b"QUIT")
            s.close()

    def test_session_ends_with_sys_temp(self) -> None:
        for data in MESSAGES:
            self.deliver("alice", data)
        self.store.stop()  # (this process's store holds no connection now)
        server = self.front_end()
        # The server's QUIT logs every failed UPDATE with a traceback (server/verbs.py), even this
        # expected [SYS/TEMP] one; the end of this test checks that it is the only traceback.
        s = self.login(server)
        self.assertTrue(s.command(b"DELE 1").startswith(b"+OK"))
        self.cut_server_connections()
        reply = s.command(b"RETR 2")
        self.assertTrue(reply.startswith(b"-ERR [SYS/TEMP]"), reply)
        reply = s.command(b"QUIT")
        self.assertTrue(reply.startswith(b"-ERR [SYS/TEMP] Some deleted messages were not removed"), reply)
        self.assertEqual(self.sql("SELECT count(*) FROM messages"), [(len(MESSAGES),)])
        deadline = time.monotonic() + 30
        while True:  # the front end serves again once its pool has replaced the dead connections
            s = Session(server.connect())
            self.addCleanup(s.close)
            reply = s.login(b"alice", PASSWORD.encode())
            if reply.startswith(b"+OK") or time.monotonic() > deadline:
                break
            self.assertTrue(reply.startswith(b"-ERR [SYS/TEMP]"), reply)
            s.close()
            time.sleep(0.2)
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertTrue(s.command(b"RETR 1").startswith(b"+OK"))
        self.assertEqual(s.body(), stuffed(wire_lines(MESSAGES[0])))
        log = server.log()
        # The lost database is one warning line, not a traceback (nothing of ours failed).
        self.assertNotIn("Traceback", log)
        self.assertIn("UPDATE failed: [SYS/TEMP]", log)


class DatabaseDownTests(unittest.TestCase):
    """The database stops and starts again (its own cluster: the shared one serves other tests)."""

    def test_quit_answers_at_once_and_logins_work_as_soon_as_it_is_back(self) -> None:
        from twisted_pop3ng.testing.postgresql import TestCluster

        own = TestCluster()
        own.start()
        self.addCleanup(own.stop)
        dsn = own.create_database()
        store = PostgresStore.from_spec(dsn + " pool_size=2")
        store.deliver("alice", io.BytesIO(MESSAGES[0]))
        store.deliver("alice", io.BytesIO(MESSAGES[1]))
        store.stop()
        server = start_front_end(tempfile.mkdtemp(dir=self.mktemp_dir()), dsn)
        self.addCleanup(server.stop)
        s = Session(server.connect())
        self.addCleanup(s.close)
        self.assertTrue(s.login(b"alice", PASSWORD.encode()).startswith(b"+OK"))
        self.assertTrue(s.command(b"DELE 1").startswith(b"+OK"))
        own.pause()
        # A read finds the database gone: the pool drops its dead connections and, from then
        # on, reconnects with a growing back-off.
        self.assertTrue(s.command(b"RETR 2").startswith(b"-ERR [SYS/TEMP]"))
        started = time.monotonic()
        reply = s.command(b"QUIT")  # (the commit waited for the pool's 30 s timeout)
        self.assertTrue(reply.startswith(b"-ERR [SYS/TEMP] Some deleted messages were not removed"), reply)
        self.assertLess(time.monotonic() - started, 5)
        s.close()
        down_until = time.monotonic() + 16  # (its back-off then waits about 15 s more)
        while time.monotonic() < down_until:  # logins meanwhile fail at once
            s = Session(server.connect())
            self.addCleanup(s.close)
            started = time.monotonic()
            self.assertTrue(s.login(b"alice", PASSWORD.encode()).startswith(b"-ERR [SYS/TEMP]"))
            self.assertLess(time.monotonic() - started, 5)
            s.close()
            time.sleep(2)
        own.resume()
        started = time.monotonic()
        s = Session(server.connect())
        self.addCleanup(s.close)
        reply = s.login(b"alice", PASSWORD.encode())  # (waited out the pool's back-off)
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(s.command(b"STAT").split()[1], b"2")  # nothing was deleted
        s.command(b"QUIT")
        # The pool's retries are in the server's log as its events (not bare lines on stderr),
        # and, repeating, once a minute: not one per retry.
        lines = server.log().splitlines()
        retries = [line for line in lines if "error connecting in 'pop3ng'" in line]
        self.assertTrue(retries, server.log())
        self.assertTrue(all("[psycopg.pool#warn]" in line for line in retries), retries)
        self.assertEqual(len(retries), 1, retries)

    def mktemp_dir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

