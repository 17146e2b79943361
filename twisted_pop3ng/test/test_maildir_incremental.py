"""The incremental maildir index: a change costs what changed, and the result is always what a full
rescan of the maildir gives (the oracle), whatever another program does to the maildir and when."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from typing import Any, List, Tuple

from twisted.trial import unittest

from twisted_pop3ng import wire
from twisted_pop3ng.errors import MessageVanished
from twisted_pop3ng.mailbox.maildir import incremental, snapshot as ms, store as md
from twisted_pop3ng.mailbox.maildir import index as mi
from twisted_pop3ng.mailbox.maildir import listing as rows
from twisted_pop3ng.testing import SessionDriver
from twisted_pop3ng.test.maildir_fixture import alice_maildir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A fake clock's start: an mtime with nanoseconds, as on ext4 (granularity 1 ns by its digits).
T0 = 1_700_000_000_123_456_789

Rows = Tuple[List[str], List[Tuple[str, int]]]


class MaildirCase(unittest.TestCase):
    """A maildir, sessions on it, and the oracle: a full scan with nothing known."""

    def setUp(self) -> None:
        self.root, self.store, self.path = alice_maildir(self, subdirs=True, fresh_cache=True)
        self.listed: List[str] = []
        self.measured: List[str] = []
        listing = rows.listing

        def recording_listing(path: str, sub: str) -> List[str]:
            self.listed.append(sub)
            return listing(path, sub)

        self.patch(rows, "listing", recording_listing)
        measurement = mi.Measurement

        def recording_measurement(path: str, names: Any, boundary: int) -> Any:
            self.measured.extend(names)
            return measurement(path, names, boundary)

        self.patch(mi, "Measurement", recording_measurement)

    def deliver(self, data: bytes, name: str) -> str:
        """As an MTA: written to tmp/, fsynced, renamed into new/."""
        md.deliver(self.path, data, name)
        return name

    def move(self, old: str, new: str) -> None:
        os.rename(os.path.join(self.path, old), os.path.join(self.path, new))

    def session(self) -> Rows:
        self.listed.clear()
        self.measured.clear()
        box = self.store.open_mailbox("alice")
        try:
            return list(box.files), [(i.uid, i.size) for i in box.list_messages()]
        finally:
            box.close()

    def oracle(self) -> Rows:
        listed, measured = list(self.listed), list(self.measured)  # (not the session's costs)
        fresh = mi.scan(self.path, None, md.uid_for)
        self.listed[:], self.measured[:] = listed, measured
        return list(fresh.files), [(i.uid, i.size) for i in fresh.infos]

    def settle_clock(self, offset_ns: int = 3 * 10 ** 9) -> None:
        """From now on the clock reads ``offset_ns`` after the directories' last change."""
        def now() -> int:
            return max(os.stat(os.path.join(self.path, sub)).st_mtime_ns for sub in ("new", "cur")) + offset_ns

        self.patch(incremental, "clock", now)
        self.patch(mi, "clock", now)


