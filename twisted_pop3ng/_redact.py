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

__all__ = ["redact"]


def redact(text: str) -> str:
    """``text`` with every password it carries replaced by ``***``."""
    def hide(match: "re.Match[str]") -> str:
        if match.group(1) is not None:
            return match.group(1) + "***"
        return match.group(3) + "***" + match.group(5)

    return _SECRET.sub(hide, text)
