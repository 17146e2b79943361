"""``postgresql:`` DSN parsing, the schema migrations, ``pop3ng db`` and the server's startup check,
against a real PostgreSQL (:mod:`twisted_pop3ng.testing.postgresql`)."""

from __future__ import annotations

import contextlib
import io
from typing import Iterator, List, Tuple

import psycopg
from twisted.trial import unittest

from twisted_pop3ng.errors import TemporaryFailure
from twisted_pop3ng.mailbox import store_from_spec
from twisted_pop3ng.mailbox.postgresql import cli, schema
from twisted_pop3ng.mailbox.postgresql.spec import DEFAULT_POOL_SIZE, parse
from twisted_pop3ng.mailbox.postgresql.store import PostgresStore
from twisted_pop3ng.testing.postgresql import cluster, drop_database, fresh_database


class SpecTests(unittest.TestCase):
    def test_keywords_with_pool_size(self) -> None:
        """pool_size is ours: taken out before libpq sees the rest, which libpq parses."""
        spec = parse("host=db.example.org dbname=mail user=pop3 pool_size=4")
        self.assertEqual(spec.pool_size, 4)
        self.assertEqual(spec.params, {"host": "db.example.org", "dbname": "mail", "user": "pop3"})
        self.assertNotIn("pool_size", spec.conninfo)

    def test_uri_with_pool_size(self) -> None:
        spec = parse("postgresql://pop3:secret@db:5433/mail?pool_size=3&sslmode=require")
        self.assertEqual(spec.pool_size, 3)
        self.assertEqual(spec.params["sslmode"], "require")
        self.assertEqual(spec.params["port"], "5433")
        self.assertNotIn("secret", spec.for_humans(), "the password must not appear in messages")

    def test_quoted_value_is_not_our_keyword(self) -> None:
        """A quoted value that looks like pool_size belongs to its own keyword."""
        spec = parse("password='x pool_size=3' host=db")
        self.assertEqual(spec.pool_size, DEFAULT_POOL_SIZE)
        self.assertEqual(spec.params["password"], "x pool_size=3")

    def test_connect_timeout_default(self) -> None:
        """A dead database fails a login instead of hanging it: connect_timeout unless the DSN sets one."""
        self.assertEqual(parse("host=db").connect_params["connect_timeout"], "10")
        self.assertEqual(parse("host=db connect_timeout=3").connect_params["connect_timeout"], "3")

    def test_bad_specs_name_the_problem(self) -> None:
        for text, problem in [("", "needs a DSN"), ("host=db pool_size=many", "pool_size='many' is not a number"),
                              ("host=db pool_size=0", "out of range"),
                              ("host=db bogus=1", 'invalid connection option "bogus"'),
                              ("postgresql://db/mail?nonsense=1", "nonsense"),
                              ("host=db pool_size=2 pool_size=3", "pool_size is given 2 times")]:
            with self.assertRaises(ValueError) as caught:
                parse(text)
            self.assertIn(problem, str(caught.exception), text)

    def test_mailbox_option_reports_value_error(self) -> None:
        """``--mailbox postgresql:...`` goes through the plugin to the same ValueError."""
        with self.assertRaises(ValueError) as caught:
            store_from_spec("postgresql:host=db pool_size=-1")
        self.assertIn("pool_size=-1 is out of range", str(caught.exception))


@contextlib.contextmanager
def _database(schema_made: bool) -> Iterator[str]:
    dsn = fresh_database(schema=schema_made)
    try:
        yield dsn
    finally:
        drop_database(dsn)


def _run_cli(argv: List[str]) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exit:
            code = int(exit.code or 0)
    return code, out.getvalue(), err.getvalue()