class CostTests(MaildirCase):
    """What a change costs: a listing of the directory that changed, the unknown files read."""

    def fill(self, count: int, sub: str = "cur") -> List[str]:
        names = []
        for i in range(count):
            name = self.deliver(b"Subject: %d\n\nbody\n" % i, "1700000%03d.M%06dP1.host" % (i, i))
            if sub == "cur":
                self.move("new/" + name, "cur/" + name + ":2,S")
            names.append(name)
        return names

    def test_a_delivery_lists_new_and_reads_the_new_file_only(self) -> None:
        self.fill(30)
        self.settle_clock()
        self.session()
        self.deliver(b"new one\n", "1800000000.M1P1.host")
        result = self.session()
        self.assertEqual(self.listed, ["new"])
        self.assertEqual(self.measured, ["1800000000.M1P1.host"])
        self.assertEqual(result, self.oracle())
        self.assertEqual(result[1][-1], ("1800000000.M1P1.host", 9))

    def test_a_delivery_into_a_new_dir_of_many(self) -> None:
        self.fill(30, "new")
        self.settle_clock()
        self.session()
        self.deliver(b"new one\n", "1800000000.M1P1.host")
        result = self.session()
        self.assertEqual(self.listed, ["new"])
        self.assertEqual(self.measured, ["1800000000.M1P1.host"])
        self.assertEqual(result, self.oracle())

    def test_a_settled_maildir_is_not_listed_again(self) -> None:
        self.fill(5)
        self.deliver(b"x\n", "1800000000.M1P1.host")
        self.settle_clock()
        first = self.session()
        second = self.session()
        self.assertEqual(self.listed, [])
        self.assertEqual(first, second)
        mi.forget()  # a new process: the index file, and still nothing listed
        self.assertEqual(self.session(), first)
        self.assertEqual(self.listed, [])

    def test_moves_and_flag_changes_read_nothing(self) -> None:
        names = self.fill(6, "new")
        self.settle_clock()
        before = self.session()
        self.move("new/" + names[1], "cur/" + names[1] + ":2,S")
        self.move("new/" + names[4], "cur/" + names[4] + ":2,RS")
        after = self.session()
        self.assertEqual(self.measured, [])
        self.assertEqual(after[1], before[1])  # same numbers, UIDLs and sizes
        self.assertIn("cur/" + names[1] + ":2,S", after[0])
        self.assertEqual(after, self.oracle())
        self.move("cur/" + names[1] + ":2,S", "cur/" + names[1] + ":2,FS")
        self.assertEqual(self.session(), self.oracle())
        self.assertEqual(self.listed, ["cur"])
        self.assertEqual(self.measured, [])

    def test_deletions_by_another_program(self) -> None:
        names = self.fill(8)
        self.settle_clock()
        self.session()
        os.unlink(os.path.join(self.path, "cur", names[0] + ":2,S"))
        os.unlink(os.path.join(self.path, "cur", names[7] + ":2,S"))
        result = self.session()
        self.assertEqual(self.listed, ["cur"])
        self.assertEqual(self.measured, [])
        self.assertEqual(result, self.oracle())
        self.assertEqual(len(result[1]), 6)

    def test_an_arrival_before_the_last_message_is_numbered_in_delivery_order(self) -> None:
        self.fill(5)
        self.settle_clock()
        self.session()
        self.deliver(b"late\n", "1700000002.M500000P1.restored")  # between messages 3 and 4
        result = self.session()
        self.assertEqual(result, self.oracle())
        self.assertEqual(result[1][3][0], "1700000002.M500000P1.restored")
        self.assertEqual(self.measured, ["1700000002.M500000P1.restored"])  # (both listed: a scan)

    def test_one_base_name_twice(self) -> None:
        # A move by link + unlink, seen between the two: one message, the cur/ one.
        names = self.fill(3, "new")
        self.settle_clock()
        self.session()
        os.link(os.path.join(self.path, "new", names[1]), os.path.join(self.path, "cur", names[1] + ":2,S"))
        result = self.session()
        self.assertEqual(result, self.oracle())
        self.assertEqual(len(result[1]), 3)
        os.unlink(os.path.join(self.path, "new", names[1]))
        self.assertEqual(self.session(), self.oracle())

    def test_w_field_is_a_size_without_reading(self) -> None:
        self.fill(3)
        self.settle_clock()
        self.session()
        self.deliver(b"x\n", "1800000000.M1P1.host,S=2,W=999")
        result = self.session()
        self.assertEqual(self.measured, [])
        self.assertEqual(result[1][-1], ("1800000000.M1P1.host,S=2,W=999", 999))

    def test_a_w_field_beyond_64_bits_is_no_size(self) -> None:
        self.fill(3)
        self.deliver(b"x\n", "1700000100.M1P1.host,W=99999999999999999999999")  # in a cold scan
        self.settle_clock()
        cold = self.session()
        self.assertEqual(cold[1][-1], ("1700000100.M1P1.host,W=99999999999999999999999", 3))
        self.deliver(b"yy\n", "1800000000.M1P1.host,W=%d" % (1 << 70))  # in an update
        result = self.session()
        self.assertEqual(self.measured, ["1800000000.M1P1.host,W=%d" % (1 << 70)])
        self.assertEqual(result[1][-1][1], 4)
        self.assertEqual(result, self.oracle())

    def test_a_directory_and_a_vanished_name_are_no_messages(self) -> None:
        self.fill(3)
        self.settle_clock()
        self.session()
        os.mkdir(os.path.join(self.path, "new", "1800000000.M1P1.dir"))
        self.assertEqual(self.session(), self.oracle())
        self.deliver(b"y\n", "1800000001.M1P1.host")
        self.assertEqual(self.session(), self.oracle())

    def test_unreadable_file_is_listed_and_measured_again_until_it_can_be(self) -> None:
        self.fill(3)
        self.settle_clock()
        self.session()
        refused = "1800000000.M1P1.host"
        real_open = os.open
        refusing = [True]

        def open_(name: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if refusing[0] and str(name).startswith(refused):
                raise PermissionError(13, "Permission denied", name)
            return real_open(name, flags, *args, **kwargs)

        self.patch(os, "open", open_)
        self.deliver(b"a\nb\n", refused)
        listed = self.session()
        self.assertEqual(listed[1][-1], (refused, 4))  # its size on disk
        self.assertIn(refused, self.measured)
        refusing[0] = False
        self.assertEqual(self.session()[1][-1], (refused, 6))  # the wire size, now measured
        self.assertEqual(self.session(), self.oracle())
        self.assertEqual(self.measured, [])


class SettleTests(MaildirCase):
    """The classic maildir race: a change in the same clock tick as a listing leaves the mtime as
    it was, so such a listing is not trusted next time."""

    def test_a_change_within_the_tick_of_the_listing_is_seen(self) -> None:
        self.deliver(b"one\n", "1700000001.M1P1.host")
        new = os.path.join(self.path, "new")
        mtime = os.stat(new).st_mtime_ns
        self.settle_clock(offset_ns=0)  # the listing happens in the tick of the last change
        self.session()
        # Another delivery in the same tick: the filesystem gives new/ the same mtime.
        self.deliver(b"two\n", "1700000002.M1P1.host")
        os.utime(new, ns=(mtime, mtime))
        self.assertEqual(len(self.session()[1]), 2)
        self.assertEqual(self.listed, ["new"])

    def test_a_settled_listing_is_trusted(self) -> None:
        self.deliver(b"one\n", "1700000001.M1P1.host")
        self.settle_clock()
        self.session()
        self.session()
        self.assertEqual(self.listed, [])

    def test_granularity_is_read_from_the_mtime(self) -> None:
        self.assertEqual(ms.granularity(T0), 1)
        self.assertEqual(ms.granularity(1_700_000_000_120_000_000), 10 ** 7)
        self.assertEqual(ms.granularity(1_700_000_001 * 10 ** 9), 10 ** 9)
        self.assertEqual(ms.granularity(1_700_000_000 * 10 ** 9), 2 * 10 ** 9)
        device = os.stat(self.path).st_dev
        self.patch(ms, "_local_devices", {device: True})
        self.assertFalse(ms.settled(device, T0, T0))
        self.assertTrue(ms.settled(device, T0, T0 + 1))
        whole = 1_700_000_000 * 10 ** 9  # a filesystem of whole (even) seconds
        self.assertFalse(ms.settled(device, whole, whole + 15 * 10 ** 8))
        self.assertTrue(ms.settled(device, whole, whole + 2 * 10 ** 9))
        self.patch(ms, "_local_devices", {device: False})  # NFS: another host's clock
        self.assertFalse(ms.settled(device, T0, T0 + 10 ** 9))
        self.assertTrue(ms.settled(device, T0, T0 + 2 * 10 ** 9))

    def test_the_filesystem_type_comes_from_mountinfo(self) -> None:
        ms._local_devices.clear()
        device = os.stat(self.path).st_dev
        self.assertIsInstance(ms._mount_type(device), str)
        mount = os.path.join(self.root, "mountinfo")
        with open(mount, "w") as f:
            f.write("36 35 %d:%d / /srv rw - nfs4 server:/export rw\n" % (os.major(device), os.minor(device)))
        self.patch(ms, "_MOUNTINFO", mount)
        self.patch(ms, "_local_devices", {})
        self.assertFalse(ms.is_local(device))

    def test_a_big_directory_is_listed_after_the_tick(self) -> None:
        # (real clock) A delivery just now: the listing waits out the tick, so the next login
        # lists nothing.
        self.patch(incremental, "BIG_DIR", 1)
        device = os.stat(self.path).st_dev
        self.patch(ms, "_local_devices", {device: True})
        self.deliver(b"one\n", "1700000001.M1P1.host")
        past = time.time() - 60
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.path, sub), (past, past))
        self.session()
        self.deliver(b"two\n", "1700000002.M1P1.host")
        self.session()
        self.assertEqual(self.listed, ["new"])
        self.assertEqual(len(self.session()[1]), 2)
        self.assertEqual(self.listed, [])


