"""Wire sizes of maildir message files, measured many at a time (the cold scan of a big maildir).

A size is what the client receives (every line ending CRLF, unstuffed), so a file whose name has no
``,W=`` field must be read: open, read, close. At about 5 µs a file on the 2-core test VM that is
most of a cold login on a 100,000-message maildir. One interpreter cannot overlap those calls
(measured: two threads take as long as one, the GIL changes hands at every call), so for long lists
:class:`Measurement` forks a helper process. The helper measures from the front of the list and this
process from the back, each publishing in a shared page how far it got, until they meet; so the
work is shared however much else the caller does meanwhile (:func:`.maildir_index.scan` builds the
snapshot's rows between :meth:`Measurement.start` and :meth:`Measurement.finish`) and however the
CPUs are shared.

Rules:

* files are opened as the rest of the backend opens them: ``new/`` and ``cur/`` with
  ``O_NOFOLLOW``, each file with ``O_NOFOLLOW`` relative to them, so no symlink is ever followed
  (plus ``O_NONBLOCK``: a FIFO planted in a maildir cannot hang the process; and ``O_NOATIME``
  where allowed: measuring is not the user reading, and a cold scan then dirties no inodes);
* a file that vanished meanwhile, or that is no message (a directory, a FIFO, a socket: anything
  but a regular file) is reported as :data:`VANISHED`, one that cannot be read as
  :data:`UNREADABLE`, one too big to read now as :data:`TOO_LARGE`; the caller decides what that
  means. Telling a FIFO from a file costs no ``fstat`` per file: a FIFO reads as empty (no
  writer) or fails with EAGAIN (a writer), a socket fails to open (ENXIO), so only empty reads,
  EAGAIN and reads of :data:`SMALL_READ` octets are checked (a FIFO its writer filled is
  listed, and refused when read: -ERR [SYS/PERM]);
* the bytes read are bounded (audit F9: a sparse terabyte must not stall the server): a file of
  more than :data:`MAX_MEASURED` octets is not read, nor one that would take either process past
  :data:`MEASURE_BUDGET` octets of large files in one scan; those are :data:`TOO_LARGE`, listed
  with their size on disk and measured at a later scan, within its budget;
* the helper only reads files and writes numbers into the shared page. It leaves with
  ``os._exit`` from a ``finally``: it never returns into the caller (a Twisted reactor), runs no
  atexit handler and flushes no inherited buffer; every signal is blocked in it, and it lives only
  while this process waits for it;
* the helper only speeds things up: whatever it did not report (no fork, helper killed) this process
  measures itself, so the result is always that of the serial loop.
"""

from __future__ import annotations

import errno
import mmap
import os
import resource
import signal
import stat
from array import array
from typing import Dict, Iterator, MutableSequence, Optional, Sequence, Tuple, Union

from twisted_pop3ng.wire import SPEEDUPS, wire_size, wire_size_of

#: Reported for a file that vanished since the listing (or is a directory: no message).
VANISHED = -1
#: Reported for a file that exists but cannot be read (permissions, I/O error, a symlink).
UNREADABLE = -2
#: Reported for a file not read because of its size (:data:`MAX_MEASURED`, :data:`MEASURE_BUDGET`).
TOO_LARGE = -4
_UNMEASURED = -3
_UNMEASURED_OCTETS = array("q", [_UNMEASURED]).tobytes()
#: One read measures a message up to this size; larger ones are streamed.
SMALL_READ = 1 << 16
#: A larger file is never read to be measured (about 0.15 s of reading on the 2-core test VM):
#: larger messages are rare, and a sparse file can claim any size without using the disk.
MAX_MEASURED = 64 << 20
#: Octets each process may read from files larger than :data:`SMALL_READ` in one scan (about
#: 0.7 s): many sparse files just under :data:`MAX_MEASURED` must not stall the server either.
MEASURE_BUDGET = 256 << 20
#: Fewer files than this are measured here alone: a fork of a big server costs a few ms.
FORK_MIN = 4096
#: Files claimed at a time by either side (about 1 ms of reading).
CHUNK = 256

