"""An independent RFC 1939 oracle: what a client must receive for a stored message.

Written line by line from the RFC (every line ends in CRLF, a line starting with "." gets one more,
"." CRLF ends a multi-line body), never with :mod:`twisted_pop3ng.wire`, so a bug in the codec
cannot hide itself in a test that checks the codec's output. The end-to-end suite, the backend
conformance suite and the codec's property tests all take their expected bytes from here.
"""

from __future__ import annotations

from typing import List

__all__ = ["wire_lines", "wire_message", "stuffed", "top_lines"]


def wire_lines(raw: bytes) -> List[bytes]:
    """The lines of a stored message as a POP3 client must receive them (without line endings).

    LF and CRLF both end a line; a bare CR is data; a last line without newline still counts.
    """
    if not raw:
        return []
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def wire_message(raw: bytes) -> bytes:
    """What the client stores: every line ending CRLF, no stuffing (the LIST size is its length)."""
    return b"".join(line + b"\r\n" for line in wire_lines(raw))


def stuffed(lines: List[bytes]) -> bytes:
    """The multi-line response body for ``lines``, dot-stuffed, terminator included."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


def top_lines(raw: bytes, n: int) -> List[bytes]:
    """Header, the blank separator line and ``n`` body lines (RFC 1939 TOP)."""
    lines = wire_lines(raw)
    if b"" not in lines:
        return lines
    separator = lines.index(b"")
    return lines[: separator + 1 + n]
