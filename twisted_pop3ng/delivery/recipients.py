"""Envelope addresses (``MAIL FROM``, ``RCPT TO``) and the maildrop user a recipient maps to.

A recipient ``user@domain`` goes to the user ``user@domain`` if the user database (the ``--auth``
checkers) knows it, else to ``user``, its local part (docs/delivery.rst); a recipient without a
domain is looked up as it is. Unknown to both: no such user. Domains are not checked: the MTA in
front decides which domains are local.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional

from twisted.internet import defer

from twisted_pop3ng.auth.checkers import user_lookup

#: RFC 5321 §4.5.3.1.3: a path (the address in angle brackets) is at most 256 octets.
MAX_PATH = 256


class AddressError(ValueError):
    """An address we cannot take; the text is meant for the client."""


def parse_path(argument: str, null_allowed: bool = False) -> str:
    """The address in ``<...>`` at the start of ``argument`` (``MAIL FROM:``/``RCPT TO:`` already
    removed; parameters after it are ignored here). A source route (``<@a,@b:x@y>``) is dropped
    (RFC 5321 §4.1.2 allows it, §3.3 says ignore it). Only printable ASCII (no SMTPUTF8)."""
    argument = argument.strip()
    if argument.startswith("<"):
        end = argument.find(">")
        if end == -1:
            raise AddressError("Unterminated address (missing '>')")
        path = argument[1:end]
    else:  # some clients leave the brackets out
        path = argument.split(" ", 1)[0]
    if path.startswith("@") and ":" in path:
        path = path.split(":", 1)[1]
    if len(path) > MAX_PATH:
        raise AddressError("Address longer than %d octets" % MAX_PATH)
    if any(not 0x20 <= ord(c) <= 0x7E for c in path):
        raise AddressError("Address with characters outside printable ASCII")
    if " " in path and not (path.startswith('"') and '"@' in path):
        raise AddressError("Address with a space outside a quoted local part")
    if not path and not null_allowed:
        raise AddressError("Empty address")
    return path


def local_part(address: str) -> str:
    return address.rpartition("@")[0] if "@" in address else address


def candidates(address: str) -> List[str]:
    """The user names ``address`` may belong to, in the order they are tried."""
    local = local_part(address)
    if local.startswith('"') and local.endswith('"') and len(local) > 1:
        local = local[1:-1]
    return [address] if not local or local == address else [address, local]


class RecipientResolver:
    """Maps a recipient address to a known user with ``lookups`` (``name -> bool`` or a Deferred
    of one, as :func:`~twisted_pop3ng.auth.checkers.user_lookup` gives)."""

    def __init__(self, lookups: Iterable[Callable[[str], Any]]) -> None:
        self.lookups = list(lookups)

    @classmethod
    def from_checkers(cls, checkers: Iterable[Any]) -> "RecipientResolver":
        """A resolver over the ``--auth`` checkers that can look users up; ValueError if none can."""
        seen: List[Any] = []
        lookups = []
        for checker in checkers:
            if any(checker is known for known in seen):
                continue
            seen.append(checker)
            lookup = user_lookup(checker)
            if lookup is not None:
                lookups.append(lookup)
        if not lookups:
            raise ValueError("no --auth checker can tell which users exist (passwd-file, memory, file "
                             "and unix can)")
        return cls(lookups)

    @defer.inlineCallbacks
    def resolve(self, address: str) -> Any:
        """A Deferred firing with the user ``address`` goes to, or None when no one is known."""
        for name in candidates(address):
            for lookup in self.lookups:
                known = yield defer.maybeDeferred(lookup, name)
                if known:
                    return name
        return None

    def resolve_now(self, address: str) -> Optional[str]:
        """:meth:`resolve` for a caller without a reactor (``pop3ng deliver``): the checkers must
        answer at once (all built-in ones do); RuntimeError if one does not."""
        results: List[Any] = []
        self.resolve(address).addBoth(results.append)
        if not results:
            raise RuntimeError("an --auth checker answers asynchronously; pop3ng deliver cannot wait for it")
        if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]
