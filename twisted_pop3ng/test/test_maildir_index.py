"""The persistent maildir index: trusted while the directories are unchanged, rebuilt otherwise."""

from __future__ import annotations

import os
import textwrap
import threading
import time
from typing import Any

from twisted.trial import unittest

from twisted_pop3ng import wire
from twisted_pop3ng.mailbox.maildir import store as md
from twisted_pop3ng.mailbox.maildir import index as mi
from twisted_pop3ng.mailbox.maildir import listing as rows
from twisted_pop3ng.mailbox.maildir import measure as mm
from twisted_pop3ng.test.maildir_fixture import alice_maildir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class IndexTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root, self.store, self.path = alice_maildir(self, fresh_cache=True)

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

    def test_per_directory_stamps_are_read(self) -> None:
        # "dirs CUR -": cur/ is trusted, new/ listed again; "dirs -" (either version): both.
        self.deliver(b"one\n", "1700000001.a.host", "cur")
        self.deliver(b"two\n", "1700000002.b.host")
        self.age_directories()
        first = self.session()
        header, dirs, body = self.index_text().split("\n", 2)
        cur = os.stat(os.path.join(self.path, "cur"))
        self.assertTrue(dirs.startswith("dirs %d:%d " % (cur.st_ino, cur.st_mtime_ns)), dirs)
        listing = rows.listing
        for line, expected in (("dirs %d:%d -" % (cur.st_ino, cur.st_mtime_ns), ["new"]),
                               ("dirs -", ["new", "cur"]), (dirs, [])):
            with open(os.path.join(self.path, mi.INDEX_NAME), "w", encoding="utf-8") as f:
                f.write("%s\n%s\n%s" % (header, line, body))
            mi.forget()
            listed: list = []
            self.patch(rows, "listing", lambda path, sub: listed.append(sub) or listing(path, sub))
            self.assertEqual(self.session(), first)
            self.assertEqual(listed, expected, line)

    def test_delivery_and_flag_change_are_seen_sizes_reused(self) -> None:
        self.deliver(b"one\n", "1700000001.a.host")
        self.age_directories()
        self.session()
        measured = []
        real = mi.Measurement

        def recording(path, names, boundary):  # type: ignore[no-untyped-def]
            measured.extend(names)
            return real(path, names, boundary)

        self.patch(mi, "Measurement", recording)
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
        messages = box.list_messages()
        if isinstance(messages, list):
            messages.clear()
        else:  # a MessageTable: shared, so read-only
            self.assertFalse(hasattr(messages, "__setitem__") or hasattr(messages, "clear"))
        box.files.clear()
        box.close()
        self.assertEqual(len(self.session()), 1)

    def test_corrupt_or_hostile_index_is_rebuilt(self) -> None:
        self.deliver(b"secret\n", "1700000001.a.host")
        self.age_directories()
        self.session()
        header, dirs, _ = self.index_text().split("\n", 2)
        for text in ["garbage\x00",
                     "7 1700000001.a.host cur/../../../../etc/passwd\n",
                     "7 1700000001.a.host /etc/passwd\n",
                     "7 bad\x7fuid new/1700000001.a.host\n",
                     "-5 1700000001.a.host new/1700000001.a.host\n",
                     "7 1700000001.a.host\n",
                     "x 1700000001.a.host new/1700000001.a.host\n",
                     "%d 1700000001.a.host new/1700000001.a.host\n" % (1 << 64)]:
            mi.forget()
            with open(os.path.join(self.path, mi.INDEX_NAME), "w", encoding="utf-8") as f:
                f.write("%s\n%s\n%s" % (header, dirs, text))
            box = self.store.open_mailbox("alice")
            self.assertEqual(box.list_messages(), [md.MessageInfo("1700000001.a.host", 8)], text)
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
        with open(lock_path) as f:
            self.assertTrue(f.read().startswith("%d@" % os.getpid()))
        # A time a write would replace on any filesystem, however coarse its timestamps.
        os.utime(lock_path, ns=(1_000_000_000 * 10**9, 1_000_000_000 * 10**9))
        before = os.stat(lock_path)
        self.session()
        after = os.stat(lock_path)
        self.assertEqual((after.st_ino, after.st_mtime_ns), (before.st_ino, 1_000_000_000 * 10**9))


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

    def test_positions_follow_the_same_order_one_per_name(self) -> None:
        import random

        padded = ["17000000%02d.M%06dP1.host" % (i % 7, (i * 7919) % 10 ** 6) for i in range(300)]
        rng = random.Random(7)
        for sample in (padded, padded + ["1700000000.M5P1.host", "zzz", "999999999.M1P1.h"]):
            names = sample + rng.sample(sample, 20)  # some listed twice
            rng.shuffle(names)
            positions = rows.delivery_positions(names)
            self.assertEqual([names[i] for i in positions], mi.delivery_order(sorted(set(names))))
            last = {name: i for i, name in enumerate(names)}
            self.assertEqual(sorted(positions), sorted(last.values()))


