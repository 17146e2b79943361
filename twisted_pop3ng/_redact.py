"""Secrets out of what is shown: error messages, logs, ``--help`` echoes of a user's input.

A ``password=`` value (a libpq keyword DSN: quoted, unterminated, or with backslash-escaped spaces)
and the password of a URL's ``user:password@`` (up to the authority's last ``@``, so a password
holding an ``@`` is hidden whole) become ``***``. Everything else is left as typed, so the message
still shows which value was wrong.

Rules of this module: the lowest layer (standard library only); no logging, no I/O.
"""

from __future__ import annotations

import re

_SECRET = re.compile(
    r"(password\s*=\s*)('(?:[^'\\]|\\.)*(?:'|$)|(?:[^\s\\]|\\.)+)"
    r"|(://[^:/@\s]*:)([^/\s]*)(@)",
    re.IGNORECASE)

__all__ = ["redact", "redact_checker"]


def redact(text: str) -> str:
    """``text`` with every password it carries replaced by ``***``."""
    def hide(match: "re.Match[str]") -> str:
        if match.group(1) is not None:
            return match.group(1) + "***"
        return match.group(3) + "***" + match.group(5)

    return _SECRET.sub(hide, text)


def redact_checker(description: str) -> str:
    """An ``--auth`` checker description for a message: ``memory:USER:PASSWORD:...`` holds
    passwords in every other field, so it is shown by its type alone; others through :func:`redact`."""
    return "memory:***" if description.lower().startswith("memory:") else redact(description)
