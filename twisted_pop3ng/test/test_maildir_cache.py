"""The in-process snapshot cache of the maildir index: bounded by messages, oldest out first."""

from __future__ import annotations

from twisted.trial import unittest

from twisted_pop3ng.interfaces import MessageInfo
from twisted_pop3ng.mailbox.maildir import index as mi
from twisted_pop3ng.mailbox.maildir.snapshot import Snapshot


def snapshot(messages: int) -> Snapshot:
    names = ["cur/%d.M%dP1.host" % (1700000000 + i, i) for i in range(messages)]
    return Snapshot({"cur": None, "new": None}, names,
                    [MessageInfo(name[4:], 100) for name in names])


class CacheBoundTests(unittest.TestCase):
    def setUp(self) -> None:
        mi.forget()
        self.addCleanup(mi.forget)
        self.patch(mi, "MAX_CACHED_MESSAGES", 10)

    def cached(self) -> list:
        # The running total must always be what the cached snapshots hold.
        self.assertEqual(mi._cached_messages, sum(len(s.infos) for s in mi._cache.values()))
        return list(mi._cache)

    def test_oldest_maildrops_leave_first_when_the_bound_is_passed(self) -> None:
        for name, size in (("a", 4), ("b", 4), ("c", 2)):
            mi._remember(name, snapshot(size))
        self.assertEqual(self.cached(), ["a", "b", "c"])
        mi._remember("d", snapshot(3))
        self.assertEqual(self.cached(), ["b", "c", "d"])

    def test_a_maildrop_cached_again_counts_once(self) -> None:
        for _ in range(5):
            mi._remember("a", snapshot(6))
        mi._remember("b", snapshot(4))
        self.assertEqual(self.cached(), ["a", "b"])
        mi._remember("a", snapshot(1))  # smaller now: the old count is given back
        mi._remember("c", snapshot(5))
        self.assertEqual(self.cached(), ["b", "a", "c"])

    def test_a_snapshot_above_the_bound_is_not_cached_and_drops_its_old_one(self) -> None:
        mi._remember("a", snapshot(3))
        mi._remember("b", snapshot(3))
        mi._remember("a", snapshot(11))
        self.assertEqual(self.cached(), ["b"])

    def test_forget_one_or_all(self) -> None:
        mi._remember("a", snapshot(3))
        mi._remember("b", snapshot(3))
        mi.forget("a")
        self.assertEqual(self.cached(), ["b"])
        mi.forget()
        self.assertEqual(self.cached(), [])
