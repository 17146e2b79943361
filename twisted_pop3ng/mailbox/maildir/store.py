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
* Files a local user controls (audit F8-F10, F17) neither hang nor mislead the server: the maildir
  is reached without following a user's symlink (:meth:`MaildirStore.open_root`) and then used
  through its open descriptor; a message file is opened without following a symlink or waiting
  (``O_NONBLOCK``) and read only when it is a regular file (else -ERR [SYS/PERM]); a short read is
  never taken as its end, and a file that changes size while read fails (-ERR [SYS/TEMP], or the
  connection is dropped once the body has started) instead of being sent truncated; a lock file
  that is a hard link, not a regular file or someone else's is refused.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import socket
import stat
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, cast

from zope.interface import implementer

from twisted_pop3ng.errors import (MailboxInUse, MessageVanished, PermanentFailure, POP3Error,
                                   TemporaryFailure)
from twisted_pop3ng.interfaces import (IMailbox, IMailboxDelivery, IMailboxStore, IMaildropLock,
                                       IUIDLListing, IWholeMessageReader, MessageInfo, MessageTable)
from twisted_pop3ng.wire import uidl_body, wire_size
from twisted_pop3ng._fs import fsync_directory, write_atomically  # noqa: F401  (re-exported)
from twisted_pop3ng._fs import open_dir_no_symlinks
from twisted_pop3ng import _maildir
from twisted_pop3ng.mailbox.maildir import index as maildir_index
from twisted_pop3ng.mailbox.maildir.names import base_name, uid_for
from twisted_pop3ng.mailbox import check_user_template, safe_username
from twisted_pop3ng.mailbox.maildir.index import INDEX_HEADER, INDEX_NAME  # noqa: F401  (re-exported)

LOCK_NAME = "pop3ng.lock"
T = TypeVar("T")
READ_SIZE = 1 << 20
#: How a message file is opened: never through a symlink (see :meth:`MaildirMailbox._dir_fd`),
#: never waiting (a FIFO planted in cur/ would block the open, and the reactor with it: audit F9).
#: Only a regular file is then read (``fstat``): anything else is -ERR [SYS/PERM].
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
_HOSTNAME = socket.gethostname()


