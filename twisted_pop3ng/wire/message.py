"""Message bodies on the wire: dot-stuffing, CRLF, terminators, wire sizes, in both directions.

Rules of this module:

* no Twisted imports and no I/O: every function takes bytes and returns bytes or values;
* every limit is a named constant with the RFC that sets it;
* the streaming encoder and decoder carry their state across chunk boundaries, so a caller may feed
  them any split of the input (whole, byte by byte, or anything between) and get the same result;
* no per-line Python loops on the data path: ``bytes.replace`` over whole chunks does the work, or
  the optional C module ``_speedups`` (built by ``setup.py`` where a compiler is present), whose
  functions replace :func:`stuff_dots`, :func:`encode_body` and :func:`wire_size_of` when it
  imports; the pure-Python versions stay available as ``py_*`` (the tests compare both).
  ``POP3NG_PURE_PYTHON=1`` in the environment keeps the C module out even where it is built, so
  the pure-Python versions can be run, measured and mutation-tested in place.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional, Tuple

from twisted_pop3ng.wire.limits import CRLF, TERMINATOR


def stuff_dots(data: bytes) -> bytes:
    """Double every dot that follows a LF in ``data`` (a line start other than the first byte).

    Dots are rare in attachments (base64) and most of a large message is attachments, so dots are
    found with ``bytes.find`` (memchr, tens of GB/s) and only the line-start ones are doubled: ~4x
    faster than a regular expression or ``bytes.replace`` there (CPython 3.11 searches two-byte
    needles slowly, and ``bytes.count`` of one byte does not use memchr). Text with many dots
    exhausts a probe budget and goes to ``split``/``join``, the fastest form for dense dots.
    """
    find = data.find
    pos = find(b".", 1)
    if pos == -1:
        return data
    budget = (len(data) >> 9) + 8
    hits = []
    while pos != -1:
        if data[pos - 1] == 0x0A:
            hits.append(pos)
        budget -= 1
        if not budget:
            return b"\n..".join(data.split(b"\n."))
        pos = find(b".", pos + 1)
    if not hits:
        return data
    parts = []
    previous = 0
    for pos in hits:
        parts.append(data[previous:pos])
        previous = pos
    parts.append(data[previous:])
    return b".".join(parts)


def encode_whole(data: bytes) -> bytes:
    """The wire form of a complete stored message, terminator included, in one pass.

    Equal to ``MessageEncoder().feed(data) + finish()`` (tests compare them on random input) but
    without the per-chunk state: the bulk RETR path of small messages spends its time here.
    """
    return b"".join(encode_whole_pieces(data))


def encode_whole_pieces(data: bytes) -> List[bytes]:
    """:func:`encode_whole` as pieces to write one after the other (the body, then the final
    CRLF and terminator): joining them would copy the body once more, and the server hands the
    pieces to the kernel as they are (``sendmsg``)."""
    if not data:
        return [TERMINATOR]
    tail = TERMINATOR
    if data[-1] != 0x0A:
        # A last line without a line ending gets CRLF; a trailing bare CR becomes that CRLF.
        tail = CRLF + TERMINATOR
        if data[-1] == 0x0D:
            data = data[:-1]
            if not data:
                return [tail]
    return [encode_body(data), tail]


def encode_body(data: bytes) -> bytes:
    """A stored message in wire form without its terminator: every LF as CRLF (a CRLF stays one,
    a bare CR stays as it is) and every dot that starts a line, the first byte included, doubled."""
    if 0x0A in data:  # an int: memchr at once, cheaper than a one-byte bytes needle
        if 0x0D in data:
            data = data.replace(b"\r\n", b"\n")
        data = stuff_dots(data.replace(b"\n", b"\r\n"))
    return b"." + data if data[:1] == b"." else data


class MessageEncoder:
    """Turn stored message bytes into the POP3 multi-line wire form, chunk by chunk.

    * LF and CRLF line endings both become CRLF (a CRLF split across chunks is not doubled);
    * lines starting with ``.`` are dot-stuffed, the first line and chunk boundaries included;
    * a last line without line ending gets CRLF before the terminator;
    * ``body_lines`` (TOP) stops after the header, the blank line and that many body lines;
      ``done`` then turns true and the caller stops feeding.

    With ``stuff=False`` the output is the message as the client will store it (used to measure the
    wire size: ``LIST`` size == octets the client gets).
    """

    def __init__(self, body_lines: Optional[int] = None, stuff: bool = True) -> None:
        self._stuff = stuff
        self._limit = body_lines
        self._pending_cr = False
        self._bol = True
        self._empty = True
        self.done = False
        # TOP bookkeeping: length of the current (incomplete) line, header/body state, body lines sent.
        self._line_len = 0
        self._in_headers = True
        self._body_sent = 0

    def feed(self, data: bytes) -> bytes:
        if self.done or not data:
            return b""
        if self._pending_cr:
            data = b"\r" + data
            self._pending_cr = False
        if data[-1:] == b"\r":
            self._pending_cr = True
            data = data[:-1]
            if not data:
                return b""
        if 0x0A in data:
            if 0x0D in data:  # memchr: ~100x faster than searching for CRLF
                data = data.replace(b"\r\n", b"\n")
            data = data.replace(b"\n", b"\r\n")
        if self._limit is not None:
            data = self._cut(data, self._limit)
        return self._emit(data)

    def encode_all(self, data: bytes) -> List[bytes]:
        """``feed(data) + finish()`` for a whole message given to a fresh encoder, as pieces to
        write in order; without a TOP limit that is the one-pass :func:`encode_whole_pieces`
        (the bulk RETR path)."""
        if self._limit is None and self._stuff and self._empty and not self._pending_cr:
            self.done = True
            return encode_whole_pieces(data)
        return [self.feed(data), self.finish()]

    def finish(self) -> bytes:
        """The rest of the message, the final CRLF if one is missing, and the terminator."""
        tail = b""
        if self._pending_cr and not self.done:
            tail = self._emit(b"\r\n")
        elif not self._bol:
            tail = self._emit(b"\r\n")
        self._pending_cr = False
        self.done = True
        return tail + (TERMINATOR if self._stuff else b"")

    def _emit(self, data: bytes) -> bytes:
        if not data:
            return data
        if self._stuff:
            data = stuff_dots(data)
            if self._bol and data[:1] == b".":
                data = b"." + data
        self._bol = data[-1:] == b"\n"
        self._empty = False
        return data

    def _cut(self, data: bytes, limit: int) -> bytes:
        """Apply the TOP limit to normalised data; set ``done`` when the limit is reached."""
        pos = 0
        size = len(data)
        while pos < size:
            nl = data.find(b"\n", pos)
            if nl == -1:
                self._line_len += size - pos
                break
            line_len = self._line_len + nl + 1 - pos
            self._line_len = 0
            pos = nl + 1
            if self._in_headers:
                if line_len == 2:
                    self._in_headers = False
                    if limit == 0:
                        self.done = True
                        return data[:pos]
            else:
                self._body_sent += 1
                if self._body_sent >= limit:
                    self.done = True
                    return data[:pos]
        return data


def wire_size(chunks: Iterable[bytes]) -> int:
    """The number of octets a client receives for a message (CRLF line endings, unstuffed)."""
    encoder = MessageEncoder(stuff=False)
    total = 0
    for chunk in chunks:
        total += len(encoder.feed(chunk))
    return total + len(encoder.finish())


def wire_size_of(data: bytes) -> int:
    """Wire size of a whole message held in memory, the same as ``wire_size([data])``: the
    maildir's cold scan measures every file with it."""
    if 0x0D in data:  # CR (rare in a maildir); an int operand is a plain memchr
        return wire_size((data,))
    if not data:
        return 0
    # LF-only (the usual maildir form): each LF becomes CRLF; a last line without LF gets CRLF.
    return len(data.replace(b"\n", b"\r\n")) + (0 if data[-1] == 0x0A else 2)