class IndexFileTests(MaildirCase):
    def test_a_few_changes_do_not_rewrite_the_file_and_an_old_file_is_brought_up_to_date(self) -> None:
        for i in range(200):
            self.deliver(b"m %d\n" % i, "1700000%03d.M%06dP1.host" % (i, i))
        self.settle_clock()
        self.session()
        index = os.path.join(self.path, mi.INDEX_NAME)
        written = os.stat(index).st_mtime_ns
        self.deliver(b"new\n", "1800000000.M1P1.host")
        os.unlink(os.path.join(self.path, "new", "1700000005.M000005P1.host"))
        self.session()
        self.assertEqual(os.stat(index).st_mtime_ns, written)  # 2 rows of 200: not rewritten
        mi.forget()  # a new process reads the older file
        result = self.session()
        self.assertEqual(result, self.oracle())
        self.assertEqual(self.listed, ["new"])
        self.assertEqual(self.measured, ["1800000000.M1P1.host"])
        for i in range(10):
            self.deliver(b"more\n", "1800000001.M%06dP1.host" % i)
        self.session()
        self.assertNotEqual(os.stat(index).st_mtime_ns, written)  # 13 of 209 rows: rewritten
        mi.forget()
        self.assertEqual(self.session(), self.oracle())
        self.assertEqual(self.listed, [])

    def test_the_file_records_per_directory_stamps(self) -> None:
        self.deliver(b"one\n", "1700000001.M1P1.host")
        past = time.time() - 60
        os.utime(os.path.join(self.path, "cur"), (past, past))
        self.session()
        with open(os.path.join(self.path, mi.INDEX_NAME)) as f:
            dirs = f.read().split("\n")[1]
        cur = os.stat(os.path.join(self.path, "cur"))
        self.assertEqual(dirs, "dirs %d:%d -" % (cur.st_ino, cur.st_mtime_ns))  # new/: too recent


