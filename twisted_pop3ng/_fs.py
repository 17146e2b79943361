"""Durable file writes: the one copy of "write, fsync, rename, fsync the directory".

Rules of this module: standard library only; used by the maildir store and the fetcher alike, so
neither imports the other for it. A file it creates is created new (``O_EXCL`` on an unpredictable
name): in a directory a local user can write, a planted symlink or hard link must never make a
server running as root truncate or overwrite a file elsewhere (audit F17).
"""

from __future__ import annotations

import os


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: How a temporary file is created: a new file, never an existing one, a symlink or a hard link
#: (O_EXCL fails on any existing name, a symlink included).
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def create_temporary(path: str, mode: int = 0o600) -> "tuple[str, int]":
    """A new file next to ``path`` (``PATH.tmp.PID.RANDOM``) and its descriptor, open for writing.

    The name is unpredictable and the file new (``O_EXCL``): a link planted under the name of the
    last run's temporary file (the pid alone was predictable) is never written through."""
    while True:
        tmp = "%s.tmp.%d.%s" % (path, os.getpid(), os.urandom(6).hex())
        try:
            return tmp, os.open(tmp, _CREATE_FLAGS, mode)
        except FileExistsError:
            continue  # (2**48 names: only a planted file collides; take another)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    tmp, fd = create_temporary(path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_directory(os.path.dirname(path) or ".")


__all__ = ["fsync_directory", "create_temporary", "write_atomically"]
