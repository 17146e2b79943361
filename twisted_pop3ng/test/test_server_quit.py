"""QUIT with a backend whose unlock takes time (a database releasing an advisory lock)."""

from __future__ import annotations

from typing import Any, List

from twisted.internet import defer
from twisted.trial import unittest

from twisted_pop3ng.mailbox.memory import MemoryMailbox, MemoryStore
from twisted_pop3ng.testing import SessionDriver


class DeferringStore(MemoryStore):
    """A memory store whose mailboxes' ``method`` (``close``: a database releasing a lock;
    ``commit``: a large mbox rewrite) returns a Deferred the test fires, kept in ``pending``."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method
        self.pending: List[defer.Deferred] = []

    def open_mailbox(self, user: str) -> MemoryMailbox:
        mailbox = super().open_mailbox(user)
        real = getattr(mailbox, self.method)

        def deferred(*args: Any) -> defer.Deferred:
            done: defer.Deferred = defer.Deferred()
            done.addCallback(lambda _: real(*args))
            self.pending.append(done)
            return done

        setattr(mailbox, self.method, deferred)
        return mailbox


class SlowCommitTests(unittest.TestCase):
    def test_a_commit_longer_than_the_idle_timeout_still_gets_its_ok(self) -> None:
        """The inactivity timeout used to fire during a long UPDATE: the client was told
        "Disconnected for inactivity." while its deletions went on (a fetcher downloads again)."""
        from twisted.logger import globalLogPublisher

        from twisted_pop3ng.server.verbs import SLOW_COMMIT

        events: List[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        store = DeferringStore("commit")
        store.deliver("alice", b"Subject: x\n\nhello\n")
        driver = SessionDriver(users={"alice": "secret"}, store=store)
        driver.login("alice", "secret")
        self.assertEqual(driver.send_raw(b"DELE 1\r\nQUIT\r\n"), b"+OK Marked to be deleted.\r\n")
        driver.clock.advance(driver.factory.config.idle_timeout + SLOW_COMMIT)
        self.assertTrue(driver.connected)
        self.assertTrue([e for e in events if "still running" in e.get("log_format", "")], events)
        store.pending[0].callback(None)
        self.assertEqual(driver.send_raw(b""), b"+OK Logging out, messages deleted.\r\n")
        self.assertEqual(store.maildrops["alice"], [])


class QuitTests(unittest.TestCase):
    def session(self) -> Any:
        self.store = DeferringStore("close")
        self.store.deliver("alice", b"Subject: x\n\nhello\n")
        driver = SessionDriver(users={"alice": "secret"}, store=self.store)
        driver.login("alice", "secret")
        return driver

    def test_the_reply_waits_for_the_unlock(self) -> None:
        driver = self.session()
        self.assertEqual(driver.send_raw(b"QUIT\r\nNOOP\r\n"), b"")  # not before the unlock
        self.assertTrue(driver.connected)
        self.store.pending[0].callback(None)
        # QUIT's reply, and nothing for the command pipelined after it (RFC 1939: UPDATE ends it).
        self.assertEqual(driver.send_raw(b""), b"+OK Logging out.\r\n")
        self.assertFalse(driver.connected)

    def test_with_deletions(self) -> None:
        driver = self.session()
        self.assertEqual(driver.send_raw(b"DELE 1\r\n"), b"+OK Marked to be deleted.\r\n")
        self.assertEqual(driver.send_raw(b"QUIT\r\nNOOP\r\n"), b"")
        self.assertEqual(self.store.maildrops["alice"], [])  # committed; the unlock is pending
        self.store.pending[0].callback(None)
        self.assertEqual(driver.send_raw(b""), b"+OK Logging out, messages deleted.\r\n")
        self.assertFalse(driver.connected)

