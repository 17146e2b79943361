"""F7 part 3 against ``twistd pop3ng``: SCRAM's server-first must not tell unknown users apart.

An unknown user's exchange runs against made-up keys. Its salt (``s=``) must be the same every
time -- across restarts and across ``--workers`` processes, as a stored user's salt is -- and its
iteration count (``i=``) must be the one most users have, not always 4096.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Dict, Tuple

from twisted.trial import unittest

from tests.integration.sasl_clients import b64, challenge, connect_from
from tests.integration.support import ServerProcess, Session, process_tree, start_server
from tests.integration.test_workers import serving_pid
from twisted_pop3ng.auth import passwords


def server_first(server: ServerProcess, user: bytes, source: str = "127.0.0.2") -> Dict[str, str]:
    """The attributes of the server-first message for ``user`` (a fresh connection, then ``*``)."""
    session = connect_from(server, source)
    try:
        assert session.line().startswith(b"+OK")
        line = session.command(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=" + user + b",r=clientnonce"))
        assert line.startswith(b"+ "), line
        attributes = dict(part.split("=", 1) for part in challenge(line).decode().split(","))
        assert session.command(b"*").startswith(b"-ERR"), "the cancel is refused"
        return attributes
    finally:
        session.close()


def salt_and_count(server: ServerProcess, user: bytes, source: str = "127.0.0.2") -> Tuple[str, str]:
    attributes = server_first(server, user, source)
    return attributes["s"], attributes["i"]


def scram_entry(password: bytes, iterations: int) -> str:
    keys = passwords.scram_keys(password, "sha256", os.urandom(16), iterations)
    encode = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return "{SCRAM-SHA-256}%d,%s,%s,%s" % (keys.iterations, encode(keys.salt),
                                           encode(keys.stored_key), encode(keys.server_key))


class ScramEnumerationTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        # (start_server writes root/users with {PLAIN} users; tests that want SCRAM users
        # rewrite it afterwards -- the checker re-reads a changed file)
        self.scram_users = None

    def start(self, *extra: str) -> ServerProcess:
        server = start_server(self.root, tls=False,
                              extra_args=["--max-connections-per-address", "0"] + list(extra))
        self.addCleanup(server.stop)
        if self.scram_users is not None:
            with open(os.path.join(self.root, "users"), "w", encoding="utf-8") as f:
                f.write(self.scram_users)
        return server

    def test_unknown_users_salt_survives_a_restart(self) -> None:
        """Before the fix each process keyed the fake salt with its own random key: a restart
        changed an unknown user's ``s=`` and not a real one's."""
        first = self.start()
        before = salt_and_count(first, b"nobody")
        self.assertEqual(before, salt_and_count(first, b"nobody", "127.0.0.3"))
        first.stop()
        second = self.start()
        self.assertEqual(salt_and_count(second, b"nobody"), before)
        self.assertEqual(before[1], "4096")
        # ({PLAIN} alice's derived salt is as stable, and another unknown name gets another salt)
        self.assertNotEqual(salt_and_count(second, b"someone-else")[0], before[0])

    def test_unknown_users_salt_is_the_same_in_every_worker(self) -> None:
        """Before the fix each worker had its own random key, so its own fake salts."""
        server = self.start("--workers", "2")
        deadline = time.monotonic() + 20
        while len(process_tree(server.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = process_tree(server.process.pid)
        self.assertEqual(len(pids), 2, pids)
        # Keep connections open until both processes hold one, then ask each.
        by_pid: Dict[int, Session] = {}
        for n in range(300):
            session = connect_from(server, "127.0.0.%d" % (2 + n % 8))
            self.addCleanup(session.close)
            self.assertTrue(session.line().startswith(b"+OK"))
            pid = serving_pid(session.sock.getsockname()[1], server.port, pids)
            by_pid.setdefault(pid, session)
            if len(by_pid) == 2:
                break
        self.assertEqual(len(by_pid), 2, "every connection went to one process")
        seen = set()
        for session in by_pid.values():
            line = session.command(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=nobody,r=clientnonce"))
            self.assertTrue(line.startswith(b"+ "), line)
            attributes = dict(part.split("=", 1) for part in challenge(line).decode().split(","))
            seen.add((attributes["s"], attributes["i"]))
        self.assertEqual(len(seen), 1, seen)

    def test_unknown_user_gets_the_stored_iteration_count(self) -> None:
        """Before the fix an unknown user always got i=4096: with every stored secret at 8192,
        that named the unknown users at once."""
        self.scram_users = "".join("%s:%s\n" % (user, scram_entry(b"pw-" + user.encode(), 8192))
                                   for user in ("alice", "bob", "carol"))
        server = self.start()
        self.assertEqual(salt_and_count(server, b"bob")[1], "8192")
        salt, count = salt_and_count(server, b"nobody")
        self.assertEqual(count, "8192")
        self.assertEqual(salt_and_count(server, b"nobody", "127.0.0.3"), (salt, count))

    def test_sasl_secret_file_keys_the_salt(self) -> None:
        secret = os.path.join(self.root, "sasl.secret")
        with open(secret, "wb") as f:
            f.write(b"0123456789abcdef0123456789abcdef\n")
        first = self.start("--sasl-secret-file", secret)
        keyed = salt_and_count(first, b"nobody")
        first.stop()
        # The same secret, a changed passwd-file: the salt stays (it is keyed by the secret only).
        second = self.start("--sasl-secret-file", secret)
        with open(os.path.join(self.root, "users"), "a", encoding="utf-8") as f:
            f.write("erin:{PLAIN}another\n")
        self.assertEqual(salt_and_count(second, b"nobody"), keyed)

    def test_short_sasl_secret_file_is_a_usage_error(self) -> None:
        secret = os.path.join(self.root, "short.secret")
        with open(secret, "wb") as f:
            f.write(b"short\n")
        with self.assertRaises(RuntimeError) as caught:
            start_server(self.root, tls=False, extra_args=["--sasl-secret-file", secret])
        self.assertIn("at least 16 bytes", str(caught.exception))
        self.assertNotIn("Traceback", str(caught.exception))
