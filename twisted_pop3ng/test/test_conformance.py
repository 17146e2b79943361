"""The backend conformance suite run on the built-in memory and maildir stores, and its oracle."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from twisted_pop3ng.mailbox import store_from_spec
from twisted_pop3ng.mailbox.maildir.names import base_name, uid_for
from twisted_pop3ng.testing.conformance import (CORPUS, CrossProcessConformanceMixin,
                                                ExternalRemovalConformanceMixin, GeneratedMessage, LockHolder,
                                                StoreConformanceMixin, WireFormStream, wire_form)


class MemoryStoreConformanceTests(StoreConformanceMixin, ExternalRemovalConformanceMixin, unittest.TestCase):
    """``memory:``: one process's store, so no cross-process part."""

    stores_in_process_memory = True

    def make_store(self) -> Any:
        return store_from_spec("memory:")

    def remove_behind_back(self, store: Any, user: str, uid: str) -> None:
        drop = store.maildrops[user]
        drop[:] = [(u, data) for u, data in drop if u != uid]


# -- the example of docs/backends.rst ---------------------------------------------------------------

class MaildirStoreConformanceTests(StoreConformanceMixin, CrossProcessConformanceMixin,
                                   ExternalRemovalConformanceMixin, unittest.TestCase):
    """``maildir:``, opened by another process through ``spec``; a mail client may remove a file
    while a session holds the maildrop."""

    def make_store(self) -> Any:
        self.spec = "maildir:" + os.path.abspath(self.mktemp()) + "/{user}/Maildir"
        return store_from_spec(self.spec)

    def remove_behind_back(self, store: Any, user: str, uid: str) -> None:
        maildir = store.path_for(user)
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(maildir, sub)):
                if uid_for(base_name(name)) == uid:
                    os.unlink(os.path.join(maildir, sub, name))


# -- end of the example -----------------------------------------------------------------------------


class OracleTests(unittest.TestCase):
    """The suite's own RFC 1939 oracle: the streamed form equals the whole one."""

    def test_stream_equals_whole(self) -> None:
        for name, data in CORPUS.items():
            for size in (1, 2, 3, 7, len(data) or 1):
                stream = WireFormStream()
                for start in range(0, len(data), size):
                    stream.feed(data[start:start + size])
                whole = wire_form(data)
                self.assertEqual(stream.finish(), (hashlib.sha256(whole).hexdigest(), len(whole)), (name, size))

    def test_wire_form_examples(self) -> None:
        self.assertEqual(wire_form(b"a\nb\r\nc"), b"a\r\nb\r\nc\r\n")
        self.assertEqual(wire_form(b"a\rb\n"), b"a\rb\r\n")
        self.assertEqual(wire_form(b""), b"")
        self.assertEqual(wire_form(b"\n"), b"\r\n")

    def test_generated_message(self) -> None:
        """Exactly ``size`` octets over several blocks, read in odd chunks, dot lines included; its
        ``expected()`` is the oracle's form of those octets."""
        size = (5 << 20) // 2 + 3
        message = GeneratedMessage(size)
        chunks = []
        while True:
            chunk = message.read(100_003)
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        self.assertEqual(len(data), size)
        self.assertIn(b"\r\n.", data)
        self.assertIn(b"\r\nBlock 000002\r\n", data)
        self.assertEqual(message.expected(), (hashlib.sha256(wire_form(data)).hexdigest(), len(wire_form(data))))


class LockHolderTests(unittest.TestCase):
    """The helper process's answers when it cannot hold the maildrop: an author with a wrong
    ``spec`` reads why instead of a hanging test."""

    def test_unusable_spec(self) -> Any:
        holder = LockHolder("nosuchscheme:anything", "alice")
        self.addCleanup(holder.cleanup)

        def check(line: str) -> Any:
            self.assertTrue(line.startswith("error ") and "nosuchscheme" in line, line)
            return deferToThread(holder.process.wait).addCallback(self.assertEqual, 70)
        return holder.first_line().addCallback(check)

    def test_usage(self) -> None:
        result = subprocess.run([sys.executable, "-m", "twisted_pop3ng.testing.lockholder", "memory:"],
                                capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 64)
        self.assertIn(b"usage:", result.stderr)
