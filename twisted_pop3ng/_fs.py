"""Durable file writes: the one copy of "write, fsync, rename, fsync the directory".

Rules of this module: standard library only; used by the maildir store and the fetcher alike, so
neither imports the other for it.
"""

from __future__ import annotations

import os


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    # O_NOFOLLOW: in a user-writable maildir, a planted symlink must not make root truncate a file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(os.path.dirname(path) or ".")


__all__ = ["fsync_directory", "write_atomically"]