def encode_message(data: bytes, body_lines: Optional[int] = None) -> bytes:
    """Encode a whole message at once (small messages, tests)."""
    encoder = MessageEncoder(body_lines)
    return encoder.feed(data) + encoder.finish()


class MultiLineDecoder:
    """Client side: undo dot-stuffing and find the terminator of one multi-line response body.

    ``feed`` returns ``(payload, leftover)``: the unstuffed octets of the body so far and, once the
    terminating ``.`` line was seen, the bytes that followed it (``None`` until then; possibly empty).
    Lines keep their CRLF endings. Partial lines are held back, except that a very long line is passed
    on in pieces so memory stays bounded.
    """

    FLUSH_PARTIAL = 65536

    def __init__(self) -> None:
        self._carry = b""
        self._bol = True
        #: Whether what came before ended with CRLF (or nothing came yet): only then can a ``.``
        #: line be the terminator. A bare LF starts a line for dot-unstuffing, not for the end.
        self._after_crlf = True
        self.done = False

    def feed(self, data: bytes) -> Tuple[bytes, Optional[bytes]]:
        if self.done:
            return b"", data
        data = self._carry + data
        self._carry = b""
        last_nl = data.rfind(b"\n")
        if last_nl == -1:
            return self._partial(data), None
        block, rest = data[: last_nl + 1], data[last_nl + 1 :]
        end = self._find_terminator(block)
        if end is not None:
            body, leftover = block[:end], block[end + 3 :] + rest
            self.done = True
            return self._unstuff(body), leftover
        out = self._unstuff(block)
        self._bol = True
        self._after_crlf = block.endswith(CRLF)
        return out + self._partial(rest), None

    def _find_terminator(self, block: bytes) -> Optional[int]:
        """Offset of the ``.CRLF`` line after a CRLF in a block of whole lines, or None. (Only
        CRLF.CRLF ends the body, wherever the reads split it: a block that starts with ``.CRLF``
        after one that ended in a bare LF once ended an LMTP message there, while the same bytes
        in one read did not -- a way to smuggle a second message past an MTA.)"""
        if self._bol and self._after_crlf and block.startswith(TERMINATOR):
            return 0
        index = block.find(b"\r\n.\r\n")
        return None if index == -1 else index + 2

    def _unstuff(self, data: bytes) -> bytes:
        if not data:
            return data
        if self._bol and data[:1] == b".":
            data = data[1:]
        if b"\n." in data:
            data = data.replace(b"\n.", b"\n")
        return data

    def _partial(self, data: bytes) -> bytes:
        """Keep an incomplete line, or pass most of it on when it grows too long."""
        if len(data) < self.FLUSH_PARTIAL:
            self._carry = data
            return b""
        # Keep the last byte (it may be the CR of the coming CRLF); a long line is never the terminator.
        head, self._carry = data[:-1], data[-1:]
        out = self._unstuff(head)
        self._bol = False
        self._after_crlf = False
        return out


# -- the C versions, where built --------------------------------------------------------------------

#: The environment variable that keeps the C module out ("1"; "0" or unset: use it where built).
PURE_PYTHON_ENV = "POP3NG_PURE_PYTHON"
#: Whether the environment asked for the pure-Python versions (read once, at import).
PURE_PYTHON_ASKED = os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")

py_stuff_dots, py_encode_body, py_wire_size_of = stuff_dots, encode_body, wire_size_of
SPEEDUPS = False
if not PURE_PYTHON_ASKED:
    try:
        # (The C functions take their argument by position only: hence the ignore.)
        from twisted_pop3ng.wire._speedups import (  # type: ignore[assignment]  # noqa: F811
            encode_body, stuff_dots, wire_size_of)
    except ImportError:  # not compiled here: the pure-Python versions above
        pass
    else:
        SPEEDUPS = True