class RowTests(unittest.TestCase):
    """The list-at-a-time helpers of maildir_listing give what the plain per-name code gives."""

    def test_uids_as_uid_for_gives_them(self) -> None:
        valid = ["1700000000.M%06dP1.host" % i for i in range(50)]
        for bases in (valid, valid + ["with space"], valid + ["x" * 71], valid + ["a\nb"], []):
            self.assertEqual(rows.uids_of(bases, md.uid_for), [md.uid_for(b) for b in bases])
        other = rows.uids_of(valid, lambda base: "u" + base[:8])
        self.assertEqual(other, ["u" + b[:8] for b in valid])

    ODD = ["1700000000.M000001P1.host:2,S", "1700000000.M000001P12.host:2,S",  # base prefix of base
           "1700000000.M000001P1.host.x:2,",
           "1700000001.M5P1.host:2,S", "1700000001.M0000007P1.h:2,S",  # not padded, 7 digits
           "17000000001.M000001P1.h", "999999999.M000001P1.h:2,RS",  # 11 and 9 digits
           "zzz-not-standard", "with space:2,S", "x" * 80 + ":2,S", ":2,S", "a:b:c",
           "1700000002.M000002P1.h:2,S", "1700000002.M000002P1.h:2,RS",  # one base, two flags
           "1700000003.M00000xP1.h", "1700000004.M000004\u00e9.h:2,S", "1700000005.M000005P1.h:"]

    def plain_rows(self, new, cur, uid_for):  # type: ignore[no-untyped-def]
        """The rows as the per-name rules define them."""
        names = new + cur
        last = {name.partition(":")[0]: i for i, name in enumerate(names)}
        bases = sorted(last, key=mi.order_key)
        positions = [last[b] for b in bases]
        files = [("new/" if i < len(new) else "cur/") + names[i] for i in positions]
        return positions, bases, [uid_for(b) for b in bases], files

    def test_message_rows_are_the_plain_rows(self) -> None:
        import random

        rng = random.Random(11)
        padded = ["17000000%02d.M%06dP%d.host" % (i % 37, (i * 7919) % 10 ** 6, i % 3)
                  for i in range(400)]
        flags = [":2,S", ":2,", ":2,RS", "", ":2,FS"]
        samples = [[p + flags[i % len(flags)] for i, p in enumerate(padded)]]
        samples.append(samples[0] + [padded[5] + ":2,T"])  # a base listed twice
        samples.append([p + ":2,%s" % "".join(rng.sample("DFPRSTabc", 4)) for p in padded])  # many flags
        samples.append([p + ":2,S" for p in padded] + self.ODD)
        for odd in self.ODD:
            samples.append([p + ":2,S" for p in padded[:50]] + [odd])
        samples.append([p + ":2,S" for p in padded[:50]] + ["1700000009.M000001P1\nx:2,S"])  # LF
        samples.append([])
        samples.append(["1700000000.M000001P1.h:2,S"])
        for sample in samples:
            for _ in range(3):
                names = list(sample)
                rng.shuffle(names)
                cut = rng.choice([0, len(names), rng.randrange(len(names) + 1)])
                new, cur = names[:cut], names[cut:]
                for uid_for in (md.uid_for, lambda base: "u" + base[:20]):
                    got = rows.message_rows(new, cur, uid_for)
                    self.assertEqual(tuple(got), self.plain_rows(new, cur, uid_for), (sample[-1:], cut))

    def test_padded_octets_is_the_regular_expression(self) -> None:
        lines = ["1700000000.M000001P1.h", "1700000000.M000001", "1700000000.M0000011",
                 "1700000000.M00000", "170000000.M000001x", "17000000000.M000001", "1700000000.m000001",
                 "1700000000xM000001", "1700000000.M000001:2,S", "x1700000000.M000001", ""]
        for first in lines:
            for second in lines:
                for text in (first, first + "\n" + second, "1700000000.M000009P\n" + first + "\n" + second):
                    count = text.count("\n") + 1
                    self.assertEqual(rows.padded(text, count), bool(rows._PADDED.fullmatch(text)), text)

    def test_strip_infos_cuts_at_the_first_colon(self) -> None:
        names = ["a:2,S", "b", "c:2,S", "d::x", "e:x:2,S", ":2,S", "f:", "g:2,RS", "h:2,S:2,S"]
        for n in range(1, len(names) + 1):
            text = "\n".join(names[:n])
            self.assertEqual(rows.strip_infos(text), "\n".join(x.partition(":")[0] for x in names[:n]))
        for n in range(1, len(names) + 1):
            for sample in (names[:n], [x.partition(":")[0] + ":2,S" for x in names[:n]],
                           [x.partition(":")[0] for x in names[:n]], names[:n] + ["z:2,S"]):
                self.assertEqual(rows.split_bases("\n".join(sample), len(sample)),
                                 [x.partition(":")[0] for x in sample], sample)
        many = "\n".join("m%d:%d" % (i, i) for i in range(rows.MAX_INFOS + 1))
        self.assertIsNone(rows.strip_infos(many))
        self.assertIsNone(rows.split_bases(many, rows.MAX_INFOS + 1))
        self.assertEqual(rows.base_names(many.split("\n"), many), ["m%d" % i for i in range(rows.MAX_INFOS + 1)])

    def test_permuted(self) -> None:
        from array import array

        for values in ([5, 6, 7], array("q", [5, 6, 7])):
            for positions in ([], [1], [2, 0], [2, 0, 1]):
                self.assertEqual(rows.permuted(values, positions), [values[i] for i in positions])

    def test_infos_are_plain_message_infos(self) -> None:
        import dataclasses

        uids, sizes = ["a", "b", "c"], [1, 0, 70000]
        setters = rows._SLOT_SETTERS
        for fast, slots in ((True, setters), (True, None), (False, None)):
            self.patch(rows, "FAST_INFOS", fast)
            self.patch(rows, "_SLOT_SETTERS", slots)
            infos = rows.sized_infos(rows.unsized_infos(list(uids)), sizes)
            expected = [md.MessageInfo(u, s) for u, s in zip(uids, sizes)]
            self.assertEqual(infos, expected)
            self.assertEqual([hash(i) for i in infos], [hash(i) for i in expected])
            self.assertEqual([repr(i) for i in infos], [repr(i) for i in expected])
            self.assertEqual([type(i) for i in infos], [md.MessageInfo] * 3)
            self.assertRaises(dataclasses.FrozenInstanceError, setattr, infos[0], "size", 5)
        self.assertTrue(rows._fast_infos_possible())

    def test_infos_made_first_in_a_process_stay_compact(self) -> None:
        # In a fresh interpreter, where no MessageInfo exists yet: objects made by the fast path
        # must take no more memory than constructed ones (not a dictionary each).
        import subprocess
        import sys

        code = textwrap.dedent("""
            import sys, tracemalloc
            from twisted_pop3ng.interfaces import MessageInfo
            from twisted_pop3ng.mailbox.maildir import listing as rows
            uids = ["1700000000.M%06dP1.host" % i for i in range(20000)]
            tracemalloc.start()
            if sys.argv[1] == "fast":
                infos = rows.sized_infos(rows.unsized_infos(uids), list(range(20000)))
            else:
                infos = list(map(MessageInfo, uids, range(20000)))
            print(tracemalloc.get_traced_memory()[0] // len(infos))
            """)
        used = {}
        for how in ("fast", "constructor"):
            out = subprocess.run([sys.executable, "-c", code, how], check=True, cwd=REPO,
                                 stdout=subprocess.PIPE).stdout
            used[how] = int(out)
        self.assertLessEqual(used["fast"], used["constructor"] * 1.1, used)

    def test_gc_is_paused_and_restored(self) -> None:
        import gc

        self.assertTrue(gc.isenabled())
        for big in (False, True):
            with rows.gc_paused(big):
                self.assertFalse(gc.isenabled())
            self.assertTrue(gc.isenabled())
            self.assertEqual(gc.get_freeze_count(), 0)
        gc.disable()
        try:
            with rows.gc_paused(True):
                pass
            self.assertFalse(gc.isenabled())
        finally:
            gc.enable()


