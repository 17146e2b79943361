"""The persistent maildir index: trusted while the directories are unchanged, rebuilt otherwise."""

from __future__ import annotations

import os
import time

from twisted.trial import unittest

from twisted_pop3ng import wire
from twisted_pop3ng.mailbox import maildir as md
from twisted_pop3ng.mailbox import maildir_index as mi


class IndexTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.store = md.MaildirStore(os.path.join(self.root, "{user}", "Maildir"))
        self.path = self.store.path_for("alice")
        mi.forget()
        self.addCleanup(mi.forget)

    def deliver(self, data: bytes, name: str, sub: str = "new") -> str:
        md.deliver(self.path, data, name)
        if sub == "cur":
            os.rename(os.path.join(self.path, "new", name), os.path.join(self.path, "cur", name + ":2,S"))
        return name

    def age_directories(self, seconds: float = 60) -> None:
        """Make new/ and cur/ look settled (last changed ``seconds`` ago)."""
        past = time.time() - seconds
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.path, sub), (past, past))

    def session(self) -> list:
        box = self.store.open_mailbox("alice")
        try:
            return box.list_messages()
        finally:
            box.close()

    def index_text(self) -> str:
        with open(os.path.join(self.path, mi.INDEX_NAME), encoding="utf-8") as f:
            return f.read()

    def test_settled_index_is_the_snapshot(self) -> None:
        self.deliver(b"one\n", "1700000001.a.host")
        self.deliver(b"two\n.x\n", "1700000002.b.host", "cur")
        self.age_directories()
        first = self.session()
        self.assertIn("dirs ", self.index_text())
        self.assertNotIn("dirs -", self.index_text())
        # A new process: nothing cached, and listing or reading must not be needed at all.
        mi.forget()
        self.patch(mi, "scan", lambda *a: self.fail("the directories were listed again"))
        self.assertEqual(self.session(), first)
        self.assertEqual([m.size for m in first], [5, 9])

    def test_recent_change_is_not_trusted(self) -> None:
        self.deliver(b"one\n", "1700000001.a.host")
        self.session()
        self.assertIn("dirs -", self.index_text())

    def test_delivery_and_flag_change_are_seen_sizes_reused(self) -> None:
        self.deliver(b"one\n", "1700000001.a.host")
        self.age_directories()
        self.session()
        measured = []
        real = mi.measure
        self.patch(mi, "measure", lambda fd, name: measured.append(name) or real(fd, name))
        self.deliver(b"three\n", "1700000003.c.host")
        os.rename(os.path.join(self.path, "new", "1700000001.a.host"),
                  os.path.join(self.path, "cur", "1700000001.a.host:2,S"))
        box = self.store.open_mailbox("alice")
        self.addCleanup(box.close)
        self.assertEqual([m.uid for m in box.list_messages()], ["1700000001.a.host", "1700000003.c.host"])
        self.assertEqual(measured, ["1700000003.c.host"])
        with box.open_message(0) as f:
            self.assertEqual(f.read(), b"one\n")

    def test_snapshot_copy_is_per_session(self) -> None:
        self.deliver(b"one\n", "1700000001.a.host")
        self.age_directories()
        self.session()
        box = self.store.open_mailbox("alice")
        box.list_messages().clear()
        box.files.clear()
        box.close()
        self.assertEqual(len(self.session()), 1)

    def test_corrupt_or_hostile_index_is_rebuilt(self) -> None:
        self.deliver(b"secret\n", "1700000001.a.host")
        self.age_directories()
        self.session()
        header, dirs, _ = self.index_text().split("\n", 2)
        for rows in ["garbage\x00",
                     "7 1700000001.a.host cur/../../../../etc/passwd\n",
                     "7 1700000001.a.host /etc/passwd\n",
                     "7 bad\x7fuid new/1700000001.a.host\n",
                     "-5 1700000001.a.host new/1700000001.a.host\n",
                     "7 1700000001.a.host\n",
                     "x 1700000001.a.host new/1700000001.a.host\n"]:
            mi.forget()
            with open(os.path.join(self.path, mi.INDEX_NAME), "w", encoding="utf-8") as f:
                f.write("%s\n%s\n%s" % (header, dirs, rows))
            box = self.store.open_mailbox("alice")
            self.assertEqual(box.list_messages(), [md.MessageInfo("1700000001.a.host", 8)], rows)
            with box.open_message(0) as f:
                self.assertEqual(f.read(), b"secret\n")
            box.close()
            self.assertIn("8 1700000001.a.host new/1700000001.a.host\n", self.index_text())

    def test_in_process_cache_notices_a_damaged_file(self) -> None:
        self.deliver(b"one\n", "1700000001.a.host")
        self.age_directories()
        self.session()
        os.unlink(os.path.join(self.path, mi.INDEX_NAME))
        self.assertEqual(len(self.session()), 1)
        self.assertTrue(os.path.exists(os.path.join(self.path, mi.INDEX_NAME)))

    def test_odd_file_names_round_trip(self) -> None:
        name = "1700000001.a b%20c%.host"
        self.deliver(b"odd\n", name)
        self.age_directories()
        first = self.session()
        mi.forget()
        box = self.store.open_mailbox("alice")
        self.addCleanup(box.close)
        self.assertEqual(box.list_messages(), first)
        self.assertTrue(wire.is_valid_uid(first[0].uid))
        with box.open_message(0) as f:
            self.assertEqual(f.read(), b"odd\n")

    def test_measure_matches_the_encoder(self) -> None:
        samples = [b"", b"a", b"a\n", b"a\r\nb", b"x\r", b"\r\n\r\n", b"a\nb\r\nc\rd\n",
                   b".dot\n" * 5000, b"long" * 40000 + b"\n"]
        for n, data in enumerate(samples):
            name = "17000000%02d.s.host" % n
            self.deliver(data, name)
            fd = os.open(os.path.join(self.path, "new"), os.O_RDONLY)
            try:
                self.assertEqual(mi.measure(fd, name), wire.wire_size([data]), data[:20])
            finally:
                os.close(fd)

    def test_lock_file_holds_pid_and_is_not_rewritten(self) -> None:
        self.session()
        lock_path = os.path.join(self.path, md.LOCK_NAME)
        before = os.stat(lock_path).st_mtime_ns
        with open(lock_path) as f:
            self.assertTrue(f.read().startswith("%d@" % os.getpid()))
        time.sleep(0.01)
        self.session()
        self.assertEqual(os.stat(lock_path).st_mtime_ns, before)


class OrderTests(unittest.TestCase):
    def test_fast_string_order_only_when_it_is_delivery_order(self) -> None:
        import random

        names = ["999999999.M1P1.host", "1700000000.M5P1.host", "1700000000.M999P1.host",
                 "1700000000.M1000P1.host", "1700000000.M000001P1.x", "1700000001.M0P1.host",
                 "zzz-not-standard"]
        padded = ["17000000%02d.M%06dP1.host" % (i % 7, (i * 7919) % 10 ** 6) for i in range(300)]
        rng = random.Random(5)
        for sample in (names, padded, padded + ["1700000000.M5P1.host"]):
            for _ in range(10):
                shuffled = list(sample)
                rng.shuffle(shuffled)
                self.assertEqual(mi.delivery_order(shuffled), sorted(sample, key=mi.order_key))