class RandomChangesTests(MaildirCase):
    """Random changes by "another program", on a fake clock whose ticks the test decides (a change
    in the tick of the last listing keeps the directory's mtime), sessions and new processes in
    between: every session must give exactly what a full rescan gives."""

    def setUp(self) -> None:
        super().setUp()
        self.now = T0
        self.patch(incremental, "clock", lambda: self.now)
        self.patch(mi, "clock", lambda: self.now)
        device = os.stat(self.path).st_dev
        self.patch(ms, "_local_devices", {device: True})
        self.serial = 0
        self.log: List[Any] = []

    def stamp(self, sub: str) -> None:
        """The change just made happened now, by the fake clock."""
        os.utime(os.path.join(self.path, sub), ns=(self.now, self.now))

    def files(self, sub: str) -> List[str]:
        return sorted(n for n in os.listdir(os.path.join(self.path, sub)) if not n.startswith("."))

    def change(self, rng: random.Random) -> None:
        kind = rng.choice(["deliver", "deliver", "deliver", "old", "w", "move", "flags", "delete",
                           "delete", "dup"])
        self.log.append((kind, self.now))
        new, cur = self.files("new"), self.files("cur")
        self.serial += 1
        if kind in ("deliver", "old", "w") or not (new or cur):
            stamp = 1_750_000_000 + self.serial if kind != "old" else rng.randrange(1_700_000_000, 1_750_000_000)
            name = "%d.M%06dP%d.host" % (stamp, rng.randrange(10 ** 6), self.serial)
            body = b"Subject: %d\n\n" % self.serial + b"x\n" * rng.randrange(5)
            if kind == "w":
                name += ",S=%d,W=%d" % (len(body), wire.wire_size([body]))
            self.deliver(body, name)
            self.stamp("new")
        elif kind == "move" and new:
            name = rng.choice(new)
            self.move("new/" + name, "cur/" + name + rng.choice([":2,", ":2,S", ":2,RS"]))
            self.stamp("new")
            self.stamp("cur")
        elif kind == "flags" and cur:
            name = rng.choice(cur)
            self.move("cur/" + name, "cur/" + name.partition(":")[0] + rng.choice([":2,F", ":2,T", ":2,FS"]))
            self.stamp("cur")
        elif kind == "dup" and new:
            name = rng.choice(new)
            if not os.path.exists(os.path.join(self.path, "cur", name + ":2,S")):
                os.link(os.path.join(self.path, "new", name), os.path.join(self.path, "cur", name + ":2,S"))
                self.stamp("cur")
        elif kind == "delete":
            sub, names = rng.choice([("new", new), ("cur", cur)])
            if names:
                os.unlink(os.path.join(self.path, sub, rng.choice(names)))
                self.stamp(sub)

    def test_random_changes_against_a_full_rescan(self) -> None:
        for seed in range(12):
            rng = random.Random(seed)
            for step in range(25):
                for _ in range(rng.choice([0, 1, 1, 2, 5])):
                    if rng.random() < 0.5:
                        self.now += 10 ** 7  # the next tick; else the same tick as before
                    self.change(rng)
                if rng.random() < 0.2:
                    mi.forget()  # a new process: the index file
                if rng.random() < 0.5:
                    self.now += 10 ** 7
                self.log.append("session")
                got = self.session()
                self.maxDiff = None
                self.assertEqual(got, self.oracle(), (seed, step, self.log[-20:]))
            for sub in ("new", "cur"):
                for name in os.listdir(os.path.join(self.path, sub)):
                    os.unlink(os.path.join(self.path, sub, name))
            self.now += 10 ** 7
            self.stamp("new")
            self.stamp("cur")


