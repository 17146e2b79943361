"""The test cluster of :mod:`twisted_pop3ng.testing.postgresql`: private, loopback only, never as
root, one fresh database per call, and an error (not a skipped test) when PostgreSQL is missing."""

from __future__ import annotations

import os

import psycopg
from twisted.trial import unittest

from twisted_pop3ng.testing import postgresql
from twisted_pop3ng.testing.postgresql import PostgresNotFound, cluster, drop_database, fresh_database


class TestClusterTests(unittest.TestCase):
    def test_loopback_only_and_not_root(self) -> None:
        running = cluster()
        with psycopg.connect(running.dsn()) as conn:
            self.assertEqual(conn.execute("SHOW listen_addresses").fetchone(), ("127.0.0.1",))
            row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        data_directory = row[0]
        self.assertTrue(data_directory.startswith(running.directory or "?"), data_directory)
        assert running.process is not None
        with open("/proc/%d/status" % running.process.pid) as f:
            uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
        self.assertNotEqual(uid, 0, "PostgreSQL must not run as root")
        if os.geteuid() != 0:
            self.assertEqual(uid, os.geteuid())

    def test_fresh_databases(self) -> None:
        """Each call gives a new database; with the schema by default, empty on request."""
        first, second, empty = fresh_database(), fresh_database(), fresh_database(schema=False)
        for dsn in (first, second, empty):
            self.addCleanup(drop_database, dsn)
        self.assertEqual(len({first, second, empty}), 3)
        with psycopg.connect(first) as conn:
            conn.execute("INSERT INTO maildrops (username, uid_prefix) VALUES ('x', 'p')")
        with psycopg.connect(second) as conn:
            self.assertEqual(conn.execute("SELECT count(*) FROM maildrops").fetchone(), (0,))
        with psycopg.connect(empty) as conn:
            self.assertEqual(conn.execute("SELECT to_regclass('maildrops')").fetchone(), (None,))

    def test_missing_postgresql_is_an_error(self) -> None:
        """No initdb anywhere: PostgresNotFound naming what to install, not a skip."""
        self.patch(postgresql, "_BINDIR_PATTERNS", [self.mktemp() + "/*/bin"])
        self.patch(os, "environ", {"PATH": self.mktemp()})
        with self.assertRaises(PostgresNotFound) as caught:
            postgresql.find_bindir()
        self.assertIn("install postgresql", str(caught.exception))
