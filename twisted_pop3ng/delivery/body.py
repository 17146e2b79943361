"""An LMTP/SMTP DATA body, as it arrives, turned into the form a store keeps (sans-I/O).

Rules of this module: no I/O and no Twisted; :meth:`DataDecoder.feed` takes any chunking of the
input and gives the same output.

The body arrives as CRLF lines, dot-stuffed, ending with ``CRLF.CRLF`` (RFC 5321 §4.5.2). It is
stored with LF line endings -- the Maildir and mbox convention, what Dovecot's LMTP and ``pop3ng
fetch`` write -- and the POP3 side turns them back into CRLF. The round trip is byte-exact for every
line, also one whose content ends in a CR: that line keeps its CRLF when stored (``X\\r\\r\\n`` stays
as it is, since a reader takes one CR before LF as part of the line ending). A bare LF inside a line
(which RFC 5321 forbids) is kept, and a POP3 client then sees it as a line break.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

from twisted_pop3ng.wire import MultiLineDecoder

#: A CRLF that ends a line whose content does not itself end in CR.
_PLAIN_CRLF = re.compile(rb"(?<!\r)\r\n")


class DataDecoder:
    """Feed the octets after ``354``; get the stored form so far and, at the end, what followed.

    ``feed(data)`` returns ``(stored, leftover)``: ``leftover`` is None until the terminating
    ``.`` line was seen, then the octets after it (pipelined commands; possibly empty).
    Memory stays bounded whatever the line lengths (long lines are passed on in pieces).
    """

    def __init__(self) -> None:
        self._lines = MultiLineDecoder()
        #: Trailing CRs held back (at most two): whether the last ends a line is known only with
        #: the next octet, and whether that CRLF is converted depends on the octet before it.
        self._crs = b""
        self.done = False
        #: Octets of the message so far as RFC 1870 counts them (CRLF lines, not dot-stuffed):
        #: what ``SIZE`` declares and the size limit applies to.
        self.size = 0

    def feed(self, data: bytes) -> Tuple[bytes, Optional[bytes]]:
        if self.done:
            return b"", data
        payload, leftover = self._lines.feed(data)
        self.size += len(payload)
        if leftover is not None:
            self.done = True
        return self._to_lf(payload, final=self.done), leftover

    def _to_lf(self, data: bytes, final: bool) -> bytes:
        if self._crs:
            data, self._crs = self._crs + data, b""
        if not final and data.endswith(b"\r"):
            # (Two at most: holding back a whole run of CRs copied it again with every read,
            # quadratic in the run's length.)
            held = 2 if data.endswith(b"\r\r") else 1
            data, self._crs = data[:-held], data[-held:]
        if b"\r\r\n" in data:
            return _PLAIN_CRLF.sub(b"\n", data)
        return data.replace(b"\r\n", b"\n")


def encode_data(message: bytes) -> bytes:
    """The DATA body (dot-stuffed CRLF lines, terminator included) that sends ``message`` (LF or
    CRLF lines; a last line without one gets CRLF): for LMTP clients and tests."""
    if not message:
        return b".\r\n"
    lines = message.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    wire = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]  # stored as CRLF: that CR belongs to the line ending
        wire.append((b"." + line if line.startswith(b".") else line) + b"\r\n")
    return b"".join(wire) + b".\r\n"
