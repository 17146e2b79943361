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


# -- one system call for a path without symlinks --------------------------------------------------
#
# Linux's openat2(2) with RESOLVE_NO_SYMLINKS opens a path in one call and fails with ELOOP if any
# component is a symlink: what a walk of one O_NOFOLLOW open per component (and a close for each
# parent) makes sure of, at a fifth of the calls (a maildir is opened so on every login). Python
# has no binding for it (3.11), so it is called through ctypes, on the architectures whose syscall
# table gives it the generic number; anywhere else, or where the kernel or a seccomp filter refuses
# it, :func:`open_dir_no_symlinks` says so and the caller walks.

#: The generic syscall number of openat2 (Linux 5.6), the same on these architectures.
_OPENAT2 = 437
_OPENAT2_MACHINES = frozenset({"x86_64", "aarch64", "i686", "i386", "armv7l", "armv8l", "riscv64",
                               "ppc64le", "s390x", "loongarch64"})
_RESOLVE_NO_SYMLINKS = 0x04
_AT_FDCWD = -100
#: ``(syscall, how, address of how, size of how, get_errno)`` once probed and usable (``how`` kept
#: alive with its address); False when unusable; None before the probe.
_openat2: "tuple | bool | None" = None


def _probe_openat2() -> "tuple | bool":
    import ctypes
    import platform
    import sys

    if sys.platform != "linux" or platform.machine() not in _OPENAT2_MACHINES:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return False
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    how = OpenHow(os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, _RESOLVE_NO_SYMLINKS)
    found = (syscall, how, ctypes.addressof(how), ctypes.sizeof(how), ctypes.get_errno)
    fd = syscall(_OPENAT2, _AT_FDCWD, b"/", found[2], found[3])
    if fd < 0:
        return False  # ENOSYS (before 5.6), EPERM (a seccomp filter), ...
    os.close(fd)
    return found


def open_dir_no_symlinks(path: str, dir_fd: "int | None" = None) -> "int | None":
    """A descriptor (close-on-exec) of the directory ``path``, relative to ``dir_fd`` when given,
    reached through no symlink at all; None when this system cannot do it in one call (the caller
    then walks the path itself). Raises OSError as ``os.open`` would: ELOOP when a component is a
    symlink, ENOENT, ENOTDIR, EACCES..."""
    global _openat2
    found = _openat2
    if found is None:
        found = _openat2 = _probe_openat2()
    if found is False:
        return None
    syscall, _how, address, size, get_errno = found  # type: ignore[misc]
    fd = syscall(_OPENAT2, _AT_FDCWD if dir_fd is None else dir_fd, os.fsencode(path), address, size)
    if fd < 0:
        error = get_errno()
        raise OSError(error, os.strerror(error), path)
    return fd
