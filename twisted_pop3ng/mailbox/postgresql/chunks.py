"""Messages in chunks: counting the wire size while a delivery streams in, reading one back out.

A stored message is rows of ``message_chunks`` (:data:`CHUNK_OCTETS` each, the last one shorter).
:class:`ChunkReader` is the binary file the server streams from: it asks worker threads for the
next few chunks ahead of the reader, so the reactor thread reading it finds them already there
and never runs a query itself; at most ``1 + AHEAD`` chunks of a message are in memory.

Rules of this module: no SQL (the store passes the fetch function); ``read`` is called from the
reactor thread, the fetches run in worker threads, and a condition variable is all they share.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional, Union

from twisted_pop3ng.errors import TemporaryFailure
from twisted_pop3ng.wire import MessageEncoder

#: Octets per stored chunk: the server's own read size (server.io.CHUNK_SIZE), so one chunk is one
#: read and one write; large enough that a 50 MB message is only 200 rows, small enough to hold a few.
CHUNK_OCTETS = 256 * 1024
#: Chunks fetched ahead of the reader.
AHEAD = 3
#: How long ``read`` waits for a fetched chunk before giving up (the session then ends, commits nothing).
FETCH_TIMEOUT = 60.0


def read_full(source: Any, size: int) -> bytes:
    """Up to ``size`` octets from ``source``, fewer only at its end (``read`` may return short)."""
    first = source.read(size)
    if len(first) == size or not first:
        return bytes(first)
    parts = [first]
    got = len(first)
    while got < size:
        more = source.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class WireSizeCounter:
    """The wire size of a message fed in pieces (the same as ``wire.wire_size_of`` of the whole)."""

    def __init__(self) -> None:
        self._encoder = MessageEncoder(stuff=False)
        self.octets = 0
        self.size = 0

    def feed(self, data: bytes) -> None:
        self.octets += len(data)
        self.size += len(self._encoder.feed(data))

    def finish(self) -> int:
        self.size += len(self._encoder.finish())
        return self.size


class ChunkReader:
    """``read(n)`` over a stored message whose chunks worker threads fetch ahead of the reader.

    ``fetch(seq)`` (blocking, run through ``submit``) returns chunk ``seq``; ``check()`` raises
    when the session may not go on (its maildrop lock was lost). ``first`` is chunk 0, fetched
    with the message's row.
    """

    def __init__(self, first: bytes, chunks: int, fetch: Callable[[int], bytes],
                 submit: Callable[..., None], check: Callable[[], None] = lambda: None) -> None:
        self._current = first
        self._offset = 0
        self._next = 1        # the chunk to read after the current one
        self._requested = 1   # the next chunk to ask a worker for
        self._count = chunks
        self._fetch = fetch
        self._submit = submit
        self._check = check
        self._ready: Dict[int, Union[bytes, BaseException]] = {}
        self._cond = threading.Condition()
        self.closed = False
        self._ask_ahead()

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` octets (all of the current chunk when ``size`` < 0); b"" only at the end."""
        if self.closed:
            raise ValueError("read of a closed message")
        while self._offset >= len(self._current):
            if self._next >= self._count:
                return b""
            self._check()
            self._current = self._take(self._next)
            self._offset = 0
            self._next += 1
            self._ask_ahead()
        start = self._offset
        end = len(self._current) if size < 0 else min(len(self._current), start + size)
        self._offset = end
        if start == 0 and end == len(self._current):
            return self._current  # the whole chunk: no copy
        return self._current[start:end]

    def close(self) -> None:
        self.closed = True
        with self._cond:
            self._ready.clear()
        self._current = b""

    def _ask_ahead(self) -> None:
        while self._requested < self._count and self._requested <= self._next + AHEAD - 1:
            self._submit(self._fetch_one, self._requested)
            self._requested += 1

    def _fetch_one(self, seq: int) -> None:
        if self.closed:
            return
        result: Union[bytes, BaseException]
        try:
            result = self._fetch(seq)
        except BaseException as error:
            result = error
        with self._cond:
            if not self.closed:
                self._ready[seq] = result
                self._cond.notify_all()

    def _take(self, seq: int) -> bytes:
        with self._cond:
            found: Optional[Union[bytes, BaseException]] = self._ready.pop(seq, None)
            if found is None:
                self._cond.wait_for(lambda: seq in self._ready, FETCH_TIMEOUT)
                found = self._ready.pop(seq, None)
        if found is None:
            raise TemporaryFailure("Reading the message from the database timed out")
        if isinstance(found, BaseException):
            raise found
        return found
