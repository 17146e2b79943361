"""Status lines: formatting ``+OK``/``-ERR [CODE]`` (server) and parsing them (client).

Rules of this module: no Twisted, no I/O; a formatted line never exceeds ``MAX_RESPONSE_LINE``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Optional

from twisted_pop3ng.wire.command import WireError
from twisted_pop3ng.wire.limits import CRLF, MAX_RESPONSE_LINE

_CODE_RE = re.compile(r"\A\[([^\]]*)\]\s?")


@functools.lru_cache(maxsize=512)
def response(ok: bool, text: str = "", code: Optional[str] = None) -> bytes:
    """Format a single-line status response, never longer than ``MAX_RESPONSE_LINE``.

    Cached: most replies are the same few lines (greeting, "Logged in.", "Logging out.")."""
    parts = ["+OK" if ok else "-ERR"]
    if code:
        parts.append("[%s]" % code)
    if text:
        parts.append(text)
    line = " ".join(parts).encode("utf-8", "replace")
    line = line.replace(b"\r", b" ").replace(b"\n", b" ")
    limit = MAX_RESPONSE_LINE - len(CRLF)
    if len(line) > limit:
        line = line[:limit]
    return line + CRLF


@dataclass(frozen=True)
class Status:
    """A parsed status line as a client sees it."""

    ok: bool
    text: str
    code: Optional[str] = None
    continuation: bool = False

    @property
    def payload(self) -> bytes:
        """The raw text of a SASL ``+`` continuation (base64)."""
        return self.text.encode("ascii", "replace")


def parse_status(line: bytes) -> Status:
    """Parse ``+OK ...``, ``-ERR [CODE] ...`` or a SASL ``+ challenge`` line."""
    text = line.decode("utf-8", "replace")
    if text.startswith("+OK"):
        ok, rest = True, text[3:]
    elif text.startswith("-ERR"):
        ok, rest = False, text[4:]
    elif text == "+" or text.startswith("+ "):
        return Status(True, text[2:], None, continuation=True)
    else:
        raise WireError("Malformed status line: %r" % line[:80])
    if rest and not rest.startswith(" "):
        raise WireError("Malformed status line: %r" % line[:80])
    rest = rest[1:]
    code = None
    match = _CODE_RE.match(rest)
    if match:
        code = match.group(1)
        rest = rest[match.end():]
    return Status(ok, rest, code)
