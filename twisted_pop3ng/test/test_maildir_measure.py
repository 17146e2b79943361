"""Measuring many maildir files with a forked helper: exact sizes, odd files, a dying helper."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Callable, Dict, List, Set

from twisted.trial import unittest

from twisted_pop3ng import wire
from twisted_pop3ng.mailbox.maildir import measure as mm

#: Messages whose wire size is easy to get wrong: CRLF, bare CR, no final newline, empty, dots,
#: a CR at the very end, and files longer than one read (SMALL_READ).
SAMPLES = [b"", b"a", b"a\n", b"a\r\nb", b"x\r", b"\r", b"\r\n\r\n", b"a\nb\r\nc\rd\n",
           b".dot\n" * 500, b"no final newline\nlast", b"From: x\n\nbody\n",
           b"long" * 40000 + b"\n", b"crlf\r\n" * 20000, b"x" * mm.SMALL_READ,
           b"y" * (mm.SMALL_READ - 1) + b"\r", b"z" * (mm.SMALL_READ - 1) + b"\n" + b"tail"]


def _until(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Whether ``condition`` came true within ``timeout`` seconds (polled; also in the helper)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _pending_signals(pid: int) -> Set[int]:
    """The signals sent to process ``pid`` that wait, blocked, to be delivered (/proc)."""
    with open("/proc/%d/status" % pid) as f:
        mask = [int(line.split()[1], 16) for line in f if line.startswith("ShdPnd:")][0]
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}


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

    def started(self, names: List[str]) -> mm.Measurement:
        """A Measurement of ``names`` whose helper runs (closed when the test ends)."""
        boundary = sum(1 for f in names if f.startswith("new/"))
        m = mm.Measurement(self.path, [f[4:] for f in names], boundary)
        self.addCleanup(m.close)
        self.assertTrue(m.start())
        return m

    def until_claimed(self, m: mm.Measurement, condition: Callable[[memoryview, int], bool], what: str) -> None:
        """Wait until ``condition(shared page, number of names)`` holds (the helper's claims)."""
        view, n = m._view, len(m.names)
        assert view is not None
        self.assertTrue(_until(lambda: condition(view, n)), what)

    def record_here(self, meet: bool = False) -> List[int]:
        """The positions this process measures (the helper's are not recorded). With ``meet``,
        each side waits before its first chunk until the other has claimed one, so that both
        measure, whatever the scheduler does."""
        here: List[int] = []
        parent = os.getpid()
        measure = mm.Measurement._measure

        def recording(m: mm.Measurement, start: int, end: int, out) -> None:  # type: ignore
            view, n = m._view, len(m.names)
            if meet and view is not None:
                if os.getpid() == parent:
                    _until(lambda: view[n] > 0)  # the helper claimed its first chunk
                else:
                    _until(lambda: view[n + 1] < n)  # this process claimed its first chunk
            if os.getpid() == parent:
                here.extend(range(start, end))
            measure(m, start, end, out)

        self.patch(mm.Measurement, "_measure", recording)
        return here

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
        # The helper alone: this process waits until it claimed the whole list, measures nothing.
        here = self.record_here()
        m = self.started(names)
        self.until_claimed(m, lambda view, n: view[n] >= view[n + 1], "the helper never claimed the list")
        self.assertEqual(list(m.finish()), expected)
        self.assertEqual(here, [])
        for data in SAMPLES:
            self.assertEqual(mm.wire_size_of(data), wire.wire_size([data]), data[:20])

    def test_both_sides_measure(self) -> None:
        files = self.fill(60)
        names = self.names(files)
        here = self.record_here(meet=True)
        self.assertEqual(self.measure(names), [wire.wire_size([files[f]]) for f in names])
        self.assertTrue(0 < len(set(here)) < len(names), here)
        self.assertIn(len(names) - 1, here)  # this process from the back

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
        parent = os.getpid()
        here = self.record_here(meet=True)
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
        # This process stopped after its one chunk (from the back); all but that and the helper's
        # first chunk were asked for ahead, front to back.
        self.assertEqual(here, list(range(len(names) - mm.CHUNK, len(names))))
        self.assertEqual(asked_names, names[mm.CHUNK:len(names) - mm.CHUNK])

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
        here = self.record_here()
        m = self.started(names)
        self.until_claimed(m, lambda view, n: view[n] == 2 * mm.CHUNK, "the helper claimed nothing")
        self.assertEqual(list(m.finish()), [wire.wire_size([files[f]]) for f in names])
        # what the helper claimed and never measured was measured here
        self.assertEqual(sorted(set(here)), list(range(len(names))))

    def test_helper_ignores_signals_and_never_returns(self) -> None:
        files = self.fill(30)
        names = self.names(files)
        parent = os.getpid()
        marks = os.path.abspath(self.mktemp())
        release = os.path.abspath(self.mktemp())
        measure = mm.Measurement._measure

        def held(m: mm.Measurement, start: int, end: int, out) -> None:  # type: ignore
            if os.getpid() != parent:
                _until(lambda: os.path.exists(release))  # the helper works once released
            measure(m, start, end, out)

        self.patch(mm.Measurement, "_measure", held)
        boundary = sum(1 for f in names if f.startswith("new/"))
        with mm.Measurement(self.path, [f[4:] for f in names], boundary) as m:
            self.assertTrue(m.start())
            os.kill(m._pid, signal.SIGTERM)
            os.kill(m._pid, signal.SIGINT)
            # Both signals reached the helper and wait there, blocked: it neither died nor ran a
            # handler, and goes on working.
            pid = m._pid
            self.assertTrue(_until(lambda: {signal.SIGTERM, signal.SIGINT} <= _pending_signals(pid), 30),
                            "the signals are not pending in the helper")
            self.assertEqual(os.waitpid(m._pid, os.WNOHANG), (0, 0))  # still working
            with open(release, "w"):
                pass
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