_MUTATOR = textwrap.dedent("""
    import os, random, sys, time
    path, seconds, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    serial = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        serial += 1
        new = [n for n in os.listdir(path + "/new") if not n.startswith(".")]
        cur = [n for n in os.listdir(path + "/cur") if not n.startswith(".")]
        kind = rng.choice(["deliver", "deliver", "move", "flags", "delete"])
        try:
            if kind == "deliver" or not (new or cur):
                name = "%d.M%06dP%d.mutator%d" % (time.time(), serial % 10 ** 6, os.getpid(), serial)
                with open(path + "/tmp/" + name, "wb") as f:
                    f.write(b"Subject: %d\\n\\nbody\\n" % serial)
                os.rename(path + "/tmp/" + name, path + "/new/" + name)
            elif kind == "move" and new:
                name = rng.choice(new)
                os.rename(path + "/new/" + name, path + "/cur/" + name + ":2,S")
            elif kind == "flags" and cur:
                name = rng.choice(cur)
                os.rename(path + "/cur/" + name, path + "/cur/" + name.partition(":")[0] + ":2,RS")
            elif kind == "delete":
                sub, names = rng.choice([("new", new), ("cur", cur)])
                if names:
                    os.unlink(path + "/" + sub + "/" + rng.choice(names))
        except FileNotFoundError:
            pass
    print(serial, flush=True)
""")


class ConcurrentChangesTests(MaildirCase):
    """Another process delivers, moves, changes flags and deletes while sessions run (real clock,
    no fake): no session fails, a message that vanished is -ERR, and once the other process has
    stopped the next session is exactly the full rescan."""

    timeout = 120

    def test_sessions_during_changes_by_another_process(self) -> None:
        for i in range(40):
            self.deliver(b"Subject: %d\n\nstart\n" % i, "1700000%03d.M%06dP1.host" % (i, i))
        for round_ in range(3):
            mutator = subprocess.Popen([sys.executable, "-c", _MUTATOR, self.path, "1.5", str(round_)],
                                       stdout=subprocess.PIPE)
            self.addCleanup(mutator.kill)
            sessions = 0
            while mutator.poll() is None:
                box = self.store.open_mailbox("alice")
                try:
                    for index in range(len(box.list_messages())):
                        try:
                            data = box.read_whole(index, 1 << 20)
                        except MessageVanished:
                            continue  # deleted since the login: -ERR, the session goes on
                        self.assertIsNotNone(data)
                finally:
                    box.close()
                sessions += 1
                if round_ == 2:
                    mi.forget()  # new processes, reading the index file
            assert mutator.stdout is not None
            mutator.stdout.read()
            mutator.wait()
            mutator.stdout.close()
            self.assertGreater(sessions, 0)
            self.assertEqual(self.session(), self.oracle())
            self.assertEqual(self.session(), self.oracle())


