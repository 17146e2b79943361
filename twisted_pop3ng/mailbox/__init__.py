"""Mailbox backends: each provides ``IMailboxStore`` (open + lock a maildrop) and ``IMailbox``."""

from __future__ import annotations

import re
from typing import Any

from twisted_pop3ng.errors import POP3Error

#: ``--mailbox`` schemes and the callables that build a store from the rest of the spec.
SCHEMES = {
    "maildir": "twisted_pop3ng.mailbox.maildir:MaildirStore",
    "memory": "twisted_pop3ng.mailbox.memory:MemoryStore.from_spec",
}


class MailboxSpecError(ValueError):
    """An unusable ``--mailbox`` value; the text is meant for the command line."""


def store_from_spec(spec: str) -> Any:
    """Build a store from a ``--mailbox`` value such as ``maildir:/var/mail/{user}/Maildir``."""
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in SCHEMES:
        raise MailboxSpecError(
            "unknown mailbox scheme %r (known: %s)" % (scheme, ", ".join(sorted(SCHEMES)))
        )
    module_name, _, attr = SCHEMES[scheme].partition(":")
    import importlib

    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target(rest)


_UNSAFE_IN_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def safe_username(user: str) -> str:
    """Refuse user names that could escape a path template (``..``, ``/``, NUL, control chars)."""
    if not user or user in (".", "..") or _UNSAFE_IN_NAME.search(user):
        raise POP3Error("Invalid user name for this mailbox store", "SYS/PERM")
    return user
