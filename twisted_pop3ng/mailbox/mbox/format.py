"""The mbox file format: separator lines, ``From `` quoting (mboxrd and mboxo), and the scan.

Rules of this module: standard library, :mod:`twisted_pop3ng.wire` and our errors only; reads through a
descriptor with ``pread`` and never holds more than a chunk and one line piece (lines longer than
:data:`LINE_LIMIT` are handled in pieces), so a 50 MB message costs bounded memory.

* A message starts at a ``From_`` line -- ``From SENDER DATE`` with a time and a year -- that is
  the first line of the file or follows an empty line (jwz's rule, with the date check of mutt and
  Dovecot, since Dovecot leaves ``From `` body lines unquoted).
* Its content runs from the line after that ``From_`` line to the next one, less one empty line
  before it (the separator every writer adds; at the end of the file too, when present).
* Quoting, decided on the first piece of each line: mboxrd unquotes ``>+From `` by one ``>``;
  mboxo unquotes only ``>From ``. The scan and the message reader share :func:`unquoted`, so the
  sizes the scan computes are the octets the reader gives.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Tuple

from twisted_pop3ng.errors import TemporaryFailure
from twisted_pop3ng.wire import wire_size

FORMATS = ("mboxrd", "mboxo")
#: Longest line piece handled at once; a longer line is read in pieces of this size.
LINE_LIMIT = 1 << 16
READ_CHUNK = 1 << 18
#: Header fields that make up a message's fingerprint: ones that mail clients rewriting an mbox
#: (mutt, Dovecot adding Status:, X-UID:, Content-Length:) leave alone.
FINGERPRINT_FIELDS = (b"message-id", b"date", b"from", b"subject", b"x-uidl")


#: A line start that mboxrd / mboxo quoting touched (``re.M``: at every line start).
_QUOTED_LINES = {"mboxrd": re.compile(rb"^>(>*From )", re.M), "mboxo": re.compile(rb"^>(From )", re.M)}
_TO_QUOTE = {"mboxrd": re.compile(rb"^(>*From )", re.M), "mboxo": re.compile(rb"^(From )", re.M)}
_SEPARATOR = re.compile(rb"^From ", re.M)
#: CRLF whose CR is not itself preceded by a CR: turning these into LF keeps the wire form.
_PLAIN_CRLF = re.compile(rb"(?<!\r)\r\n")


def unquote(chunk: bytes, fmt: str, bol: bool) -> bytes:
    """A line-aligned chunk with ``From `` quoting undone (one ``>`` less); ``bol`` False: the
    chunk's first line began in an earlier chunk and is left alone."""
    if not bol:
        nl = chunk.find(b"\n") + 1
        if nl == 0:
            return chunk
        return chunk[:nl] + _QUOTED_LINES[fmt].sub(rb"\1", chunk[nl:])
    return _QUOTED_LINES[fmt].sub(rb"\1", chunk)


def _count_quoted(chunk: bytes, fmt: str, bol: bool) -> int:
    return sum(1 for m in _QUOTED_LINES[fmt].finditer(chunk) if bol or m.start() > 0)


def quote(chunk: bytes, bol: bool, fmt: str = "mboxrd") -> bytes:
    """Quoting for writing a line-aligned chunk: mboxrd gives ``>*From `` at a line start one
    more ``>``, mboxo only ``From `` (as Exim, Postfix local and procmail write); and CRLF line
    ends become LF where that keeps the wire form (as MTAs store mail)."""
    chunk = _PLAIN_CRLF.sub(b"\n", chunk)
    pattern = _TO_QUOTE[fmt]
    if not bol:
        nl = chunk.find(b"\n") + 1
        if nl == 0:
            return chunk
        return chunk[:nl] + pattern.sub(rb">\1", chunk[nl:])
    return pattern.sub(rb">\1", chunk)


def is_blank(line: bytes) -> bool:
    return line == b"\n" or line == b"\r\n"