class ServerTests(MaildirCase):
    """Through the POP3 server: what vanished is -ERR, what was delivered is listed."""

    def test_retr_of_a_message_deleted_by_another_program(self) -> None:
        self.deliver(b"one\n", "1700000001.M1P1.host")
        self.deliver(b"two\n", "1700000002.M1P1.host")
        driver = SessionDriver(users={"alice": "secret"}, store=self.store)
        driver.login("alice", "secret")
        os.unlink(os.path.join(self.path, "new", "1700000001.M1P1.host"))
        self.assertTrue(driver.send("RETR 1").startswith(b"-ERR"))
        self.assertIn(b"two", driver.send("RETR 2"))
        driver.send("QUIT")
        later = driver.another()
        later.login("alice", "secret")
        self.deliver(b"three\n", "1700000003.M1P1.host")
        self.assertTrue(later.send("STAT").startswith(b"+OK 1 "))  # the login's snapshot
        later.send("QUIT")
        third = driver.another()
        third.login("alice", "secret")
        self.assertTrue(third.send("STAT").startswith(b"+OK 2 "))
        self.assertTrue(third.send("UIDL").endswith(b"\r\n1 1700000002.M1P1.host\r\n2 1700000003.M1P1.host\r\n.\r\n"))
        third.send("QUIT")


class DovecotUIDLTests(MaildirCase):
    """UIDLs kept from Dovecot stay as they are through updates, in this process and a new one."""

    def test_updates_keep_the_uidl_map(self) -> None:
        from twisted_pop3ng.mailbox.maildir import dovecot_uidlist as du
        from twisted_pop3ng.mailbox.maildir.names import hashed_uid
        from twisted_pop3ng.test.test_dovecot_uidlist import EXPECTED, NAMES, UIDLIST_V3

        du.forget()
        self.addCleanup(du.forget)
        for i, name in enumerate(NAMES):
            self.deliver(b"Subject: %d\r\n\r\nbody\r\n" % i, name)
        with open(os.path.join(self.path, du.UIDLIST_NAME), "w") as f:
            f.write(UIDLIST_V3)
        self.settle_clock()
        self.assertEqual([uid for uid, _ in self.session()[1]], EXPECTED)
        self.move("new/" + NAMES[2], "cur/" + NAMES[2] + ":2,S")  # Dovecot's 000000046b1341b1
        self.deliver(b"after\r\n", "1700000100.M5P1.host")
        self.deliver(b"looks like Dovecot's\r\n", "ffffffff6b1341b1")  # (16 hex digits: hashed; no digits first: last)
        result = self.session()
        self.assertEqual(self.listed, ["new", "cur"])
        self.assertEqual([uid for uid, _ in result[1]], EXPECTED + ["1700000100.M5P1.host",
                                                                    hashed_uid("ffffffff6b1341b1")])
        self.assertEqual(result, self.oracle_with_map())
        mi.forget()
        du.forget()
        self.assertEqual(self.session(), result)

    def oracle_with_map(self) -> Rows:
        from twisted_pop3ng.mailbox.maildir import dovecot_uidlist as du

        mapping = du.uidl_map(self.path, self.path, True)
        assert mapping is not None
        listed, measured = list(self.listed), list(self.measured)
        fresh = mi.scan(self.path, None, mapping.uid_for)
        self.listed[:], self.measured[:] = listed, measured
        return list(fresh.files), [(i.uid, i.size) for i in fresh.infos]


class DifferencesTests(unittest.TestCase):
    def test_differences_are_the_set_differences(self) -> None:
        rng = random.Random(3)
        for _ in range(300):
            before = ["n%d" % i for i in rng.sample(range(1000), rng.randrange(0, 60))]
            after = list(before)
            for _ in range(rng.randrange(0, 4)):
                op = rng.choice(["insert", "remove", "shuffle"])
                if op == "insert":
                    after.insert(rng.randrange(len(after) + 1), "m%d" % rng.randrange(10 ** 6))
                elif op == "remove" and after:
                    after.pop(rng.randrange(len(after)))
                elif op == "shuffle":
                    rng.shuffle(after)
            after = list(dict.fromkeys(after))  # a name is listed once
            arrived, left = incremental.differences(before, after)
            self.assertEqual(sorted(arrived), sorted(set(after) - set(before)))
            self.assertEqual(sorted(left), sorted(set(before) - set(after)))