class ParallelScanTests(unittest.TestCase):
    """A scan whose files are read by a forked helper gives what the serial scan gives."""

    SAMPLES = [b"", b"a", b"a\r\nb", b"x\r", b"a\nb\r\nc\rd\n", b".dot\n" * 50, b"no newline",
               b"long" * 40000 + b"\n", b"crlf\r\n" * 20000, b"From: x\n\nbody\n"]

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(self.path, sub))
        self.data = {}
        for i in range(120):
            name = "17000000%02d.M%06dP1.host" % (i % 50, (i * 7919) % 10 ** 6)
            if i % 17 == 0:
                name = "17000000%02d.M%dP1.odd" % (i % 50, i)  # not zero-padded: numeric order
            if i == 3:
                name = "not standard, and not a valid UIDL"
            self.write("cur" if i % 4 else "new", name + (":2,S" if i % 4 else ""),
                       self.SAMPLES[i % len(self.SAMPLES)])
            self.data[name] = self.SAMPLES[i % len(self.SAMPLES)]
        # Listed twice, as when moved from new/ to cur/ between the two listings.
        os.link(os.path.join(self.path, "new", "1700000004.M031676P1.host"),
                os.path.join(self.path, "cur", "1700000004.M031676P1.host:2,RS"))
        self.patch(mm, "FORK_MIN", 8)
        self.patch(mm, "CHUNK", 5)

    def write(self, sub: str, name: str, data: bytes) -> None:
        with open(os.path.join(self.path, sub, name), "wb") as f:
            f.write(data)

    def scan(self, parallel: bool) -> mi.Snapshot:
        forks = []
        fork = os.fork
        self.patch(os, "fork", lambda: forks.append(1) or fork())
        if not parallel:
            self.patch(mm, "FORK_MIN", 10 ** 9)
        snapshot = mi.scan(self.path, None, md.uid_for)
        self.assertEqual(bool(forks), parallel)
        self.patch(mm, "FORK_MIN", 8)
        return snapshot

    def test_parallel_scan_is_the_serial_scan(self) -> None:
        parallel, serial = self.scan(True), self.scan(False)
        self.assertEqual(parallel.files, serial.files)
        self.assertEqual(parallel.infos, serial.infos)
        bases = [mi.base_name(f[4:]) for f in parallel.files]
        self.assertEqual(bases, mi.delivery_order(list(self.data)))
        self.assertEqual([i.size for i in parallel.infos],
                         [wire.wire_size([self.data[b]]) for b in bases])
        self.assertEqual([i.uid for i in parallel.infos], [md.uid_for(b) for b in bases])
        self.assertIn("cur/1700000004.M031676P1.host:2,RS", parallel.files)
        # A ,W= field or a previous snapshot: not cold, the same rows.
        self.write("cur", "1700000099.M000001P1.host,W=77:2,S", b"seventy-seven? no\n")
        with_w = self.scan(True)
        added = md.MessageInfo("1700000099.M000001P1.host,W=77", 77)
        self.assertEqual([i for i in with_w.infos if i != added], serial.infos)
        self.assertEqual(len(with_w.infos), len(serial.infos) + 1)
        self.assertEqual(mi.scan(self.path, with_w, md.uid_for).infos, with_w.infos)

    def test_vanished_and_unreadable_files(self) -> None:
        gone = "1700000010.M079190P1.host"
        refused = "1700000021.M166299P1.host"
        link = "1700000022.M174218P1.host"
        os.unlink(os.path.join(self.path, "cur", gone + ":2,S"))
        os.mkdir(os.path.join(self.path, "cur", gone + ":2,S"))  # no message
        os.unlink(os.path.join(self.path, "cur", link + ":2,S"))
        os.symlink("/etc/passwd", os.path.join(self.path, "cur", link + ":2,S"))
        real_open = os.open

        def refusing(name, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
            if name.startswith(refused):
                raise PermissionError(13, "Permission denied", name)
            return real_open(name, flags, *args, **kwargs)

        self.patch(os, "open", refusing)
        for parallel in (True, False):
            snapshot = self.scan(parallel)
            uids = [i.uid for i in snapshot.infos]
            self.assertNotIn(gone, uids)
            self.assertEqual(snapshot.provisional, frozenset([refused, link]))
            sizes = dict((i.uid, i.size) for i in snapshot.infos)
            self.assertEqual(sizes[refused], len(self.data[refused]))  # its size on disk
            self.assertEqual(sizes[link], len("/etc/passwd"))  # the link's, not the target's
            self.assertIsNone(snapshot.signature)  # not trusted next time
            self.assertEqual(len(snapshot.infos), len(self.data) - 1)


class MessageTableTests(unittest.TestCase):
    """``interfaces.MessageTable``: a snapshot's rows as columns (what a cold scan returns)."""

    def test_rows_follow_the_order_column(self) -> None:
        from array import array

        from twisted_pop3ng.interfaces import MessageInfo, MessageTable

        # Listing order has sizes 10, 20, 30, 99; message order is listing 2, 0, 1 (3 is a
        # duplicate listing of a moved file: not a message, not counted).
        table = MessageTable(["a", "b", "c"], array("q", [10, 20, 30, 99]), [2, 0, 1])
        expected = [MessageInfo("a", 30), MessageInfo("b", 10), MessageInfo("c", 20)]
        self.assertEqual(len(table), 3)
        self.assertEqual([table[0], table[1], table[-1]], [expected[0], expected[1], expected[2]])
        self.assertEqual(list(table), expected)
        self.assertEqual(table, expected)
        self.assertEqual(expected, table)
        self.assertEqual(table[1:], expected[1:])
        self.assertEqual(table.total_size(), 60)
        self.assertEqual(table[2], expected[2])  # after materializing, the same rows
        self.assertRaises(IndexError, table.__getitem__, 3)
        self.assertEqual(MessageTable(["x", "y"], [5, 6]).total_size(), 11)
        self.assertRaises(ValueError, MessageTable, ["x"], [1, 2])

    def test_cold_scan_gives_the_same_rows_as_the_index(self) -> None:
        """A scan returns columns, a reload of the index file a list: the same messages."""
        from twisted_pop3ng.interfaces import MessageTable

        root = os.path.abspath(self.mktemp())
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(root, sub))
        for i in range(50):
            with open(os.path.join(root, "cur", "17000000%02d.M%06dP1.h:2,S" % (49 - i, i)), "wb") as f:
                f.write(b"Subject: %d\n\n" % i + b"line\n" * i + (b"no final newline" if i % 7 == 0 else b""))
        mi.forget()
        small = mi.scan(root, None, md.uid_for)
        self.assertIsInstance(small.infos, list)  # below FORK_MIN: plain rows
        self.patch(mi, "FORK_MIN", 10)  # columns from this many messages on
        scanned = mi.scan(root, None, md.uid_for)
        self.assertIsInstance(scanned.infos, MessageTable)
        self.assertEqual(scanned.infos, small.infos)
        mi.save(root, scanned)
        mi.forget()
        loaded = mi.load(root)
        self.assertEqual(list(scanned.infos), list(loaded.infos))
        self.assertEqual(scanned.infos.total_size(), sum(i.size for i in loaded.infos))
        self.assertEqual(scanned.files, loaded.files)
        for name, info in zip(scanned.files, scanned.infos):  # each size is its own file's
            with open(os.path.join(root, name), "rb") as f:
                self.assertEqual(info.size, wire.wire_size_of(f.read()), name)
        self.assertEqual([f.split(".")[0] for f in scanned.files],
                         sorted(f.split(".")[0] for f in scanned.files))  # delivery order


