"""``--mailbox postgresql:DSN``: a libpq connection string or URI, plus pop3ng's own ``pool_size=N``.

libpq refuses keywords it does not know, so ``pool_size`` is taken out before libpq parses the
rest (with :func:`psycopg.conninfo.conninfo_to_dict`, so every libpq form and default holds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Connections (and threads) per front end when the DSN names no pool_size.
DEFAULT_POOL_SIZE = 10
MAX_POOL_SIZE = 1000
#: libpq's connect_timeout when the DSN sets none: a dead database fails a login, not hangs it.
DEFAULT_CONNECT_TIMEOUT = "10"
_OURS = "pool_size"
_EXAMPLE = "e.g. postgresql:'host=db dbname=mail user=pop3 pool_size=10' or postgresql:postgresql://pop3@db/mail"


@dataclass(frozen=True)
class PostgresSpec:
    """What ``--mailbox postgresql:...`` asks for."""

    params: Dict[str, str]
    pool_size: int

    @property
    def connect_params(self) -> Dict[str, str]:
        """The libpq parameters to connect with (our default connect_timeout added)."""
        return dict({"connect_timeout": DEFAULT_CONNECT_TIMEOUT}, **self.params)

    @property
    def conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", **self.connect_params)

    def for_humans(self) -> str:
        """The DSN without its password, quoted for a shell: for messages and logs."""
        from psycopg.conninfo import make_conninfo

        shown = {k: v for k, v in self.params.items() if k != "password"}
        return "'%s'" % make_conninfo("", **shown).replace("'", "'\\''")


def parse(argstring: str) -> PostgresSpec:
    """Parse the text after ``postgresql:``; ``ValueError`` naming the problem when unusable."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    text = argstring.strip()
    if not text:
        raise ValueError("postgresql: needs a DSN, " + _EXAMPLE)
    if text.startswith(("postgresql://", "postgres://")):
        rest, pool_sizes = _split_uri(text)
    else:
        rest, pool_sizes = _split_keywords(text)
    if len(pool_sizes) > 1:
        raise ValueError("pool_size is given %d times in the DSN" % len(pool_sizes))
    pool_size = _pool_size(pool_sizes[0]) if pool_sizes else DEFAULT_POOL_SIZE
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(rest).items() if v is not None}
    except psycopg.ProgrammingError as error:
        raise ValueError("unusable PostgreSQL DSN: %s (%s)"
                         % (str(error).strip().splitlines()[0], _EXAMPLE)) from None
    return PostgresSpec(params, pool_size)


def _pool_size(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        raise ValueError("pool_size=%r is not a number" % (value,)) from None
    if not 1 <= size <= MAX_POOL_SIZE:
        raise ValueError("pool_size=%d is out of range (1 to %d)" % (size, MAX_POOL_SIZE))
    return size


def _split_uri(uri: str) -> Tuple[str, List[str]]:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = [v for k, v in query if k == _OURS]
    rest = urlencode([(k, v) for k, v in query if k != _OURS])
    return urlunsplit(parts._replace(query=rest)), ours


# One "keyword = value" of libpq's key/value form: the value bare, or single-quoted with \-escapes.
_KEYWORD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)*)\s*", re.S)


def _split_keywords(text: str) -> Tuple[str, List[str]]:
    kept, ours, pos = [], [], 0
    while pos < len(text):
        match = _KEYWORD.match(text, pos)
        if match is None:  # let libpq word the error
            kept.append(text[pos:])
            break
        if match.group(1) == _OURS:
            ours.append(match.group(2).strip("'"))
        else:
            kept.append(match.group(0).strip())
        pos = match.end()
    return " ".join(kept), ours
