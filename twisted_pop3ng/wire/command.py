"""Command lines as the server reads them: parsing with limits, message numbers, line counts.

Rules of this module: no Twisted and no I/O; :class:`WireError` text is safe to show to the peer.
"""

from __future__ import annotations

import re
from typing import List, NamedTuple

from twisted_pop3ng.wire.limits import MAX_NUMBER_DIGITS

_VERB_RE = re.compile(rb"\A[A-Za-z0-9_-]{1,16}\Z")


class WireError(ValueError):
    """The peer sent something the codec cannot accept; the text is safe to show to the peer."""


class Command(NamedTuple):
    """A parsed command line: an upper-cased verb and the raw bytes after the first space.

    A named tuple, not a frozen dataclass: one is built per command line, and that is ~3x faster.
    """

    verb: str
    rest: bytes

    def words(self) -> List[bytes]:
        """Arguments split on whitespace (trailing blanks tolerated, as Dovecot does)."""
        return self.rest.split()


def parse_command(line: bytes) -> Command:
    """Parse one command line (without its line ending)."""
    if not line.strip():
        raise WireError("Empty command")
    verb, _, rest = line.partition(b" ")
    if not _VERB_RE.match(verb):
        raise WireError("Unknown command")
    return Command(verb.decode("ascii").upper(), rest)


def parse_message_number(word: bytes) -> int:
    """A 1-based message number: decimal digits only, no sign, not zero."""
    if not word.isdigit() or not word.isascii() or len(word) > MAX_NUMBER_DIGITS:
        raise WireError("Invalid message number")
    number = int(word)
    if number == 0:
        raise WireError("Invalid message number")
    return number


def parse_count(word: bytes) -> int:
    """A non-negative decimal count (the line count of TOP).

    Any number of digits is valid (RFC 1939: "a non-negative number"; clients send huge counts to
    mean "all", and Dovecot accepts them); beyond ``MAX_NUMBER_DIGITS`` it is capped, not parsed.
    """
    if not word.isdigit() or not word.isascii():
        raise WireError("Invalid line count")
    if len(word) > MAX_NUMBER_DIGITS:
        capped: int = 10 ** MAX_NUMBER_DIGITS  # (int ** int is typed Any: a negative power is a float)
        return capped
    return int(word)
