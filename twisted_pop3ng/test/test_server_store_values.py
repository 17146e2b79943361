"""What the server sends of a store's values: a UIDL that breaks RFC 1939's rule is replaced."""

from __future__ import annotations

from typing import Any, List

from twisted.trial import unittest

from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.testing import SessionDriver


class InvalidUidTests(unittest.TestCase):
    """A third-party store's UIDL with a space (or too long, or not text) would break every
    client's UIDL parsing: the server sends a valid one made from it, the same every session."""

    def test_invalid_uidls_are_replaced_stably(self) -> None:
        from twisted.logger import globalLogPublisher

        from twisted_pop3ng.wire import is_valid_uid

        events: List[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        store = MemoryStore()
        store.maildrops["alice"] = [("has space", b"a\n"), ("ok-uid", b"b\n"), ("x" * 71, b"c\n")]
        seen = []
        for _ in range(2):
            driver = SessionDriver(users={"alice": "secret"}, store=store)
            driver.login("alice", "secret")
            lines = driver.command("UIDL").lines
            seen.append(lines)
            self.assertEqual(driver.send("UIDL 1"), b"+OK " + lines[0] + b"\r\n")
            driver.command("QUIT")
        self.assertEqual(seen[0], seen[1])
        uids = [line.split(b" ", 1)[1].decode() for line in seen[0]]
        self.assertEqual(uids[1], "ok-uid")
        self.assertTrue(all(is_valid_uid(uid) for uid in uids), uids)
        self.assertEqual(len(set(uids)), 3)
        warnings = [e for e in events if "UIDL RFC 1939 does not allow" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in warnings], [2, 2])
