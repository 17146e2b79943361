"""The ``pop3ng`` console script: ``pop3ng SUBCOMMAND …`` (fetch, passwd, …)."""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

#: subcommand -> "module:function"; each function takes argv (after the subcommand), returns an exit code.
SUBCOMMANDS = {
    "fetch": ("twisted_pop3ng.fetch.cli:main", "fetch mail from a POP3 server into a Maildir, mbox or MDA"),
    "deliver": ("twisted_pop3ng.delivery.lda:main", "deliver a message from stdin into a maildrop (an LDA)"),
    "db": ("twisted_pop3ng.mailbox.postgresql.cli:main", "create or upgrade the PostgreSQL schema (db upgrade DSN)"),
    "passwd": ("twisted_pop3ng.auth.passwords:main", "print a password hash for a passwd-file"),
}


def usage() -> str:
    lines = ["usage: pop3ng SUBCOMMAND [options]", "", "subcommands:"]
    lines += ["  %-8s %s" % (name, text) for name, (_, text) in sorted(SUBCOMMANDS.items())]
    lines.append("")
    lines.append("The server runs with: twistd -n pop3ng --help")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print("pop3ng: unknown subcommand %r\n\n%s" % (name, usage()), file=sys.stderr)
        return 2
    module_name, _, func = SUBCOMMANDS[name][0].partition(":")
    try:
        module = importlib.import_module(module_name)
        entry = getattr(module, func)
    except (ImportError, AttributeError):
        print("pop3ng: subcommand %r is not available in this build" % name, file=sys.stderr)
        return 2
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