def _open_briefly(path: str, data: bytes = b"") -> None:
    """Write ``data`` to a FIFO (and close it) if someone is reading it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # (ENXIO: nobody waits for it)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class HostileIndexTests(unittest.TestCase):
    """The index file is the user's to tamper with (audit F8, F17): it is read only as a bounded
    regular file, never through a symlink, and written only as a new file."""

    timeout = 30  # (before the fixes, opening a FIFO blocked for ever)

    def setUp(self) -> None:
        self.root, self.store, self.path = alice_maildir(self, fresh_cache=True)
        self.index = os.path.join(self.path, mi.INDEX_NAME)
        md.deliver(self.path, b"one\n", "1700000001.a.host")
        past = time.time() - 60
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.path, sub), (past, past))
        self.first = self.session()  # writes a settled index

    def session(self) -> list:
        box = self.store.open_mailbox("alice")
        try:
            return list(box.list_messages())
        finally:
            box.close()

    def scans(self) -> list:
        """Record the scans from now on (a scan: the index was not trusted)."""
        mi.forget()
        calls: list = []
        scan = mi.scan

        def recording(*args: Any) -> mi.Snapshot:
            calls.append(args)
            return scan(*args)

        self.patch(mi, "scan", recording)
        return calls

    def test_a_good_index_is_trusted(self) -> None:
        calls = self.scans()
        self.assertEqual(self.session(), self.first)
        self.assertEqual(calls, [])

    def test_symlinked_index_is_not_followed(self) -> None:
        elsewhere = os.path.join(self.root, "elsewhere")
        os.rename(self.index, elsewhere)  # a valid index, but not the maildir's own file
        os.symlink(elsewhere, self.index)
        calls = self.scans()
        self.assertEqual(self.session(), self.first)
        self.assertEqual(len(calls), 1)
        self.assertFalse(os.path.islink(self.index))  # replaced at logout, nothing written through
        with open(elsewhere, "rb") as f:
            self.assertTrue(f.read().startswith(b"pop3ng-index 2\n"))

    def test_fifo_index_is_not_waited_for(self) -> None:
        with open(self.index, "rb") as f:
            valid = f.read()
        os.unlink(self.index)
        os.mkfifo(self.index)
        # Before the fix the open() blocked until a writer came: this one comes after 5 s (so
        # that such a server fails this test instead of hanging it) with a valid index, which
        # such a server then trusted.
        unblock = threading.Timer(5, _open_briefly, (self.index, valid))
        unblock.start()
        self.addCleanup(unblock.cancel)
        calls = self.scans()
        self.assertEqual(self.session(), self.first)
        self.assertEqual(len(calls), 1)

    def test_oversized_index_is_not_read(self) -> None:
        size = os.path.getsize(self.index)
        self.patch(mi, "MAX_INDEX_BYTES", size - 1)  # (a sparse terabyte, in small)
        self.patch(mi, "INDEX_PER_DIRECTORY_BYTE", 0)
        self.assertIsNone(mi.load(self.path))
        calls = self.scans()
        self.assertEqual(self.session(), self.first)
        self.assertEqual(len(calls), 1)

    def test_index_no_login_would_read_is_not_written(self) -> None:
        # (A million messages on a filesystem whose directories report small sizes: a rewrite at
        # every logout that no login reads would be all cost.)
        self.patch(mi, "MAX_INDEX_BYTES", 1)
        self.patch(mi, "INDEX_PER_DIRECTORY_BYTE", 0)
        os.unlink(self.index)
        mi.forget()
        calls = self.scans()
        self.assertEqual(self.session(), self.first)
        self.assertEqual(len(calls), 1)
        self.assertFalse(os.path.exists(self.index))

    def test_index_may_grow_with_the_directories_not_beyond(self) -> None:
        # Above MAX_INDEX_BYTES an index is read when the directories it lists are large enough
        # to hold that many names (a million-message maildir), and not read when they are not
        # (a sparse file planted in a small maildir).
        dirs = mi.stat_dirs(self.path)
        listed = dirs["cur"].st_size + dirs["new"].st_size
        self.patch(mi, "MAX_INDEX_BYTES", 1)
        size = os.path.getsize(self.index)
        self.assertLessEqual(size, mi.INDEX_PER_DIRECTORY_BYTE * listed)
        self.assertIsNotNone(mi.load(self.path, dirs))
        calls = self.scans()
        self.assertEqual(self.session(), self.first)
        self.assertEqual(calls, [])  # the index was used
        mi.forget()
        with open(self.index, "r+b") as f:
            f.truncate(mi.INDEX_PER_DIRECTORY_BYTE * listed + 1)
        self.assertIsNone(mi.load(self.path, dirs))
        self.assertEqual(self.session(), self.first)
        self.assertEqual(len(calls), 1)  # scanned, not read

    def test_index_read_in_short_pieces(self) -> None:
        read = os.read
        self.patch(os, "read", lambda fd, n: read(fd, min(n, 5)))
        calls = self.scans()
        self.assertEqual(self.session(), self.first)
        self.assertEqual(calls, [])

    def test_planted_hard_link_at_the_temporary_name_is_not_written(self) -> None:
        victim = os.path.join(self.root, "victim")
        with open(victim, "wb") as f:
            f.write(b"root's precious file\n")
        # the name the last version used (fs.protected_hardlinks=0 lets a user make this link)
        os.link(victim, "%s.tmp.%d" % (self.index, os.getpid()))
        os.unlink(self.index)  # so that the logout writes a new one
        self.session()
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"root's precious file\n")
        with open(self.index, "rb") as f:
            self.assertTrue(f.read().startswith(b"pop3ng-index 2\n"))
        self.assertNotEqual(os.stat(self.index).st_ino, os.stat(victim).st_ino)