@implementer(IMaildropLock)
class MaildirLock:
    """An exclusive, non-blocking ``flock`` on ``<maildir>/pop3ng.lock``; ``dir_fd``: the maildir
    ``maildir`` names, opened (:meth:`MaildirStore.open_root`), which the lock file is then opened
    relative to."""

    def __init__(self, maildir: str, dir_fd: Optional[int] = None) -> None:
        self.path = maildir + "/" + LOCK_NAME  # (os.path.join: the priciest call of a login)
        self._dir_fd = dir_fd
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        # O_NOFOLLOW and no O_TRUNC: a pop3ng.lock symlink to /etc/passwd is not followed, and
        # nothing is written before _check_lock_file has seen that this is our own file.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        if self._dir_fd is not None:
            fd = os.open(LOCK_NAME, flags, 0o600, dir_fd=self._dir_fd)
        else:
            fd = os.open(self.path, flags, 0o600)
        try:
            _check_lock_file(fd, self.path, self._dir_fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except POP3Error:
            os.close(fd)
            raise
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MailboxInUse()
            raise
        # The holder's pid, for admins. Rewritten only when it changed: a truncate + write on every
        # login was a tenth of a session's cost.
        holder = _holder
        if os.pread(fd, 256, 0) != holder:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder, 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _holder_line() -> bytes:
    return ("%d@%s\n" % (os.getpid(), _HOSTNAME)).encode()


#: ``pid@host``, as written into the lock file: made again in a forked child (``--workers``), not
#: on every login (getpid is a system call).
_holder = _holder_line()


def _forked() -> None:
    global _holder
    _holder = _holder_line()


os.register_at_fork(after_in_child=_forked)


def _check_lock_file(fd: int, path: str, dir_fd: Optional[int] = None) -> None:
    """Refuse a lock file that root would write through to someone else's file (audit F17): a
    hard link (``st_nlink`` above 1: a user with ``fs.protected_hardlinks=0`` linked a root-owned
    file here), anything but a regular file, or a file owned neither by this process's user nor by
    the maildir's owner. Refused, not repaired: removing a name another server may hold a lock
    on would let two sessions in; the administrator removes it."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        if st.st_uid == os.geteuid():
            return
        try:
            # (the maildir open_root reached: its descriptor, or /proc/self/fd/N followed)
            owner = os.fstat(dir_fd) if dir_fd is not None else os.stat(os.path.dirname(path))
            if st.st_uid == owner.st_uid:
                return
        except OSError:
            pass
    raise PermanentFailure("Unsafe maildrop lock file (a link, not a regular file or not ours)")


#: Whether ``/proc/self/fd/N`` names the directory open as N (Linux with /proc mounted): then a
#: maildir opened safely once (:meth:`MaildirStore.open_root`) is used through that name, which
#: the kernel does not resolve again, so nothing the user renames later redirects the session.
_PROC_FD = os.path.isdir("/proc/self/fd")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY
_NO_SYMLINK = _DIR_FLAGS | os.O_NOFOLLOW


def _fd_path(fd: int) -> str:
    return "/proc/self/fd/%d" % fd


def _follow_trusted_link(parent_fd: int, name: str) -> Optional[int]:
    """A descriptor of the directory that the symlink ``name`` in ``parent_fd`` leads to, when the
    server may follow it on the user's part of the path; else None. Followed: a symlink the
    administrator made (owned by root: no user can make one), and a user's own redirection to a
    directory of their own (the link's owner owns the directory it leads to: ``~/Maildir`` ->
    ``~/mail/inbox``). Never a hard link of a symlink (``st_nlink`` above 1: a user could place
    root's anywhere where ``fs.protected_hardlinks`` is off). A link swapped between the checks
    gains nothing: any link a user can make is the user's, so it leads only to their own
    directories."""
    try:
        link = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISLNK(link.st_mode) or link.st_nlink != 1:
        return None
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return None
    if link.st_uid == 0 or os.fstat(fd).st_uid == link.st_uid:
        return fd
    os.close(fd)
    return None


@implementer(IMailboxStore, IMailboxDelivery)
class MaildirStore:
    """Maildrops at ``template.format(user=…)``; created (0700) on first login when missing.

    The path is opened in two parts (audit F10): the template's directory before the component
    holding ``{user}`` is the administrator's and opened as it is; from that component on, a user
    may own the directories (``/home/{user}/Maildir``), so each is opened relative to the last
    without following a symlink (a user's ``ln -s /home/bob/Maildir ~/Maildir`` is -ERR
    [SYS/PERM]), except a symlink owned by root (home directories moved to another disk) or one
    leading to a directory of the link's owner (see :func:`_follow_trusted_link`). The session
    then uses the directory it opened (:data:`_PROC_FD`)."""

    def __init__(self, template: str, create: bool = True) -> None:
        check_user_template(template, "maildir", "/var/mail/{user}/Maildir")
        self.template = template
        self.create = create
        cut = template.rfind("/", 0, template.index("{user}")) + 1
        #: The administrator's part of the path, and the part that may belong to the user.
        self._trusted, self._below = template[:cut] or ".", template[cut:]
        self._trusted_prefix = template[:cut]
        #: Whether the administrator's part of the path held a symlink (see _open_directly).
        self._links_above = False

    def path_for(self, user: str) -> str:
        return self.template.replace("{user}", safe_username(user))

    def open_root(self, user: str) -> int:
        """A descriptor of ``user``'s maildir (created with cur/ new/ tmp/ when missing and
        allowed), reached without following a symlink the user could have made."""
        below = self._below.replace("{user}", safe_username(user))  # (the user's part)
        fd = self._open_directly(below)
        if fd is None:
            fd = self._open_walking(below)
        try:
            # (access, not stat: every login asks, and only whether the name is there)
            if not os.access("tmp", os.F_OK, dir_fd=fd, follow_symlinks=False):
                if not self.create:
                    raise POP3Error("Mailbox does not exist", "SYS/PERM")
                for sub in _maildir.SUBDIRS:
                    try:
                        os.mkdir(sub, 0o700, dir_fd=fd)
                    except FileExistsError:
                        pass
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_directly(self, below: str) -> Optional[int]:
        """The maildir opened in one system call when no symlink at all is on its way (the common
        case, and the walk's result then); None when that is not so, or not possible here: the
        walk then finds out why, creates, follows the links it may follow, or names the error.
        After a symlink in the administrator's part of the path (followed, as by the walk), the
        user's part alone is opened so, relative to it."""
        try:
            if not self._links_above:
                try:
                    return open_dir_no_symlinks(self._trusted_prefix + below)
                except OSError as error:
                    if error.errno != errno.ELOOP:
                        return None
            above = os.open(self._trusted, _DIR_FLAGS)
            try:
                fd = open_dir_no_symlinks(below, above)
            finally:
                os.close(above)
        except OSError:
            return None
        self._links_above = True  # (ELOOP came from above: the user's part just opened without)
        return fd

    def _open_walking(self, below: str) -> int:
        """The maildir reached one component at a time (see the class), created where missing."""
        parts = [part for part in below.split("/") if part and part != "."]
        try:
            fd = os.open(self._trusted, _DIR_FLAGS)
        except FileNotFoundError:
            if not self.create:
                raise POP3Error("Mailbox does not exist", "SYS/PERM")
            os.makedirs(self._trusted, mode=0o700, exist_ok=True)
            fd = os.open(self._trusted, _DIR_FLAGS)
        try:
            for part in parts:
                child = self._open_part(fd, part)
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_part(self, parent_fd: int, part: str) -> int:
        try:
            return os.open(part, _NO_SYMLINK, dir_fd=parent_fd)
        except FileNotFoundError:
            if not self.create:
                raise POP3Error("Mailbox does not exist", "SYS/PERM")
            try:
                os.mkdir(part, 0o700, dir_fd=parent_fd)
            except FileExistsError:
                pass
            return os.open(part, _NO_SYMLINK, dir_fd=parent_fd)
        except OSError as error:
            if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            fd = _follow_trusted_link(parent_fd, part)
            if fd is None:
                raise PermanentFailure("The maildrop path holds a file or another user's symlink")
            return fd

    def deliver(self, user: str, source: BinaryIO) -> str:
        """:class:`~twisted_pop3ng.interfaces.IMailboxDelivery`: ``source`` streamed to ``tmp/``,
        fsynced, renamed into ``new/`` and ``new/`` fsynced; returns the UIDL. The final name
        carries the sizes, ``NAME,S=<octets>,W=<wire size>`` as Dovecot writes them, so a login
        never reads the file to size it. The maildir is reached and created as at login
        (:meth:`open_root`); nothing is left visible when anything fails."""
        fd = self.open_root(user)
        try:
            root = _fd_path(fd) if _PROC_FD else self.path_for(user)
            name = _maildir.unique_name()
            tmp = _maildir.TmpFile(root, name, 0o600)
            try:
                size, wire = _write_measured(source, tmp)
                tmp.sync()
                final = "%s,S=%d,W=%d" % (name, size, wire)
                new = root + "/new/" + final
                os.rename(tmp.path, new)
            except BaseException:
                tmp.abort()
                raise
            try:
                fsync_directory(root + "/new")
            except BaseException:
                _unlink_quietly(new)  # not durable: take it back, the client tries again
                raise
            return uid_for(final)
        finally:
            os.close(fd)

    def open_mailbox(self, user: str) -> "MaildirMailbox":
        path = self.path_for(user)
        fd = self.open_root(user)
        try:
            lock = MaildirLock(_fd_path(fd) if _PROC_FD else path, fd)
            lock.acquire()
        except BaseException:
            os.close(fd)
            raise
        try:
            return MaildirMailbox(path, lock, fd)
        except BaseException:
            lock.release()
            os.close(fd)
            raise


def _write_measured(source: BinaryIO, tmp: _maildir.TmpFile) -> Tuple[int, int]:
    """Copy ``source`` to ``tmp`` chunk by chunk; its size and its wire size."""
    size = 0

    def chunks() -> Any:
        nonlocal size
        while True:
            data = source.read(READ_SIZE)
            if not data:
                return
            tmp.write(data)
            size += len(data)
            yield data

    wire = wire_size(chunks())
    return size, wire


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


@implementer(IMailbox, IWholeMessageReader, IUIDLListing)
class MaildirMailbox:
    """A locked maildir and the snapshot taken when it was opened."""

    #: Its UIDLs follow RFC 1939's rule (made so where they are made): the server need not check.
    uidls_valid = True

    def __init__(self, path: str, lock: Optional[MaildirLock] = None,
                 root_fd: Optional[int] = None) -> None:
        """``root_fd``: a descriptor of the maildir at ``path`` (:meth:`MaildirStore.open_root`),
        which the session then uses instead of the path and closes with the mailbox."""
        self.path = path
        self.lock = lock
        #: Where the files are reached: the opened directory where /proc names it, else ``path``.
        self._root = _fd_path(root_fd) if root_fd is not None and _PROC_FD else path
        self._snapshot = snapshot = maildir_index.snapshot(self._root, uid_for, key=path, dir_fd=root_fd)
        self._root_fd = root_fd  # (only once nothing can fail: the caller closes it until then)
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
                names = os.listdir(self._dir_fd(sub))
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
            fd = self._dir_fds[sub] = os.open(self._root + "/" + sub,
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
        """The message as an unbuffered file that fails (:class:`MessageFile`) rather than end
        early when the file changes while it is read; -ERR [SYS/PERM] for anything but a regular
        file (a FIFO, a socket, a device planted in the maildir)."""
        fd = self._open_fd(index)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _not_a_file()
            return MessageFile(fd, st.st_size)
        except BaseException:
            os.close(fd)
            raise

    def read_whole(self, index: int, limit: int) -> Optional[bytes]:
        """The stored message when it is shorter than ``limit`` octets; else None.

        The optional fast path of :class:`~twisted_pop3ng.interfaces.IMailbox`: the server sends
        such a message in one write instead of streaming it. Usually one read and one ``fstat``:
        a read shorter than the file's size (FUSE, a network filesystem) is not its end, the rest
        is read; a file that changed meanwhile is -ERR [SYS/TEMP], never sent truncated; anything
        but a regular file is -ERR [SYS/PERM].
        """
        fd = self._open_fd(index)
        try:
            data = os.read(fd, limit)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _not_a_file()
            size = st.st_size
            if len(data) == size:
                return data if size < limit else None
            if size >= limit:
                return None  # streamed (MessageFile checks the size there)
            return _read_rest(fd, data, size)
        finally:
            os.close(fd)

    def uidl_listing(self) -> bytes:
        """The body of ``UIDL`` for the whole snapshot: ``N UID\\r\\n`` per message.

        The optional listing hook of :class:`~twisted_pop3ng.interfaces.IMailbox`. A warm login
        reuses the snapshot of the last one, so its listing is kept too: 100,000 UIDLs cost one
        dictionary lookup instead of ~60 ms of formatting.
        """
        snapshot = self._snapshot
        data = snapshot.uidl_body
        if data is None:
            infos = self.infos
            uids = (cast(MessageTable, infos).uids if MessageTable in type(infos).__mro__
                    else [info.uid for info in infos])
            # Kept on the snapshot, so it lives exactly as long as the snapshot cache keeps it:
            # a listing cache of its own kept every superseded snapshot alive with its listing
            # (a soak test grew the server by ~130 kB per session on a growing maildrop).
            data = snapshot.uidl_body = uidl_body(enumerate(uids, 1))
        return data

    def commit(self, deleted: Sequence[int]) -> None:
        # The directories a name was removed from, fsynced after: only those (a cur/ that another
        # program removed meanwhile, with nothing deleted in it, does not fail the commit).
        touched: Dict[int, None] = {}

        def unlink(name: str, dir_fd: int) -> None:
            os.unlink(name, dir_fd=dir_fd)
            touched[dir_fd] = None

        for index in deleted:
            try:
                self._on_file(index, unlink)
            except FileNotFoundError:
                pass  # already gone: the deletion is done
        for dir_fd in touched:
            os.fsync(dir_fd)

    def close(self) -> None:
        fds, self._dir_fds = self._dir_fds, {}
        for fd in fds.values():
            os.close(fd)
        try:
            maildir_index.flush(self._root, self._snapshot)
        finally:
            if self.lock is not None:
                self.lock.release()
            root_fd, self._root_fd = self._root_fd, None
            if root_fd is not None:
                os.close(root_fd)


def _not_a_file() -> POP3Error:
    return PermanentFailure("Message is not a regular file")


def _changed() -> POP3Error:
    return TemporaryFailure("Message changed while it was read, try again")


def _read_rest(fd: int, data: bytes, size: int) -> bytes:
    """``data`` (the start of a file of ``size`` octets, by ``fstat``) and the rest of the file,
    read to its end; -ERR [SYS/TEMP] unless that makes exactly ``size`` octets."""
    parts = [data]
    total = len(data)
    while total <= size:  # one octet more than expected: a file that grew is seen
        chunk = os.read(fd, size + 1 - total)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    if total != size:
        raise _changed()
    return b"".join(parts)


class MessageFile(io.FileIO):
    """A message file opened for streaming (unbuffered, as ``os.fdopen(fd, "rb", 0)``) that knows
    its size when opened: at the end of the file (an empty read, never a short one) a different
    position means the file was truncated or grew meanwhile, and the read fails with -ERR
    [SYS/TEMP] instead of letting the message be sent truncated (the server then drops the
    connection, as for any failed transfer, so the client does not take it as complete)."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__(fd, "rb", closefd=True)
        self.expected_size = size

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        data = super().read(size)
        if not data and size != 0 and self.tell() != self.expected_size:
            raise _changed()
        return data


def deliver(maildir: str, message: bytes, name: Optional[str] = None) -> str:
    """Deliver a message the Maildir way (tmp, fsync, rename into new); returns the file name.

    The one Maildir delivery of the package, shared with ``pop3ng fetch``: see
    :func:`twisted_pop3ng._maildir.deliver`.
    """
    return _maildir.deliver(maildir, message, name)
