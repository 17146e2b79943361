"""RETR/TOP of small stored files go out in one synchronous write; anything odd is streamed."""

from __future__ import annotations

import os
from typing import Any, List

from twisted.internet import defer

from twisted_pop3ng import server
from twisted_pop3ng.interfaces import MessageInfo
from twisted_pop3ng.testing import rfc1939

from .test_server import ProtocolTestCase

FILES = [b"Subject: a\n\n.dot first\nbody\n", b".x\r\nlast line without newline",
         b"big\n" + b".line\n" * 100_000]


def octets(raw: bytes) -> int:
    """The size LIST must report, from the independent RFC 1939 oracle (not the codec under test):
    every line ends in CRLF, no dot-stuffing."""
    return len(rfc1939.wire_message(raw))


class CountingFile:
    """A real file that counts its ``read`` calls: the one-pass path reads a small file once,
    streaming reads until an empty read."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.reads = 0
        self.fileno = f.fileno

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        return self.f.read(n)

    def seek(self, *args: Any) -> int:
        return self.f.seek(*args)

    def close(self) -> None:
        self.f.close()

    @property
    def closed(self) -> bool:
        return self.f.closed


class FileMailbox:
    """An IMailbox over real files; ``lie`` makes fstat report another file's size."""

    def __init__(self, paths: List[str], lie: bool = False, deferred: bool = False) -> None:
        self.paths = paths
        self.lie = lie
        self.deferred = deferred
        self.opened: List[Any] = []

    def list_messages(self) -> List[MessageInfo]:
        sizes = []
        for path in self.paths:
            with open(path, "rb") as f:
                sizes.append(octets(f.read()))
        return [MessageInfo("u%d" % i, size) for i, size in enumerate(sizes)]

    def open_message(self, index: int) -> Any:
        f = CountingFile(open(self.paths[index], "rb", buffering=0))
        if self.lie:
            other = open(self.paths[(index + 1) % len(self.paths)], "rb", buffering=0)
            f.fileno = other.fileno  # type: ignore[method-assign]
            self.opened.append(other)
        self.opened.append(f)
        return defer.succeed(f) if self.deferred else f

    def commit(self, deleted: Any) -> None:
        pass

    def close(self) -> None:
        for f in self.opened:
            f.close()


class WholeFileTests(ProtocolTestCase):
    def use(self, **kwargs: Any) -> FileMailbox:
        paths = []
        for i, data in enumerate(FILES):
            path = os.path.abspath(self.mktemp())
            with open(path, "wb") as f:
                f.write(data)
            paths.append(path)
        box = FileMailbox(paths, **kwargs)
        self.proto.mailbox = box
        self.proto.messages = box.list_messages()
        self.proto.state = server.TRANSACTION
        self.addCleanup(box.close)
        return box

    def expected(self, index: int, lines: Any = None) -> bytes:
        """RETR's body (``lines`` None) or TOP's, dot-stuffed and terminated, from the oracle."""
        raw = FILES[index]
        kept = rfc1939.wire_lines(raw) if lines is None else rfc1939.top_lines(raw, lines)
        return rfc1939.stuffed(kept)

    def check_all(self) -> bytes:
        """Pipelined RETR/TOP of all files: the whole reply, checked; returns what was written
        before the reactor turned (what was sent synchronously)."""
        reply = self.talk(b"RETR 1\r\nRETR 2\r\nTOP 1 1\r\nRETR 3\r\nNOOP\r\n")
        at_once = reply
        for _ in range(100):
            if reply.endswith(b"+OK\r\n"):
                break
            self.transport.clear()
            self.clock.advance(0)
            reply += self.transport.value()
        self.assertEqual(reply, self.small_replies()
                         + b"+OK %d octets\r\n" % octets(FILES[2]) + self.expected(2) + b"+OK\r\n")
        return at_once

    def small_replies(self) -> bytes:
        sizes = [octets(data) for data in FILES]
        return (b"+OK %d octets\r\n" % sizes[0] + self.expected(0)
                + b"+OK %d octets\r\n" % sizes[1] + self.expected(1)
                + b"+OK Message follows\r\n" + self.expected(0, 1))

    def test_small_files_in_one_write_large_streamed(self) -> None:
        box = self.use()
        at_once = self.check_all()
        self.assertTrue(at_once.startswith(self.small_replies()), at_once[:200])
        # RETR 1, RETR 2 and TOP 1 1 each read their small file in one read (streaming reads on
        # until an empty read); the large file took several.
        self.assertEqual([f.reads for f in box.opened[:3]], [1, 1, 1])
        self.assertGreater(box.opened[3].reads, 2)
        self.assertTrue(all(f.closed for f in self.proto.mailbox.opened))

    def streamed_reads(self, box: FileMailbox) -> List[int]:
        """The ``read`` calls on each message file opened (RETR 1, RETR 2, TOP 1 1, RETR 3)."""
        return [f.reads for f in box.opened if isinstance(f, CountingFile)]

    def test_size_mismatch_falls_back_to_streaming(self) -> None:
        box = self.use(lie=True)
        self.check_all()
        # fstat told another file's size: RETR 1 read once (one octet too few: not that size),
        # went back to the start and streamed (until an empty read); RETR 2 (told the big file's
        # size) streamed at once.
        self.assertEqual(self.streamed_reads(box)[:2], [3, 2])

    def test_asynchronous_open_is_streamed(self) -> None:
        box = self.use(deferred=True)
        self.check_all()
        self.assertEqual(self.streamed_reads(box)[:2], [2, 2])  # each read until an empty read

    def test_read_error_is_an_err_reply_and_the_file_is_closed(self) -> None:
        box = self.use()

        class Broken:
            def __init__(self, f: Any) -> None:
                self.f = f
                self.closed = False

            def fileno(self) -> int:
                return self.f.fileno()

            def read(self, n: int) -> bytes:
                raise OSError(5, "Input/output error")

            def close(self) -> None:
                self.closed = True
                self.f.close()

        broken: List[Broken] = []
        real_open = box.open_message
        box.open_message = lambda i: broken.append(Broken(real_open(i))) or broken[-1]  # type: ignore
        reply = self.talk(b"RETR 1\r\nNOOP\r\n")
        self.assertTrue(reply.startswith(b"-ERR [SYS/"), reply)
        self.assertTrue(reply.endswith(b"+OK\r\n"), reply)
        self.assertTrue(broken[0].closed)
        self.flushLoggedErrors(OSError)  # an unexpected storage error is logged with its traceback
