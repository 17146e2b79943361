"""Maildir backend (new/ cur/ tmp/), with an exclusive lock and a crash-safe persistent index.

* UIDL: the message's maildir *base name* (the part before ``:2,``), which Maildir makes unique
  forever and which survives the new/ -> cur/ move and flag changes; a base name that is not a valid
  UIDL (longer than 70 characters, or with characters outside 0x21-0x7E) is replaced by a digest of it.
  Because the UIDL is derived from the name, losing the index never changes a UIDL.
* Size: the wire size (CRLF line endings). Taken from a ``,W=`` field in the name when present;
  otherwise computed once by reading the file and remembered in the index.
* Index: ``pop3ng-index`` (see :mod:`.maildir_index`) holds the whole snapshot, trusted while the
  directories' mtimes are unchanged, so a login on a 100,000-message maildir lists and reads nothing;
  written with tmp + fsync + rename, rebuilt when missing or corrupt; cached in memory too.
* Order: message numbers follow delivery time (TIME, then M<usec>, of standard names), then name.
* Lock: ``pop3ng.lock`` held with ``flock`` for the session. The kernel drops it when the process
  dies, so a crashed server leaves no stale lock; on NFS, Linux maps flock to POSIX locks, so the lock
  also holds across hosts.
* Commit: unlink each deleted message (following a rename by another agent), then fsync the
  directories. Nothing is touched before commit.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections import OrderedDict
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from zope.interface import implementer

from twisted_pop3ng.errors import MailboxInUse, MessageVanished, POP3Error
from twisted_pop3ng.interfaces import (IMailbox, IMailboxStore, IMaildropLock, IUIDLListing,
                                       IWholeMessageReader, MessageInfo, MessageTable)
from twisted_pop3ng.wire import uidl_body
from twisted_pop3ng._fs import fsync_directory, write_atomically  # noqa: F401  (re-exported)
from twisted_pop3ng import _maildir
from twisted_pop3ng.mailbox.maildir import index as maildir_index
from twisted_pop3ng.mailbox.maildir.names import base_name, uid_for
from twisted_pop3ng.mailbox import safe_username
from twisted_pop3ng.mailbox.maildir.index import INDEX_HEADER, INDEX_NAME  # noqa: F401  (re-exported)

LOCK_NAME = "pop3ng.lock"
T = TypeVar("T")
READ_SIZE = 1 << 20
#: How a message file is opened: never through a symlink (see :meth:`MaildirMailbox._dir_fd`).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW
_HOSTNAME = socket.gethostname()
#: Encoded UIDL listings of recent snapshots, by snapshot identity (the snapshot is kept with its
#: listing, so the identity stays valid), least recently used first, bounded in total size.
_UIDL_LISTINGS: "OrderedDict[int, Tuple[Any, bytes]]" = OrderedDict()
MAX_UIDL_LISTING_BYTES = 64 << 20


@implementer(IMaildropLock)
class MaildirLock:
    """An exclusive, non-blocking ``flock`` on ``<maildir>/pop3ng.lock``."""

    def __init__(self, maildir: str) -> None:
        self.path = maildir + "/" + LOCK_NAME  # (os.path.join: the priciest call of a login)
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        # O_NOFOLLOW: a pop3ng.lock symlink to /etc/passwd must not be truncated by root.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MailboxInUse()
            raise
        # The holder's pid, for admins. Rewritten only when it changed: a truncate + write on every
        # login was a tenth of a session's cost.
        holder = ("%d@%s\n" % (os.getpid(), _HOSTNAME)).encode()
        if os.pread(fd, 256, 0) != holder:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder, 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


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
        if not os.path.isdir(path + "/tmp"):
            if not self.create:
                raise POP3Error("Mailbox does not exist", "SYS/PERM")
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
        lock = MaildirLock(path)
        lock.acquire()
        try:
            return MaildirMailbox(path, lock)
        except BaseException:
            lock.release()
            raise


@implementer(IMailbox, IWholeMessageReader, IUIDLListing)
class MaildirMailbox:
    """A locked maildir and the snapshot taken when it was opened."""

    def __init__(self, path: str, lock: Optional[MaildirLock] = None) -> None:
        self.path = path
        self.lock = lock
        self._snapshot = snapshot = maildir_index.snapshot(path, uid_for)
        #: This session's copy: ``_locate`` may update a file name after another agent's rename.
        self.files: List[str] = list(snapshot.files)
        self.infos: Sequence[MessageInfo] = snapshot.infos
        #: Descriptors of new/ and cur/, opened on first use and closed with the mailbox.
        self._dir_fds: Dict[str, int] = {}

    # -- IMailbox ---------------------------------------------------------------------------------

    def list_messages(self) -> Sequence[MessageInfo]:
        # A MessageTable is read-only: the session may keep it as it is.
        # (MessageTable is an ABC Sequence: the MRO test spares isinstance's __instancecheck__.)
        return self.infos if MessageTable in type(self.infos).__mro__ else list(self.infos)

    def _locate(self, index: int) -> Optional[str]:
        """Find a message again after another agent renamed it (flags, new/ -> cur/)."""
        base = base_name(self.files[index][4:])
        for sub in ("cur", "new"):
            try:
                names = os.listdir(os.path.join(self.path, sub))
            except FileNotFoundError:
                continue
            for name in names:
                if name == base or name.startswith(base + ":"):
                    self.files[index] = sub + "/" + name
                    return self.files[index]
        return None

    def _dir_fd(self, sub: str) -> int:
        """The session's descriptor of ``new/`` or ``cur/``, opened on first use without following
        a symlink: a user who can write to a maildir must not make a server running as root read
        or delete files elsewhere (ELOOP or ENOTDIR become -ERR [SYS/PERM]). Held for the session,
        it keeps pointing at the real directory if the user swaps it for a symlink later."""
        fd = self._dir_fds.get(sub)
        if fd is None:
            fd = self._dir_fds[sub] = os.open(os.path.join(self.path, sub),
                                              os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        return fd

    def _on_file(self, index: int, action: Callable[[str, int], T]) -> T:
        """``action(name, dir_fd)`` on the file of message ``index``, once more after finding the
        file again if another agent renamed it (flags, new/ -> cur/); FileNotFoundError if gone."""
        filename = self.files[index]
        try:
            return action(filename[4:], self._dir_fd(filename[:3]))
        except FileNotFoundError:
            if self._locate(index) is None:
                raise
        filename = self.files[index]  # where _locate found it
        return action(filename[4:], self._dir_fd(filename[:3]))

    def _open_fd(self, index: int) -> int:
        """A descriptor of message ``index``: one ``openat`` per message, following no symlink."""
        filename = self.files[index]
        dir_fd = self._dir_fds.get(filename[:3])
        if dir_fd is not None:  # the common case at once, without _on_file's calls (bulk RETR)
            try:
                return os.open(filename[4:], _FILE_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                pass  # renamed meanwhile: _on_file finds it again
        try:
            return self._on_file(index, lambda name, dir_fd: os.open(name, _FILE_FLAGS, dir_fd=dir_fd))
        except FileNotFoundError:
            raise MessageVanished()

    def open_message(self, index: int) -> BinaryIO:
        return os.fdopen(self._open_fd(index), "rb", buffering=0)

    def read_whole(self, index: int, limit: int) -> Optional[bytes]:
        """The stored message when it is shorter than ``limit`` octets (one read); else None.

        The optional fast path of :class:`~twisted_pop3ng.interfaces.IMailbox`: the server sends
        such a message in one write instead of streaming it. A short read of a regular file is
        its end.
        """
        fd = self._open_fd(index)
        try:
            data = os.read(fd, limit)
        finally:
            os.close(fd)
        return data if len(data) < limit else None

    def uidl_listing(self) -> bytes:
        """The body of ``UIDL`` for the whole snapshot: ``N UID\\r\\n`` per message.

        The optional listing hook of :class:`~twisted_pop3ng.interfaces.IMailbox`. A warm login
        reuses the snapshot of the last one, so its listing is kept too: 100,000 UIDLs cost one
        dictionary lookup instead of ~60 ms of formatting.
        """
        snapshot = self._snapshot
        hit = _UIDL_LISTINGS.get(id(snapshot))
        if hit is not None and hit[0] is snapshot:
            _UIDL_LISTINGS.move_to_end(id(snapshot))
            return hit[1]
        infos = self.infos
        uids = infos.uids if MessageTable in type(infos).__mro__ else [info.uid for info in infos]
        data = uidl_body(enumerate(uids, 1))
        if len(data) <= MAX_UIDL_LISTING_BYTES:
            _UIDL_LISTINGS[id(snapshot)] = (snapshot, data)
            total = sum(len(listing) for _, listing in _UIDL_LISTINGS.values())
            while total > MAX_UIDL_LISTING_BYTES:
                _, (_, evicted) = _UIDL_LISTINGS.popitem(last=False)
                total -= len(evicted)
        return data

    def commit(self, deleted: Sequence[int]) -> None:
        for index in deleted:
            try:
                self._on_file(index, lambda name, dir_fd: os.unlink(name, dir_fd=dir_fd))
            except FileNotFoundError:
                pass  # already gone: the deletion is done
        for sub in ("new", "cur"):
            fsync_directory(os.path.join(self.path, sub))

    def close(self) -> None:
        fds, self._dir_fds = self._dir_fds, {}
        for fd in fds.values():
            os.close(fd)
        maildir_index.flush(self.path, self._snapshot)
        if self.lock is not None:
            self.lock.release()


def deliver(maildir: str, message: bytes, name: Optional[str] = None) -> str:
    """Deliver a message the Maildir way (tmp, fsync, rename into new); returns the file name.

    The one Maildir delivery of the package, shared with ``pop3ng fetch``: see
    :func:`twisted_pop3ng._maildir.deliver`.
    """
    return _maildir.deliver(maildir, message, name)
