"""Maildir delivery: how a delivered file is named and how it is made durable.

Rules of this module: standard library and :mod:`twisted_pop3ng._fs` only -- a core leaf, so the
maildir store (:func:`twisted_pop3ng.mailbox.maildir.deliver`) and ``pop3ng fetch``
(:class:`twisted_pop3ng.fetch.delivery.MaildirDestination`) deliver the same way without importing
each other. A message is written to a new ``tmp/NAME`` (never through a symlink or a hard
link someone planted there), fsynced, renamed into
``new/NAME``, and ``new/`` is fsynced once per batch of renames.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from typing import Iterable, Optional

from twisted_pop3ng._fs import fsync_directory

__all__ = ["SUBDIRS", "KEYED_PREFIX", "base_name", "make_maildir", "unique_name", "keyed_name",
           "TmpFile", "publish", "deliver"]

SUBDIRS = ("cur", "new", "tmp")
#: The start of every :func:`keyed_name`: what ``pop3ng fetch`` looks for after a crash.
KEYED_PREFIX = "pop3ng-"


def base_name(filename: str) -> str:
    """A message file's name without its ``:2,FLAGS`` info: what stays the same from new/ to cur/."""
    return filename.partition(":")[0]


def make_maildir(path: str) -> None:
    """Create ``cur/``, ``new/`` and ``tmp/`` (mode 0700) where they are missing."""
    for sub in SUBDIRS:
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)


def _host() -> str:
    # A "/" would make a path and a ":" would start the flags (the Maildir convention escapes both).
    return socket.gethostname().replace("/", "_").replace(":", "_")


def unique_name(now: Optional[float] = None) -> str:
    """A standard Maildir name, ``TIME.M<usec>P<pid>Q<random>.<host>``: unique, and in delivery
    order for the store's ordering of standard names."""
    now = time.time() if now is None else now
    return "%d.M%06dP%dQ%s.%s" % (int(now), int(now * 1e6) % 1000000, os.getpid(),
                                  os.urandom(4).hex(), _host())


def keyed_name(key: str) -> str:
    """A name fixed by ``key`` (``pop3ng-`` and 40 hex digits of its SHA-256): delivering the same
    key again gives the same name, which is how ``pop3ng fetch`` recognises after a crash what
    already reached new/. Changing it would make such messages unrecognisable: it stays."""
    return KEYED_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


class TmpFile:
    """One message being written to ``tmp/NAME`` with raw ``os.write`` calls (no extra
    buffering); :meth:`sync` makes it durable, :func:`publish` moves it into new/."""

    def __init__(self, maildir: str, name: str, mode: int = 0o600) -> None:
        self.name = name
        self.path = os.path.join(maildir, "tmp", name)
        self.mode = mode
        self._fd: Optional[int] = None

    def open(self) -> int:
        """The file's descriptor, created new on first use (a file a killed run left under the
        name is removed first)."""
        if self._fd is None:
            # O_EXCL, never O_TRUNC: a symlink or a hard link planted in tmp/ under a predictable
            # name (``pop3ng fetch``'s keyed names) must not make root truncate the file it
            # points to (audit F17). Unlinking a name never touches the file behind it.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            try:
                self._fd = os.open(self.path, flags, self.mode)
            except FileExistsError:
                os.unlink(self.path)
                self._fd = os.open(self.path, flags, self.mode)
        return self._fd

    def write(self, data: bytes) -> None:
        fd = self.open()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def sync(self) -> None:
        """fsync and close (an empty message is created first)."""
        fd = self.open()
        self._fd = None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        """Close and remove the file; nothing of it stays in tmp/."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self.path)
        except OSError:
            pass


def publish(maildir: str, names: Iterable[str]) -> None:
    """Rename each synced ``tmp/NAME`` to ``new/NAME``, then fsync ``new/`` once for them all."""
    new = os.path.join(maildir, "new")
    moved = False
    for name in names:
        os.rename(os.path.join(maildir, "tmp", name), os.path.join(new, name))
        moved = True
    if moved:
        fsync_directory(new)


def deliver(maildir: str, message: bytes, name: Optional[str] = None, mode: int = 0o666) -> str:
    """Deliver one message durably (tmp, fsync, rename into new/); returns its file name
    (``name``, or a :func:`unique_name`). The directories are created when missing. ``mode`` is
    that of ``open()`` (the umask applies), so that a mail server running as another user (a
    Dovecot ``mail_uid``) can still read what an administrator delivered."""
    make_maildir(maildir)
    if name is None:
        name = unique_name()
    tmp = TmpFile(maildir, name, mode)
    try:
        tmp.write(message)
        tmp.sync()
    except BaseException:
        tmp.abort()
        raise
    publish(maildir, [name])
    return name
