"""mbox locks: the session lock (ours, for a whole POP3 session) and the MTA-facing write lock.

* Session lock: ``flock`` on ``.NAME.pop3ng-lock`` beside the mbox, held from login to logout.
  Only pop3ng sessions take it, so a second session gets ``[IN-USE]`` at once (in this process
  too: flock belongs to the open file, not the process) and it dies with its process. It never
  blocks delivery.
* Write lock, taken only for moments (the scan at login, the rewrite at UPDATE, an append): a
  dotlock ``NAME.lock`` and then an ``fcntl`` lock on the mbox -- the order Exim's appendfile,
  Postfix's local (``mbox_open``: dot_lockfile, then deliver_flock), procmail and Dovecot
  (``mbox_write_locks = dotlock fcntl``) use. Both are tried without waiting; when the second
  is busy the first is given back before trying again, so an agent taking them in the other
  order (Debian Policy 11.6 allows "fcntl first, then dotlock") cannot deadlock with us.
* The dotlock is made as liblockfile makes it: a unique file written with our pid, ``link``ed
  to ``NAME.lock``, success judged by the link count (NFS-safe). A lock whose pid is dead on
  this host, or older than :data:`STALE_AFTER` seconds (liblockfile's 5 minutes), is stale and
  removed. A holder refreshes its mtime while it works (:meth:`DotLock.touch`).
* The fcntl lock is an open-file-description lock (``F_OFD_SETLK``, Linux) where available: it
  conflicts with the MTAs' classic ``fcntl``/``lockf`` locks, but, unlike them, is not dropped
  when this process closes some other descriptor of the mbox, and it excludes other threads.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct
import time
from typing import Optional

from twisted_pop3ng.errors import MailboxInUse, PermanentFailure, TemporaryFailure

STALE_AFTER = 300.0
#: How long a write lock is tried before the operation fails with -ERR [SYS/TEMP] (a delivering
#: MTA holds it for as long as it writes one message).
DEFAULT_TIMEOUT = 30.0
_HOSTNAME = socket.gethostname()
_OFD = getattr(fcntl, "F_OFD_SETLK", None)


def hidden_name(path: str, suffix: str) -> str:
    """``DIR/.NAME.SUFFIX`` for the mbox ``DIR/NAME``: our files beside it."""
    directory, name = os.path.split(path)
    return os.path.join(directory, ".%s.%s" % (name, suffix))


def _check_own_file(fd: int) -> None:
    """Refuse a lock file that is a link or not a regular file (a planted one, audit F17)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise PermanentFailure("Unsafe maildrop lock file (a link or not a regular file)")


class SessionLock:
    """An exclusive, non-blocking ``flock`` on ``.NAME.pop3ng-lock`` for one POP3 session."""

    def __init__(self, mbox_path: str) -> None:
        self.path = hidden_name(mbox_path, "pop3ng-lock")
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        try:
            _check_own_file(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise MailboxInUse()
            raise
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class DotLock:
    """``NAME.lock``, made and judged as liblockfile does."""

    def __init__(self, mbox_path: str) -> None:
        self.path = mbox_path + ".lock"
        self.held = False
        self._touched = 0.0

    def try_acquire(self) -> bool:
        """Take the dotlock if it is free (removing a stale one); never waits."""
        directory = os.path.dirname(self.path) or "."
        tmp = os.path.join(directory, ".lk%d.%s.%s" % (os.getpid(), _HOSTNAME, os.urandom(4).hex()))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, b"%d\n" % os.getpid())
        finally:
            os.close(fd)
        try:
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            # The link count, not link()'s answer, says whether we made it (NFS may answer EEXIST
            # for a link that succeeded).
            if os.lstat(tmp).st_nlink == 2:
                self.held = True
                self._touched = time.monotonic()
                return True
        finally:
            os.unlink(tmp)
        self._remove_if_stale()
        return False

    def _remove_if_stale(self) -> None:
        try:
            st = os.lstat(self.path)
            with open(self.path, "rb") as f:
                content = f.read(64)
        except OSError:
            return
        pid = int(content.split()[0]) if content.split() and content.split()[0].isdigit() else 0
        if pid > 0 and pid != os.getpid():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return self._remove(st)
            except PermissionError:
                pass  # alive, someone else's
        if time.time() - st.st_mtime > STALE_AFTER:
            self._remove(st)

    def _remove(self, seen: os.stat_result) -> None:
        """Remove the lock judged stale, unless it was replaced meanwhile by a live holder's."""
        try:
            st = os.lstat(self.path)
            if (st.st_ino, st.st_mtime) == (seen.st_ino, seen.st_mtime):
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def touch(self) -> None:
        """Refresh the lock's mtime (at most every few seconds) so nobody takes it for stale."""
        now = time.monotonic()
        if self.held and now - self._touched > 10.0:
            self._touched = now
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _fcntl_lock(fd: int, lock_type: int) -> None:
    """A whole-file fcntl lock (``l_start`` 0, ``l_len`` 0), never waiting."""
    if _OFD is not None:
        # struct flock: l_type, l_whence (shorts), l_start, l_len (off_t), l_pid (int, 0 for OFD)
        fcntl.fcntl(fd, _OFD, struct.pack("@hhqqi4x", lock_type, os.SEEK_SET, 0, 0, 0))
    else:
        fcntl.lockf(fd, (fcntl.LOCK_EX if lock_type == fcntl.F_WRLCK else fcntl.LOCK_UN) | fcntl.LOCK_NB)


class WriteLock:
    """The dotlock, then fcntl on the open mbox ``fd``; :meth:`acquire` retries, never deadlocks."""

    def __init__(self, mbox_path: str, fd: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.dotlock = DotLock(mbox_path)
        self.fd = fd
        self.timeout = timeout
        self._fcntl_held = False

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                if self.dotlock.try_acquire():
                    try:
                        _fcntl_lock(self.fd, fcntl.F_WRLCK)
                        self._fcntl_held = True
                        return
                    except OSError as error:
                        if error.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                        self.dotlock.release()  # busy: give the first lock back (no deadlock)
            except PermissionError:
                raise PermanentFailure("Cannot create the mbox dotlock (no write access to its directory)")
            if time.monotonic() >= deadline:
                raise TemporaryFailure("Mailbox is locked by another program, try again later")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def touch(self) -> None:
        self.dotlock.touch()

    def release(self) -> None:
        if self._fcntl_held:
            self._fcntl_held = False
            try:
                _fcntl_lock(self.fd, fcntl.F_UNLCK)
            except OSError:
                pass
        self.dotlock.release()

    def __enter__(self) -> "WriteLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
