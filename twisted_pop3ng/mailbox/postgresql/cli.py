"""``pop3ng db``: create or migrate the PostgreSQL schema, or show its version.

    pop3ng db upgrade DSN    apply the missing migrations, in one transaction (idempotent)
    pop3ng db status DSN     the schema version, and whether this pop3ng can run on it

DSN is the same as after ``--mailbox postgresql:`` (``pool_size`` is accepted and ignored).
Exit codes: 0 done (status: the schema fits), 1 the database refused or is out of date, 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pop3ng db", description="Manage pop3ng's PostgreSQL schema.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    upgrade = commands.add_parser("upgrade", help="create or migrate the schema (idempotent)")
    upgrade.add_argument("dsn", metavar="DSN", help="libpq connection string or URI, as for --mailbox postgresql:")
    status = commands.add_parser("status", help="show the schema version")
    status.add_argument("dsn", metavar="DSN", help="libpq connection string or URI")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    import psycopg

    from twisted_pop3ng.mailbox.postgresql import schema
    from twisted_pop3ng.mailbox.postgresql.spec import parse

    try:
        spec = parse(args.dsn)
    except ValueError as error:
        print("pop3ng db: %s" % error, file=sys.stderr)
        return 2
    try:
        if args.command == "upgrade":
            before, applied = schema.upgrade(spec.conninfo)
            for version, what in applied:
                print("applied migration %d: %s" % (version, what))
            if applied:
                print("schema upgraded from version %d to %d" % (before, applied[-1][0]))
            else:
                print("schema is up to date (version %d)" % before)
            return 0
        with psycopg.connect(spec.conninfo) as conn:
            version = schema.current_version(conn)
        print("schema version %d; this pop3ng needs %d" % (version, schema.SCHEMA_VERSION))
        if version < schema.SCHEMA_VERSION:
            print("run: pop3ng db upgrade %s" % spec.for_humans())
        return 0 if version == schema.SCHEMA_VERSION else 1
    except psycopg.Error as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print("pop3ng db: PostgreSQL at %s: %s" % (spec.for_humans(), first), file=sys.stderr)
        return 1
    except schema.SchemaError as error:
        print("pop3ng db: %s" % error, file=sys.stderr)
        return 1
