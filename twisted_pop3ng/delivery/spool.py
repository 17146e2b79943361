"""Where a DATA body waits until every recipient has it, and the source each store reads.

The body is spooled once and read once per recipient, each time behind that recipient's trace
headers. Small bodies stay in memory; from :data:`SPOOL_MEMORY` octets on it is an unlinked
temporary file (a 50 MB message is never held whole).
"""

from __future__ import annotations

import tempfile
from typing import IO, Optional

#: Bodies up to this size are spooled in memory (most mail: one copy, no file at all).
SPOOL_MEMORY = 1 << 20


def new_spool(directory: Optional[str] = None, memory: int = SPOOL_MEMORY) -> IO[bytes]:
    """An empty spool: in memory up to ``memory`` octets, then a file in ``directory``
    (default: the system's temporary directory), removed when closed."""
    return tempfile.SpooledTemporaryFile(max_size=memory, mode="w+b", dir=directory)


class PrefixedSource:
    """``prefix`` and then ``body`` from its start, read with ``read(n)``: the ``source`` of
    :meth:`~twisted_pop3ng.interfaces.IMailboxDelivery.deliver`. ``body`` is rewound when this
    is made, so one spool serves each recipient in turn (never two at once)."""

    def __init__(self, prefix: bytes, body: IO[bytes]) -> None:
        self._prefix = prefix
        self._body = body
        body.seek(0)

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size is None or size < 0:
                data, self._prefix = self._prefix + self._body.read(), b""
                return data
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._body.read(size)
