"""Measuring many maildir files with a forked helper: exact sizes, odd files, a dying helper."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Dict, List

from twisted.trial import unittest

from twisted_pop3ng import wire
from twisted_pop3ng.mailbox.maildir import measure as mm

#: Messages whose wire size is easy to get wrong: CRLF, bare CR, no final newline, empty, dots,
#: a CR at the very end, and files longer than one read (SMALL_READ).
SAMPLES = [b"", b"a", b"a\n", b"a\r\nb", b"x\r", b"\r", b"\r\n\r\n", b"a\nb\r\nc\rd\n",
           b".dot\n" * 500, b"no final newline\nlast", b"From: x\n\nbody\n",
           b"long" * 40000 + b"\n", b"crlf\r\n" * 20000, b"x" * mm.SMALL_READ,
           b"y" * (mm.SMALL_READ - 1) + b"\r", b"z" * (mm.SMALL_READ - 1) + b"\n" + b"tail"]


class MeasurementTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(self.path, sub))
        # Small chunks and a small threshold, so a few dozen files are shared by both sides.
        self.patch(mm, "FORK_MIN", 8)
        self.patch(mm, "CHUNK", 3)

    def fill(self, count: int) -> Dict[str, bytes]:
        """``count`` messages cycling through SAMPLES, a third of them in new/."""
        files = {}
        for i in range(count):
            sub = "new" if i % 3 == 0 else "cur"
            name = "17000000%02d.M%06dP1.host%s" % (i % 100, i, ":2,S" if sub == "cur" else "")
            data = SAMPLES[i % len(SAMPLES)]
            with open(os.path.join(self.path, sub, name), "wb") as f:
                f.write(data)
            files[sub + "/" + name] = data
        return files

    def names(self, files: Dict[str, bytes]) -> List[str]:
        """new/ names first, then cur/ (the caller's listing order)."""
        return sorted(files, key=lambda f: (f[:3] != "new", f))

    def measure(self, files: List[str], pause: float = 0.0, expect_helper: bool = True) -> List[int]:
        boundary = sum(1 for f in files if f.startswith("new/"))
        with mm.Measurement(self.path, [f[4:] for f in files], boundary) as m:
            self.assertEqual(m.start(), expect_helper)
            time.sleep(pause)
            return list(m.finish())

    def slow_reads(self, seconds: float = 0.002) -> None:
        """Make every read slow, in this process and (inherited) in the helper."""
        read = os.read

        def slow(fd: int, n: int) -> bytes:
            time.sleep(seconds)
            return read(fd, n)

        self.patch(os, "read", slow)

    def test_sizes_are_those_of_the_encoder(self) -> None:
        files = self.fill(3 * len(SAMPLES))
        names = self.names(files)
        expected = [wire.wire_size([files[f]]) for f in names]
        self.assertEqual(self.measure(names), expected)
        self.assertEqual(self.measure(names, pause=0.2), expected)  # the helper did it all
        for data in SAMPLES:
            self.assertEqual(mm.wire_size_of(data), wire.wire_size([data]), data[:20])

    def test_both_sides_measure(self) -> None:
        files = self.fill(60)
        names = self.names(files)
        here: List[int] = []
        measure = mm.Measurement._measure

        def recording(m: mm.Measurement, start: int, end: int, out) -> None:  # type: ignore
            if os.getpid() == parent:
                here.extend(range(start, end))
            measure(m, start, end, out)

        parent = os.getpid()
        self.patch(mm.Measurement, "_measure", recording)
        self.slow_reads()
        self.assertEqual(self.measure(names), [wire.wire_size([files[f]]) for f in names])
        self.assertTrue(0 < len(set(here)) < len(names), here)

    def record_prefetch(self) -> str:
        """Log (one line per file, O_APPEND) every file the kernel is asked to read ahead, in
        this process or the helper; returns the log's path."""
        log = os.path.abspath(self.mktemp())
        fadvise = mm._FADVISE
        assert fadvise is not None

        def recording(fd: int, offset: int, length: int, advice: int) -> None:
            self.assertEqual((offset, length, advice), (0, mm.SMALL_READ, os.POSIX_FADV_WILLNEED))
            with open(log, "a") as f:
                f.write("%d %d\n" % (os.getpid(), os.fstat(fd).st_ino))
            fadvise(fd, offset, length, advice)

        self.patch(mm, "_FADVISE", recording)
        return log

    def test_reads_that_wait_for_the_disk_make_the_helper_ask_ahead(self) -> None:
        """Reads that sleep (as a read from disk does) make the helper ask the kernel for the
        files ahead of it, a window at a time, and this process stop after its first chunk; the
        sizes stay exact."""
        files = self.fill(90)
        names = self.names(files)
        measure = mm.Measurement._measure
        parent = os.getpid()
        here: List[int] = []

        def recording(m: mm.Measurement, start: int, end: int, out) -> None:  # type: ignore
            if os.getpid() == parent:
                here.extend(range(start, end))
            measure(m, start, end, out)

        self.patch(mm.Measurement, "_measure", recording)
        log = self.record_prefetch()
        self.patch(mm, "IO_BOUND_WAITS", 2)  # a chunk is 3 reads here
        self.patch(mm, "PREFETCH", 10)
        self.slow_reads(0.005)
        self.assertEqual(self.measure(names), [wire.wire_size([files[f]]) for f in names])
        with open(log) as f:
            asked = [line.split() for line in f]
        self.assertEqual({pid for pid, _ in asked} - {str(parent)}, {pid for pid, _ in asked})
        inodes = {os.stat(os.path.join(self.path, f)).st_ino: f for f in names}
        asked_names = [inodes[int(ino)] for _, ino in asked]
        self.assertEqual(len(asked_names), len(set(asked_names)))  # each file asked for once
        # All but the helper's first chunk and this process's one chunk were asked for ahead.
        self.assertEqual(len(here), mm.CHUNK)
        self.assertGreaterEqual(len(asked_names), len(names) - 2 * mm.CHUNK - mm.CHUNK)
        self.assertEqual(asked_names, sorted(asked_names, key=names.index))  # front to back

    def test_cached_reads_are_not_asked_for_ahead(self) -> None:
        """Files in the page cache: no read-ahead requests (one more syscall per file)."""
        files = self.fill(90)
        names = self.names(files)
        log = self.record_prefetch()
        self.assertEqual(self.measure(names), [wire.wire_size([files[f]]) for f in names])
        self.assertFalse(os.path.exists(log))

    def test_vanished_unreadable_and_symlinks(self) -> None:
        files = self.fill(40)
        names = self.names(files)
        gone, directory, refused, link = names[1], names[5], names[17], names[30]
        os.unlink(os.path.join(self.path, gone))
        os.unlink(os.path.join(self.path, directory))
        os.mkdir(os.path.join(self.path, directory))
        os.unlink(os.path.join(self.path, link))
        os.symlink("/etc/passwd", os.path.join(self.path, link))
        real_open = os.open

        def refusing(name, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
            if name == refused[4:]:
                raise PermissionError(13, "Permission denied", name)
            return real_open(name, flags, *args, **kwargs)

        self.patch(os, "open", refusing)
        sizes = self.measure(names)
        for f, size in zip(names, sizes):
            if f in (gone, directory):
                self.assertEqual(size, mm.VANISHED, f)
            elif f in (refused, link):
                self.assertEqual(size, mm.UNREADABLE, f)
            else:
                self.assertEqual(size, wire.wire_size([files[f]]), f)

    def test_noatime_refused_is_dropped(self) -> None:
        files = self.fill(20)
        names = self.names(files)
        real_open = os.open

        def not_the_owner(name, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
            if flags & mm.NOATIME:
                raise PermissionError(1, "Operation not permitted", name)
            return real_open(name, flags, *args, **kwargs)

        self.patch(os, "open", not_the_owner)
        self.assertEqual(self.measure(names), [wire.wire_size([files[f]]) for f in names])

    def test_what_a_dead_helper_left_is_measured_here(self) -> None:
        files = self.fill(30)
        names = self.names(files)

        def dies_after_claiming(m: mm.Measurement) -> None:
            m._view[len(m.names)] = 2 * mm.CHUNK  # type: ignore[index]
            os._exit(1)

        self.patch(mm.Measurement, "_helper", dies_after_claiming)
        self.assertEqual(self.measure(names, pause=0.1),
                         [wire.wire_size([files[f]]) for f in names])

    def test_helper_ignores_signals_and_never_returns(self) -> None:
        files = self.fill(30)
        names = self.names(files)
        self.slow_reads(0.01)
        parent = os.getpid()
        marks = os.path.abspath(self.mktemp())
        boundary = sum(1 for f in names if f.startswith("new/"))
        with mm.Measurement(self.path, [f[4:] for f in names], boundary) as m:
            self.assertTrue(m.start())
            os.kill(m._pid, signal.SIGTERM)
            os.kill(m._pid, signal.SIGINT)
            time.sleep(0.03)
            self.assertEqual(os.waitpid(m._pid, os.WNOHANG), (0, 0))  # still working
            sizes = list(m.finish())
            with open(marks, "a") as f:  # a helper that returned would get here too
                f.write("%d\n" % os.getpid())
            if os.getpid() != parent:
                os._exit(0)
        self.assertEqual(sizes, [wire.wire_size([files[f]]) for f in names])
        with open(marks) as f:
            self.assertEqual(f.read(), "%d\n" % parent)

    def test_no_fork_for_short_lists_or_when_refused(self) -> None:
        files = self.fill(20)
        names = self.names(files)
        expected = [wire.wire_size([files[f]]) for f in names]

        def refused() -> int:
            raise OSError(11, "Resource temporarily unavailable")

        self.patch(os, "fork", refused)
        self.assertEqual(self.measure(names, expect_helper=False), expected)
        self.patch(mm, "FORK_MIN", 1000)
        self.patch(os, "fork", lambda: self.fail("forked for a short list"))
        self.assertEqual(self.measure(names, expect_helper=False), expected)

    def test_symlinked_directory_is_refused(self) -> None:
        os.rmdir(os.path.join(self.path, "cur"))
        os.symlink(os.path.join(self.path, "tmp"), os.path.join(self.path, "cur"))
        self.assertRaises(OSError, mm.Measurement, self.path, ["x"], 0)
        # new/ was opened first and is closed again (no descriptor leak).
        before = len(os.listdir("/proc/self/fd"))
        self.assertRaises(OSError, mm.Measurement, self.path, ["x", "y"], 1)
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)


class HostileFileTests(unittest.TestCase):
    """What a local user can plant in cur/ or new/ (audit F9): a FIFO, a socket, a huge sparse
    file. None blocks or stalls the measurement; none that holds no message is listed."""

    timeout = 30

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(self.path, sub))
        self.patch(mm, "FORK_MIN", 8)
        self.patch(mm, "CHUNK", 3)

    def plant(self, count: int) -> List[str]:
        """``count`` plain messages, then a FIFO, a FIFO with a writer, a socket, a sparse file
        larger than MAX_MEASURED (all in cur/); their names."""
        names = []
        for i in range(count):
            names.append("17000000%02d.M%06dP1.host" % (i, i))
            with open(os.path.join(self.path, "cur", names[-1]), "wb") as f:
                f.write(b"message %d\n" % i)
        cur = os.path.join(self.path, "cur")
        os.mkfifo(os.path.join(cur, "1800000000.fifo"))
        os.mkfifo(os.path.join(cur, "1800000001.fifo-with-writer"))
        reader = os.open(os.path.join(cur, "1800000001.fifo-with-writer"), os.O_RDONLY | os.O_NONBLOCK)
        writer = os.open(os.path.join(cur, "1800000001.fifo-with-writer"), os.O_WRONLY)
        self.addCleanup(os.close, reader)
        self.addCleanup(os.close, writer)
        sock = socket.socket(socket.AF_UNIX)
        self.addCleanup(sock.close)
        here = os.getcwd()
        os.chdir(cur)  # (a socket's path must be short)
        try:
            sock.bind("1800000002.socket")
        finally:
            os.chdir(here)
        with open(os.path.join(cur, "1800000003.sparse"), "wb") as f:
            f.truncate(mm.MAX_MEASURED + 1)
        return names + ["1800000000.fifo", "1800000001.fifo-with-writer", "1800000002.socket",
                        "1800000003.sparse"]

    def measure(self, names: List[str], expect_helper: bool) -> List[int]:
        with mm.Measurement(self.path, names, 0) as m:
            self.assertEqual(m.start(), expect_helper)
            return list(m.finish())

    def test_special_files_are_no_messages_and_sparse_ones_are_not_read(self) -> None:
        names = self.plant(20)
        for listed, helper in ((names, True), (names[:2] + names[20:], False)):
            sizes = self.measure(listed, helper)
            self.assertEqual(sizes[-4:], [mm.VANISHED, mm.VANISHED, mm.VANISHED, mm.TOO_LARGE])
            self.assertEqual(sizes[:-4], [len(b"message %d\r\n" % i) for i in range(len(listed) - 4)])
        cur = os.open(os.path.join(self.path, "cur"), mm.DIR_FLAGS)
        self.addCleanup(os.close, cur)
        self.assertEqual([mm.measure(cur, name) for name in names[-4:]],
                         [mm.VANISHED, mm.VANISHED, mm.VANISHED, mm.TOO_LARGE])

    def test_sparse_files_beyond_the_budget_wait_for_a_later_scan(self) -> None:
        names = []
        for i in range(3):
            names.append("17000000%02d.big" % i)
            with open(os.path.join(self.path, "cur", names[-1]), "wb") as f:
                f.write(b"x" * mm.SMALL_READ)
                f.truncate(8 * mm.SMALL_READ)  # the rest a hole: far fewer blocks than octets
        self.patch(mm, "MEASURE_BUDGET", 17 * mm.SMALL_READ)  # two of them
        sizes = self.measure(names, expect_helper=False)
        self.assertEqual(sizes, [8 * mm.SMALL_READ + 2, 8 * mm.SMALL_READ + 2, mm.TOO_LARGE])

    def test_real_messages_are_measured_exactly_whatever_the_budget(self) -> None:
        # LIST must be the octets RETR sends: a large message with its blocks on disk is never
        # listed with an approximate size.
        names = []
        for i in range(3):
            names.append("17000000%02d.big" % i)
            with open(os.path.join(self.path, "cur", names[-1]), "wb") as f:
                f.write(b"line\n" * (mm.SMALL_READ // 2))
        self.patch(mm, "MEASURE_BUDGET", mm.SMALL_READ)
        self.patch(mm, "MAX_MEASURED", mm.SMALL_READ)
        sizes = self.measure(names, expect_helper=False)
        self.assertEqual(sizes, [6 * (mm.SMALL_READ // 2)] * 3)
