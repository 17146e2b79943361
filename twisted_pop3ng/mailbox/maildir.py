"""Maildir backend (new/ cur/ tmp/), with an exclusive lock and a crash-safe size index.

* UIDL: the message's maildir *base name* (the part before ``:2,``), which Maildir makes unique
  forever and which survives the new/ -> cur/ move and flag changes; a base name that is not a valid
  UIDL (longer than 70 characters, or with characters outside 0x21-0x7E) is replaced by a digest of it.
  Because the UIDL is derived from the name, losing the index never changes a UIDL.
* Size: the wire size (CRLF line endings). Taken from a ``,W=`` field in the name when present;
  otherwise computed once by reading the file and remembered in ``pop3ng-index`` (written with
  tmp + fsync + rename, rebuilt when missing or corrupt).
* Order: message numbers follow the base names' order (delivery time for standard names).
* Lock: ``pop3ng.lock`` held with ``flock`` for the session. The kernel drops it when the process
  dies, so a crashed server leaves no stale lock; on NFS, Linux maps flock to POSIX locks, so the lock
  also holds across hosts.
* Commit: unlink each deleted message (following a rename by another agent), then fsync the
  directories. Nothing is touched before commit.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple

from zope.interface import implementer

from ..errors import MailboxInUse, MessageVanished, POP3Error
from ..interfaces import IMailbox, IMailboxStore, IMaildropLock, MessageInfo
from ..wire import is_valid_uid, wire_size
from . import safe_username

INDEX_NAME = "pop3ng-index"
LOCK_NAME = "pop3ng.lock"
INDEX_HEADER = "pop3ng-index 1"
_W_FIELD = re.compile(r",W=(\d+)")
READ_SIZE = 1 << 20


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(os.path.dirname(path) or ".")


def base_name(filename: str) -> str:
    return filename.split(":", 1)[0]


def uid_for(base: str) -> str:
    if is_valid_uid(base) and base.isascii():
        return base
    return "h" + hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:40]


@implementer(IMaildropLock)
class MaildirLock:
    """An exclusive, non-blocking ``flock`` on ``<maildir>/pop3ng.lock``."""

    def __init__(self, maildir: str) -> None:
        self.path = os.path.join(maildir, LOCK_NAME)
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MailboxInUse()
            raise
        os.ftruncate(fd, 0)
        os.write(fd, ("%d@%s\n" % (os.getpid(), socket.gethostname())).encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@dataclass
class _Entry:
    base: str
    filename: str  # "new/…" or "cur/…", relative to the maildir
    uid: str
    size: int


@implementer(IMailboxStore)
class MaildirStore:
    """Maildrops at ``template.format(user=…)``; created (0700) on first login when missing."""

    def __init__(self, template: str, create: bool = True) -> None:
        if "{user}" not in template:
            raise ValueError("the maildir template needs a {user} placeholder, e.g. /var/mail/{user}/Maildir")
        self.template = template
        self.create = create

    def path_for(self, user: str) -> str:
        return self.template.replace("{user}", safe_username(user))

    def open_mailbox(self, user: str) -> "MaildirMailbox":
        path = self.path_for(user)
        if self.create:
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
        elif not os.path.isdir(os.path.join(path, "cur")):
            raise POP3Error("Mailbox does not exist", "SYS/PERM")
        lock = MaildirLock(path)
        lock.acquire()
        try:
            return MaildirMailbox(path, lock)
        except BaseException:
            lock.release()
            raise


@implementer(IMailbox)
class MaildirMailbox:
    """A locked maildir and the snapshot taken when it was opened."""

    def __init__(self, path: str, lock: Optional[MaildirLock] = None) -> None:
        self.path = path
        self.lock = lock
        self.entries: List[_Entry] = self._scan()

    # -- snapshot ---------------------------------------------------------------------------------

    def _list_files(self) -> Dict[str, str]:
        """base name -> "new/name" or "cur/name" for every message file."""
        found: Dict[str, str] = {}
        for sub in ("new", "cur"):
            with os.scandir(os.path.join(self.path, sub)) as it:
                for entry in it:
                    if entry.name.startswith(".") or entry.is_dir():
                        continue
                    found[base_name(entry.name)] = sub + "/" + entry.name
        return found

    def _load_index(self) -> Dict[str, int]:
        try:
            with open(os.path.join(self.path, INDEX_NAME), "r", encoding="utf-8",
                      errors="surrogateescape") as f:
                if f.readline().rstrip("\n") != INDEX_HEADER:
                    return {}
                sizes = {}
                for line in f:
                    size, _, base = line.rstrip("\n").partition(" ")
                    sizes[base] = int(size)
                return sizes
        except (OSError, ValueError):
            return {}

    def _save_index(self, sizes: Dict[str, int]) -> None:
        lines = [INDEX_HEADER] + ["%d %s" % (size, base) for base, size in sizes.items()]
        data = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
        try:
            write_atomically(os.path.join(self.path, INDEX_NAME), data)
        except OSError:
            pass  # only a cache: the sizes are computed again next time

    def _measure(self, filename: str) -> int:
        with open(os.path.join(self.path, filename), "rb", buffering=0) as f:
            return wire_size(iter(lambda: f.read(READ_SIZE), b""))

    def _scan(self) -> List[_Entry]:
        files = self._list_files()
        cached = self._load_index()
        sizes: Dict[str, int] = {}
        changed = False
        entries = []
        for base in sorted(files):
            filename = files[base]
            match = _W_FIELD.search(base)
            if match:
                size = int(match.group(1))
            elif base in cached:
                size = sizes[base] = cached[base]
            else:
                try:
                    size = sizes[base] = self._measure(filename)
                except FileNotFoundError:
                    continue  # moved or deleted meanwhile: next session will see it
                except OSError:
                    # Unreadable (permissions): one bad file must not lock the user out of the
                    # rest; list it with its size on disk (not remembered), RETR answers -ERR.
                    try:
                        size = os.stat(os.path.join(self.path, filename)).st_size
                    except OSError:
                        continue
                changed = True
            entries.append(_Entry(base, filename, uid_for(base), size))
        if changed or len(sizes) != len(cached):
            self._save_index(sizes)
        return entries

    # -- IMailbox ---------------------------------------------------------------------------------

    def list_messages(self) -> List[MessageInfo]:
        return [MessageInfo(e.uid, e.size) for e in self.entries]

    def _locate(self, entry: _Entry) -> Optional[str]:
        """Find a message again after another agent renamed it (flags, new/ -> cur/)."""
        for sub in ("cur", "new"):
            try:
                names = os.listdir(os.path.join(self.path, sub))
            except FileNotFoundError:
                continue
            for name in names:
                if name == entry.base or name.startswith(entry.base + ":"):
                    entry.filename = sub + "/" + name
                    return entry.filename
        return None

    def open_message(self, index: int) -> BinaryIO:
        entry = self.entries[index]
        try:
            return open(os.path.join(self.path, entry.filename), "rb", buffering=0)
        except FileNotFoundError:
            if self._locate(entry) is None:
                raise MessageVanished()
            return open(os.path.join(self.path, entry.filename), "rb", buffering=0)

    def commit(self, deleted: Sequence[int]) -> None:
        for index in deleted:
            entry = self.entries[index]
            try:
                os.unlink(os.path.join(self.path, entry.filename))
            except FileNotFoundError:
                if self._locate(entry) is not None:
                    try:
                        os.unlink(os.path.join(self.path, entry.filename))
                    except FileNotFoundError:
                        pass
        for sub in ("new", "cur"):
            fsync_directory(os.path.join(self.path, sub))

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


def deliver(maildir: str, message: bytes, name: Optional[str] = None) -> str:
    """Deliver a message the Maildir way (tmp, fsync, rename into new); returns the file name."""
    import time

    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), mode=0o700, exist_ok=True)
    if name is None:
        now = time.time()
        name = "%d.M%dP%dQ%s.%s" % (int(now), int(now * 1e6) % 1000000, os.getpid(),
                                    os.urandom(4).hex(), socket.gethostname().replace("/", "_"))
    tmp = os.path.join(maildir, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(message)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(maildir, "new", name))
    fsync_directory(os.path.join(maildir, "new"))
    return name