class Chunks:
    """``fd``'s octets in ``[start, end)`` (``start`` at a line start) in chunks that end at a line
    end, except pieces of a line longer than :data:`LINE_LIMIT` (then the next chunk does not
    start a line) and the last one."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd = fd
        self.end = end
        self.pos = start  # offset of the next chunk
        self.bol = True  # whether the next chunk starts a line
        self._carry = b""
        self._read_at = start

    def next_chunk(self) -> bytes:
        """The next chunk (b"" at ``end``); ``self.bol`` said whether it starts a line."""
        buf = self._carry
        while True:
            want = min(READ_CHUNK, self.end - self._read_at)
            data = os.pread(self.fd, want, self._read_at) if want > 0 else b""
            if not data and want > 0:
                # Shorter than the scan saw: another program truncated it; never pass on a
                # message cut short as if it were whole.
                raise TemporaryFailure("The mbox changed while it was read")
            self._read_at += len(data)
            buf += data
            if not data:
                chunk, buf = buf, b""
                break
            nl = buf.rfind(b"\n")
            if nl != -1:
                chunk, buf = buf[:nl + 1], buf[nl + 1:]
                break
            if len(buf) >= LINE_LIMIT:
                chunk, buf = buf, b""
                break
        self._carry = buf
        self.pos += len(chunk)
        return chunk

    def __iter__(self) -> Iterator[Tuple[int, bool, bytes]]:
        """``(offset, starts a line, chunk)`` to the end."""
        while True:
            pos, bol = self.pos, self.bol
            chunk = self.next_chunk()
            if not chunk:
                return
            self.bol = chunk.endswith(b"\n")
            yield pos, bol, chunk


@dataclass
class Record:
    """One message of the mbox: ``start`` (its ``From_`` line) to ``end`` (the next one's start)."""

    start: int
    from_line: bytes
    content_start: int = 0
    content_end: int = 0
    end: int = 0
    size: int = 0  # wire size
    length: int = 0  # octets of the stored message, unquoted
    fingerprint: str = ""
    x_uidl: Optional[str] = None
    body_digest: bytes = b""  # SHA-256 of the body and the separator after it

    def layout(self) -> tuple:
        """What must stay the same for UPDATE to trust this record (header fields may change in
        place when their length does not: Dovecot's X-IMAPbase/X-UID updates do that)."""
        return (self.start, self.content_start, self.content_end, self.end, self.from_line,
                self.fingerprint, self.body_digest)


@dataclass
class _Building:
    record: Record
    raw_len: int = 0
    quoted: int = 0
    lf_count: int = 0
    crlf_count: int = 0
    bare_cr: bool = False
    last_byte: bytes = b""
    tail_blank: bytes = b""  # the content's last line when it is an empty line
    in_headers: bool = True
    body_start: int = -1
    body_hash: Any = field(default_factory=hashlib.sha256)
    header_name: bytes = b""
    fields: dict = field(default_factory=dict)


@dataclass
class Scan:
    records: List[Record]
    end: int
    digest: bytes


def _last_line_blank(segment: bytes, bol: bool) -> bytes:
    """The segment's last line when it is a whole empty line, else b""."""
    if not segment.endswith(b"\n"):
        return b""
    before = segment.rfind(b"\n", 0, len(segment) - 1)
    if before == -1 and not bol:
        return b""  # (it began in an earlier segment: not empty)
    line = segment[before + 1:]
    return line if is_blank(line) else b""


#: A ``From_`` line: ``From SENDER DATE``, the date with a time and a four-digit year (asctime's
#: "Fri Dec  4 22:59:24 2026", with or without a zone; RFC 822's "4 Dec 2026 22:59:24"). Checked
#: as mutt and Dovecot check it, because some writers (Dovecot, relying on Content-Length) leave
#: ``From `` body lines unquoted, even after empty lines.
_FROM_LINE = re.compile(rb"From [^\n]*?\b\d{1,2}:\d\d(?::\d\d)?\b[^\n]*?\b\d{4}\b|"
                        rb"From [^\n]*?\b\d{4}\b[^\n]*?\b\d{1,2}:\d\d(?::\d\d)?\b")


def is_from_line(chunk: bytes, p: int) -> bool:
    """Whether the line at ``p`` of ``chunk`` looks like a ``From_`` line (see :data:`_FROM_LINE`)."""
    return _FROM_LINE.match(chunk, p, min(len(chunk), p + 1024)) is not None


def _after_blank(chunk: bytes, p: int, bol: bool, prev_blank: bool) -> bool:
    """Whether the line at ``p`` (a line start) follows an empty line (or the range's start)."""
    if p == 0:
        return bol and prev_blank
    before = chunk.rfind(b"\n", 0, p - 1)
    if before == -1 and not bol:
        return False
    return is_blank(chunk[before + 1:p])


def scan(fd: int, fmt: str, end: int, start: int = 0) -> Scan:
    """Every message of ``fd`` in ``[start, end)`` (``start`` at a line start), with wire sizes
    and fingerprints, and the SHA-256 of those octets (to see at UPDATE that nobody changed them)."""
    digest = hashlib.sha256()
    records: List[Record] = []
    current: Optional[_Building] = None
    prev_blank = True  # the start of the range counts as "after an empty line"
    chunks = Chunks(fd, start, end)
    pending = b""  # a From_ line longer than a chunk, being gathered
    for pos, bol, chunk in chunks:
        digest.update(chunk)
        at = 0  # start of the part of the chunk not yet fed
        if pending:  # the rest of a long From_ line
            nl = chunk.find(b"\n")
            pending += chunk[:LINE_LIMIT if nl == -1 else nl + 1][:LINE_LIMIT]
            if nl == -1:
                continue
            assert current is not None
            current.record.content_start = pos + nl + 1
            at, pending = nl + 1, b""
        for match in _SEPARATOR.finditer(chunk, at):
            p = match.start()
            if not _after_blank(chunk, p, bol, prev_blank) or not is_from_line(chunk, p):
                continue
            if current is not None:
                _feed(current, chunk[at:p], pos + at, bol or at > 0, fmt)
                records.append(_finish(current, pos + p, fd, fmt))
            nl = chunk.find(b"\n", p)
            line = chunk[p:nl + 1] if nl != -1 else chunk[p:]
            current = _Building(Record(pos + p, line.rstrip(b"\r\n")[:LINE_LIMIT]))
            if nl == -1:
                pending = line
                at = len(chunk)
                break
            current.record.content_start = pos + nl + 1
            at = nl + 1
        if current is not None and at < len(chunk) and not pending:
            _feed(current, chunk[at:], pos + at, bol or at > 0, fmt)
        if chunk.endswith(b"\n"):
            prev_blank = bool(_last_line_blank(chunk, bol))
    if current is not None:
        records.append(_finish(current, chunks.pos, fd, fmt))
    return Scan(records, chunks.pos, digest.digest())


def _feed(b: _Building, segment: bytes, offset: int, bol: bool, fmt: str) -> None:
    """Account for a line-aligned piece of the current message's content."""
    if not segment:
        return
    b.raw_len += len(segment)
    b.quoted += _count_quoted(segment, fmt, bol)
    b.lf_count += segment.count(b"\n")
    crs = segment.count(b"\r")
    if crs:
        crlfs = segment.count(b"\r\n")
        b.crlf_count += crlfs
        b.bare_cr = b.bare_cr or crs != crlfs
    b.last_byte = segment[-1:]
    b.tail_blank = _last_line_blank(segment, bol)
    if b.in_headers:
        _headers(b, segment, offset, bol)
    if b.body_start != -1:
        b.body_hash.update(segment[max(0, b.body_start - offset):])


def _headers(b: _Building, segment: bytes, offset: int, bol: bool) -> None:
    """Gather the fingerprint's header fields, line by line, until the header ends."""
    at = 0
    if not bol:
        at = segment.find(b"\n") + 1
        if at == 0:
            return
    while at < len(segment):
        nl = segment.find(b"\n", at)
        line = segment[at:] if nl == -1 else segment[at:nl + 1]
        if is_blank(line):
            b.in_headers = False
            b.body_start = offset + at + len(line)
            return
        _header_line(b, line)
        if nl == -1:
            return
        at = nl + 1


def _header_line(b: _Building, line: bytes) -> None:
    if line[:1] in (b" ", b"\t"):  # a folded continuation of the last field
        if b.header_name in b.fields and len(b.fields[b.header_name]) < 4096:
            b.fields[b.header_name] += b" " + line.strip()
        return
    name, colon, value = line.partition(b":")
    b.header_name = name.strip().lower() if colon else b""
    if b.header_name in FINGERPRINT_FIELDS and b.header_name not in b.fields:
        b.fields[b.header_name] = value.strip()[:4096]


def _finish(b: _Building, end: int, fd: int, fmt: str) -> Record:
    record = b.record
    record.end = end
    content_end = end
    if b.tail_blank:  # the separator line (before the next From_ line, or at the end of the file)
        content_end -= len(b.tail_blank)
        b.raw_len -= len(b.tail_blank)
        b.lf_count -= 1
        if b.tail_blank == b"\r\n":
            b.crlf_count -= 1
        b.last_byte = b"\n"  # (an empty line starts after an LF, or the content is empty)
    record.content_end = content_end
    record.length = b.raw_len - b.quoted
    if record.length == 0:
        record.size = 0
    elif b.bare_cr:  # a CR that is not half of a CRLF: the wire codec's own rules, on the octets
        record.size = wire_size(MessageReader(fd, record.content_start, content_end, fmt).chunks())
    else:
        # every line end becomes CRLF: LF gains a CR, CRLF stays; a last line without one gets it
        record.size = record.length + b.lf_count - b.crlf_count + (0 if b.last_byte == b"\n" else 2)
    # The body's length, less a last LF (a delivery after a message left without one adds it):
    # mail clients add header fields (Status:, X-UID:) but leave the body alone.
    body = max(0, content_end - b.body_start) if b.body_start != -1 else 0
    if body and b.last_byte == b"\n":
        body -= 1
    record.fingerprint = fingerprint(record.from_line, b.fields, body)
    record.x_uidl = _x_uidl(b.fields.get(b"x-uidl"))
    record.body_digest = b.body_hash.digest()
    return record


def fingerprint(from_line: bytes, fields: dict, length: int) -> str:
    """What identifies a message across sessions and rewrites: its ``From_`` line, the fields
    :data:`FINGERPRINT_FIELDS` and the length of its body as stored."""
    h = hashlib.sha256(from_line + b"\0%d" % length)
    for name in FINGERPRINT_FIELDS:
        h.update(b"\0" + name + b"\0" + fields.get(name, b"\x01"))
    return h.hexdigest()[:32]


def _x_uidl(value: Optional[bytes]) -> Optional[str]:
    """An ``X-UIDL:`` value usable as a UIDL as it is (1-70 octets 0x21-0x7E), else None."""
    if value is None or not 1 <= len(value) <= 70:
        return None
    if all(0x21 <= octet <= 0x7E for octet in value):
        return value.decode("ascii")
    return None


class MessageReader:
    """The stored message in ``[start, end)`` of ``fd``, unquoted, in chunks of bounded size."""

    def __init__(self, fd: int, start: int, end: int, fmt: str) -> None:
        self._chunks = Chunks(fd, start, end)
        self._fmt = fmt

    def next_chunk(self) -> bytes:
        bol = self._chunks.bol
        chunk = self._chunks.next_chunk()
        self._chunks.bol = chunk.endswith(b"\n")
        return unquote(chunk, self._fmt, bol) if chunk else b""

    def chunks(self) -> Iterator[bytes]:
        while True:
            chunk = self.next_chunk()
            if not chunk:
                return
            yield chunk


def separator_needed(fd: int, size: int) -> bytes:
    """What an appender writes before its ``From_`` line so that the line follows an empty line
    (the last message of a file a careless writer left without one keeps its content)."""
    if size == 0:
        return b""
    last = os.pread(fd, 3, max(0, size - 3))
    if last.endswith(b"\n\n") or last.endswith(b"\n\r\n") or last == b"\n":
        return b""
    return b"\n" if last.endswith(b"\n") else b"\n\n"