def _tables(dsn: str) -> List[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()
    return [row[0] for row in rows]


class UpgradeTests(unittest.TestCase):
    def test_upgrade_creates_schema_then_is_idempotent(self) -> None:
        with _database(schema_made=False) as dsn:
            code, out, err = _run_cli(["upgrade", dsn])
            self.assertEqual((code, err), (0, ""))
            self.assertIn("applied migration 1:", out)
            self.assertIn("schema upgraded from version 0 to %d" % schema.SCHEMA_VERSION, out)
            self.assertEqual(_tables(dsn), ["maildrops", "message_chunks", "messages", "schema_version"])
            code, out, err = _run_cli(["upgrade", dsn + " pool_size=3"])
            self.assertEqual((code, err), (0, ""))
            self.assertEqual(out, "schema is up to date (version %d)\n" % schema.SCHEMA_VERSION)

    def test_failed_migration_leaves_nothing(self) -> None:
        """A migration that fails half-way rolls back entirely: one transaction."""
        with _database(schema_made=False) as dsn:
            with psycopg.connect(dsn) as conn:  # something in the way of migration 1's third table
                conn.execute("CREATE TABLE message_chunks (x integer)")
            with self.assertRaises(psycopg.errors.DuplicateTable):
                schema.upgrade(dsn)
            self.assertEqual(_tables(dsn), ["message_chunks"])

    def test_status(self) -> None:
        with _database(schema_made=False) as dsn:
            code, out, _ = _run_cli(["status", dsn])
            self.assertEqual(code, 1)
            self.assertIn("schema version 0; this pop3ng needs %d" % schema.SCHEMA_VERSION, out)
            self.assertIn("run: pop3ng db upgrade", out)
            _run_cli(["upgrade", dsn])
            code, out, _ = _run_cli(["status", dsn])
            self.assertEqual((code, out.strip()), (0, "schema version %d; this pop3ng needs %d"
                                                   % (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)))

    def test_unreachable_database(self) -> None:
        """No traceback: one line naming the database (without password) and libpq's reason."""
        dsn = "host=127.0.0.1 port=%d user=pop3ng password=hunter2 dbname=nowhere" % cluster().port
        code, out, err = _run_cli(["upgrade", dsn])
        self.assertEqual(code, 1)
        self.assertIn("dbname=nowhere", err)
        self.assertIn('database "nowhere" does not exist', err)
        self.assertNotIn("hunter2", err)
        self.assertNotIn("Traceback", err)

    def test_bad_dsn_is_usage_error(self) -> None:
        code, _, err = _run_cli(["upgrade", "bogus=1"])
        self.assertEqual(code, 2)
        self.assertIn('invalid connection option "bogus"', err)


class StartupCheckTests(unittest.TestCase):
    """The store refuses a database whose schema does not fit, naming the command to run."""

    def test_missing_schema(self) -> None:
        with _database(schema_made=False) as dsn:
            with self.assertRaises(ValueError) as caught:
                PostgresStore.from_spec(dsn)
            self.assertIn("schema version 0, this pop3ng needs %d: run pop3ng db upgrade '" % schema.SCHEMA_VERSION,
                          str(caught.exception))

    def test_old_schema(self) -> None:
        """A database at an older version (here: migrations recorded but the last one missing)."""
        with _database(schema_made=True) as dsn:  # (made before the patch: the template is shared)
            self.patch(schema, "MIGRATIONS", schema.MIGRATIONS + [(2, "test step", ["CREATE TABLE t2 (x int)"])])
            self.patch(schema, "SCHEMA_VERSION", 2)
            with self.assertRaises(ValueError) as caught:
                PostgresStore.from_spec(dsn)
            self.assertIn("schema version 1, this pop3ng needs 2: run pop3ng db upgrade", str(caught.exception))
            code, out, _ = _run_cli(["upgrade", dsn])
            self.assertEqual(code, 0)
            self.assertIn("applied migration 2: test step", out)
            PostgresStore.from_spec(dsn).stop()

    def test_newer_schema(self) -> None:
        with _database(schema_made=True) as dsn:
            with psycopg.connect(dsn) as conn:
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (schema.SCHEMA_VERSION + 1,))
            with self.assertRaises(ValueError) as caught:
                PostgresStore.from_spec(dsn)
            self.assertIn("is newer than this pop3ng knows", str(caught.exception))

    def test_unreachable_database(self) -> None:
        """A ValueError for --mailbox (twistd exits with the message), and a TemporaryFailure for
        ``pop3ng deliver`` (the MTA retries instead of bouncing)."""
        with self.assertRaises(ValueError) as caught:
            PostgresStore.from_spec("host=127.0.0.1 port=%d user=pop3ng dbname=nowhere" % cluster().port)
        self.assertIsInstance(caught.exception, TemporaryFailure)
        self.assertIn("cannot use PostgreSQL at", str(caught.exception))
        self.assertIn('database "nowhere" does not exist', str(caught.exception))