#: A chunk during which the reading thread went to sleep this many times (voluntary context
#: switches: a read that waited for the disk; being preempted on a busy CPU does not count) was
#: not in the page cache.
IO_BOUND_WAITS = 8
#: Once its reads wait for the disk, the helper asks the kernel for this many files ahead of its
#: reading (``posix_fadvise(WILLNEED)`` of their first :data:`SMALL_READ` bytes: the reads queue
#: up and the disk serves them back to back instead of one wait per file), then measures them from
#: the page cache. 100,000 uncached 4 KB files on the test VM: 9.4 s one read after another,
#: 3.0 s with 8 reading threads, 1.3-1.4 s asked for ahead.
PREFETCH = 4096
_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
_FADVISE = getattr(os, "posix_fadvise", None)
_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", 0)

FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
#: Reading a message to measure it is not the user reading it: no atime update (allowed to the
#: file's owner and to root; dropped at the first file where it is refused).
NOATIME = getattr(os, "O_NOATIME", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _waits() -> int:
    """Voluntary context switches of the calling thread so far (0 where unknown)."""
    try:
        return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw
    except (OSError, ValueError):
        return 0


def _stream_size(fd: int, first: bytes, limit: int) -> int:
    """The wire size of the file whose first octets are ``first``, read on to its end, or
    :data:`TOO_LARGE` once more than ``limit`` octets were read (it grows while read)."""
    total = len(first)

    def chunks() -> Iterator[bytes]:
        nonlocal total
        yield first
        while total <= limit:
            data = os.read(fd, 1 << 20)
            if not data:
                return
            total += len(data)
            yield data

    size = wire_size(chunks())
    return TOO_LARGE if total > limit else size


def _checked_size(fd: int, first: bytes, budget: int) -> Tuple[int, int]:
    """For a read that came back empty or full (:data:`SMALL_READ`): ``(size, cost)``, where
    ``size`` is the file's wire size, :data:`VANISHED` for anything but a regular file, or
    :data:`TOO_LARGE`, and ``cost`` the octets it takes from the scan's ``budget``."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return VANISHED, 0  # a FIFO or a socket: no message
    if not first:
        return 0, 0
    # LIST must give the exact wire size, so a real message is always read to its end, however
    # large. Only a sparse file -- far fewer blocks on disk than its length, which no delivered
    # message is, and which reads as zeros at memory speed -- is bounded.
    if st.st_blocks * 512 >= st.st_size // 2:
        return _stream_size(fd, first, max(2 * st.st_size, MAX_MEASURED)), st.st_size
    if st.st_size > MAX_MEASURED or st.st_size > budget:
        return TOO_LARGE, 0
    return _stream_size(fd, first, min(MAX_MEASURED, budget)), st.st_size


def measure(dir_fd: int, name: str) -> int:
    """Wire size of one message, opened relative to ``dir_fd`` (:data:`VANISHED` for anything but a
    regular file, :data:`TOO_LARGE` above :data:`MAX_MEASURED`); raises ``OSError`` as ``open``
    and ``read`` do (``FileNotFoundError`` when it vanished, ``IsADirectoryError`` for a
    directory)."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ENXIO:
            return VANISHED  # (a socket)
        raise
    try:
        try:
            data = os.read(fd, SMALL_READ)
        except BlockingIOError:
            return VANISHED  # (a FIFO with a writer)
        if len(data) == SMALL_READ or not data:
            return _checked_size(fd, data, MAX_MEASURED)[0]
    finally:
        os.close(fd)
    return wire_size_of(data)


class Measurement:
    """The wire sizes of ``names``: those before position ``boundary`` are in ``path/new``, the
    others in ``path/cur``. Use as a context manager: ``start``, other work, ``finish``."""

    def __init__(self, path: str, names: Sequence[str], boundary: int) -> None:
        self.names = names
        self.boundary = boundary
        self._flags = FILE_FLAGS | NOATIME
        #: Octets this process may still read from large files (the helper has its own).
        self._budget = MEASURE_BUDGET
        self._pid = 0
        self._page: Optional[mmap.mmap] = None
        self._view: Optional[memoryview] = None
        self._fds: Dict[str, int] = {}
        # Opened here, so a new/ or cur/ swapped for a symlink fails the scan (ELOOP).
        try:
            if boundary > 0:
                self._fds["new"] = os.open(os.path.join(path, "new"), DIR_FLAGS)
            if boundary < len(names):
                self._fds["cur"] = os.open(os.path.join(path, "cur"), DIR_FLAGS)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Measurement":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the two sides ----------------------------------------------------------------------------

    def start(self) -> bool:
        """Fork the helper when the list is long enough; True when it runs."""
        n = len(self.names)
        if n < FORK_MIN or not hasattr(os, "fork") or self._view is not None:
            return False
        # Sizes, then the helper's next position (it has claimed [0, front)), then this process's
        # lowest claimed position (it has claimed [back, n)).
        page = mmap.mmap(-1, 8 * (n + 2))  # anonymous and MAP_SHARED: the helper writes here
        page[:] = (array("q", [_UNMEASURED]) * n + array("q", [0, n])).tobytes()
        self._page, self._view = page, memoryview(page).cast("q")
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        pid = -1
        try:
            pid = os.fork()
            if pid == 0:
                self._helper()  # never returns
        except OSError:
            pid = -1  # no helper (EAGAIN, ENOMEM): this process measures everything
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._pid = max(pid, 0)
        return self._pid > 0

    def _helper(self) -> None:
        status = 1
        try:
            self._take(front=True)
            status = 0
        finally:
            os._exit(status)

    def finish(self) -> "array[int]":
        """One number per name: its wire size, :data:`VANISHED` or :data:`UNREADABLE`."""
        n = len(self.names)
        if self._page is None or not self._pid:
            sizes = array("q", [_UNMEASURED]) * n
            self._measure(0, n, sizes)
            return sizes
        self._take(front=False)
        self._wait()
        sizes = array("q")
        sizes.frombytes(self._page[:8 * n])
        # A search of the octets for the marker (a false match only costs the loop below), not
        # an int made per size.
        if self._page.find(_UNMEASURED_OCTETS, 0, 8 * n) >= 0:  # the helper died: measure what it left
            for i, size in enumerate(sizes):
                if size == _UNMEASURED:
                    self._measure(i, i + 1, sizes)
        return sizes

    def _take(self, front: bool) -> None:
        """Claim and measure chunks from one end until the two sides meet. A chunk claimed by
        both at the same moment is measured twice, which is harmless.

        Each chunk is watched: one whose reads kept waiting for the disk (the files are not in the
        page cache) makes the helper go on asking the kernel for the files ahead of it
        (:meth:`_prefetch`), and this process leave the rest to the helper (waiting for the disk
        in the Twisted server would only slow its reactor down)."""
        view = self._view
        assert view is not None
        n = len(self.names)
        waiting = False  # (the helper) its reads wait for the disk
        asked = 0  # (the helper, once waiting) files before this position were asked for
        while True:
            if front:
                start = view[n]
                end = min(start + CHUNK, view[n + 1])
                if start >= end:
                    return
                view[n] = end
            else:
                end = view[n + 1]
                start = max(end - CHUNK, view[n])
                if start >= end:
                    return
                view[n + 1] = start
            if waiting:
                if end > asked:
                    asked = self._prefetch(max(start, asked), view[n + 1])
                self._measure(start, end, view)
                continue
            waits = _waits()
            self._measure(start, end, view)
            if _waits() - waits >= IO_BOUND_WAITS:
                if not front or _FADVISE is None:
                    return  # (this process: the helper takes the rest; finish() waits)
                waiting = True

    def _prefetch(self, start: int, end: int) -> int:
        """Ask the kernel to read the first :data:`SMALL_READ` bytes of ``names[start:end]``, at
        most :data:`PREFETCH` of them, into the page cache without waiting; returns the position
        after the last one asked for. A file that cannot be opened is left to :meth:`_measure`."""
        assert _FADVISE is not None
        end = min(end, start + PREFETCH)
        flags = self._flags
        open_, close = os.open, os.close
        for lo, hi, dir_fd in self._segments(start, end):
            for name in self.names[lo:hi]:
                try:
                    fd = open_(name, flags, dir_fd=dir_fd)
                except OSError:
                    continue
                try:
                    _FADVISE(fd, 0, SMALL_READ, _WILLNEED)
                except OSError:
                    pass  # (a FIFO: ESPIPE)
                finally:
                    close(fd)
        return end

    def _segments(self, start: int, end: int) -> Iterator[Tuple[int, int, int]]:
        """``(lo, hi, dir_fd)``: the parts of ``[start, end)`` in ``new/`` and in ``cur/``."""
        boundary = self.boundary
        if start < boundary:
            yield start, min(end, boundary), self._fds["new"]
        if end > boundary:
            yield max(start, boundary), end, self._fds["cur"]

    def _measure(self, start: int, end: int, out: Union[MutableSequence[int], memoryview]) -> None:
        """Measure ``names[start:end]`` into ``out`` (the loop of :func:`measure`, inlined)."""
        for lo, hi, dir_fd in self._segments(start, end):
            self._measure_in(dir_fd, lo, hi, out)

    def _measure_in(self, dir_fd: int, start: int, end: int,
                    out: Union[MutableSequence[int], memoryview]) -> None:
        names = self.names
        flags = self._flags
        open_, read, close = os.open, os.read, os.close
        fast = SPEEDUPS  # wire_size_of in C: counts without a copy (0.19 against 0.58 us for 2 KB)
        for i in range(start, end):
            try:
                fd = open_(names[i], flags, dir_fd=dir_fd)
                try:
                    data = read(fd, SMALL_READ)
                    if len(data) == SMALL_READ or not data:  # big, empty, or a FIFO: fstat
                        out[i], cost = _checked_size(fd, data, self._budget)
                        self._budget -= cost
                        continue
                finally:
                    close(fd)
            except (FileNotFoundError, IsADirectoryError, BlockingIOError):
                out[i] = VANISHED  # (EAGAIN: a FIFO with a writer; no message)
                continue
            except OSError as error:
                if error.errno == errno.ENXIO:  # a socket (or a device without its driver)
                    out[i] = VANISHED
                    continue
                if isinstance(error, PermissionError) and flags & NOATIME:
                    flags = self._flags = flags & ~NOATIME  # not the owner: read as usual
                    self._measure_in(dir_fd, i, i + 1, out)
                else:
                    out[i] = UNREADABLE
                continue
            if fast or 0x0D in data:  # (an int operand: memchr, 5x faster than b"\r")
                out[i] = wire_size_of(data)
            else:  # pure Python, LF-only: a replace is cheaper than wire_size_of's checks
                out[i] = len(data.replace(b"\n", b"\r\n")) + (0 if data[-1] == 0x0A else 2)

    def size_on_disk(self, i: int) -> Optional[int]:
        """``st_size`` of ``names[i]`` (not following a symlink), or None when it is gone."""
        dir_fd = self._fds["new" if i < self.boundary else "cur"]
        try:
            return os.stat(self.names[i], dir_fd=dir_fd, follow_symlinks=False).st_size
        except OSError:
            return None

    # -- cleaning up ------------------------------------------------------------------------------

    def _wait(self) -> None:
        pid, self._pid = self._pid, 0
        if pid:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass  # reaped elsewhere (SIGCHLD ignored): what it reported is in the page

    def close(self) -> None:
        """Stop the helper if it still runs (an exception in the caller), release everything."""
        if self._pid:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait()
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._page is not None:
            self._page.close()
            self._page = None
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
