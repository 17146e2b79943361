"""The mbox store (``--mailbox mbox:/var/mail/{user}``): sessions over Unix mbox files.

* Login: the session lock (:class:`.locking.SessionLock`, ``[IN-USE]`` at once), then, in a
  thread, the write lock for the scan only: finish an interrupted rewrite, scan the file
  (:func:`.format.scan`), give UIDLs (:mod:`.uids`). The snapshot is the file's first ``end``
  octets; mail appended later is the next session's.
* RETR: the message's octets read from the session's descriptor at the recorded offsets and
  unquoted on the fly (:class:`MboxMessageFile`); a message whose ``From_`` line is no longer at
  its offset (another program rewrote the file) is -ERR "vanished".
* QUIT: the write lock again and :func:`.rewrite.rewrite` (in place, behind a journal).
* Delivery (:meth:`MboxStore.deliver`): the write lock, an append with a ``From MAILER-DAEMON``
  line and mboxrd quoting, fsync, the UIDL recorded; on failure the file is cut back.

Spec: ``mbox:TEMPLATE[?format=mboxrd|mboxo][&lock_timeout=SECONDS]``; see docs/mbox.rst.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from typing import Any, BinaryIO, Dict, List, NamedTuple, Optional, Sequence
from urllib.parse import parse_qsl

from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import implementer

from twisted_pop3ng.errors import MessageVanished, PermanentFailure, POP3Error, TemporaryFailure
from twisted_pop3ng.interfaces import (IMailbox, IMailboxDelivery, IMailboxStore, IUIDLListing,
                                       IWholeMessageReader, MessageInfo)
from twisted_pop3ng.mailbox import check_user_template, safe_username
from twisted_pop3ng.mailbox.mbox import format as mbox_format
from twisted_pop3ng.mailbox.mbox.locking import DEFAULT_TIMEOUT, SessionLock, WriteLock, hidden_name
from twisted_pop3ng.mailbox.mbox.rewrite import recover, rewrite, unchanged
from twisted_pop3ng.mailbox.mbox.uids import UidIndex
from twisted_pop3ng.wire import uidl_body

log = Logger()

_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: Octets gathered before one write while delivering.
_WRITE_BATCH = 1 << 20


def _open_mbox(path: str, create: bool) -> Optional[int]:
    """The mbox's descriptor (never through a symlink, never blocking on a FIFO); None when it
    does not exist and ``create`` is false; -ERR [SYS/PERM] for anything but a regular file."""
    try:
        fd = os.open(path, _OPEN_FLAGS | (os.O_CREAT if create else 0), 0o600)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PermanentFailure("The mbox path is a symlink or not a file")
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PermanentFailure("The mbox is not a regular file")
    return fd


#: Times the file a descriptor was locked on turns out to be renamed away (another program
#: replaced the mbox while we waited for its lock) before an operation gives up, temporarily.
_REPLACED_RETRIES = 5


def _same_file(path: str, fd: int) -> bool:
    """Whether ``path`` still leads to the file open on ``fd`` (not replaced, not removed)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    current = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (current.st_dev, current.st_ino)


def _current_write_lock(path: str, fd: int, timeout: float) -> Optional[WriteLock]:
    """The write lock, held on ``fd``, if ``fd`` still is the mbox once it is held; else None
    (released). A program holding the lock meanwhile may have renamed a rewritten copy over the
    mbox (Python's ``mailbox``, mutt): what was appended to, or rewritten in, the old file would
    be lost with it. procmail checks the same."""
    lock = WriteLock(path, fd, timeout)
    lock.acquire()
    if _same_file(path, fd):
        return lock
    lock.release()
    return None


def _replaced_too_often() -> TemporaryFailure:
    return TemporaryFailure("The mbox was replaced again and again by another program, try again later")


def _make_directory(path: str) -> None:
    """The mbox's directory, made (0700) when missing, as the maildir store makes a maildir."""
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, 0o700, exist_ok=True)


@implementer(IMailboxStore, IMailboxDelivery)
class MboxStore:
    """mbox files at ``template.format(user=…)``; see the module docstring."""

    def __init__(self, template: str, fmt: str = "mboxrd", lock_timeout: float = DEFAULT_TIMEOUT) -> None:
        check_user_template(template, "mbox", "mbox:/var/mail/{user}")
        if template.endswith("/"):
            raise ValueError("the mbox template names a file, not a directory: %r" % (template,))
        if fmt not in mbox_format.FORMATS:
            raise ValueError("unknown mbox format %r (known: %s)" % (fmt, ", ".join(mbox_format.FORMATS)))
        self.template = template
        self.format = fmt
        self.lock_timeout = lock_timeout

    @classmethod
    def from_spec(cls, argstring: str) -> "MboxStore":
        """``TEMPLATE[?format=mboxrd|mboxo][&lock_timeout=SECONDS]``."""
        template, _, query = argstring.partition("?")
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
        unknown = set(options) - {"format", "lock_timeout"}
        if unknown:
            raise ValueError("unknown mbox option(s) %s (known: format, lock_timeout)" % ", ".join(sorted(unknown)))
        try:
            timeout = float(options.get("lock_timeout", DEFAULT_TIMEOUT))
        except ValueError:
            raise ValueError("lock_timeout must be a number of seconds")
        if not 0 < timeout <= 3600:
            raise ValueError("lock_timeout must be between 0 and 3600 seconds")
        return cls(template, options.get("format", "mboxrd"), timeout)

    def path_for(self, user: str) -> str:
        """The user's mbox; a name starting with "." could name our own files beside an mbox."""
        if safe_username(user).startswith("."):
            raise PermanentFailure("Invalid user name for this mailbox store")
        return self.template.replace("{user}", user)

    # -- IMailboxStore ----------------------------------------------------------------------------

    def open_mailbox(self, user: str) -> Any:
        """The session lock now (``MailboxInUse`` at once), the scan in a thread (it may wait for
        an MTA's write lock and reads the whole file)."""
        path = self.path_for(user)
        _make_directory(path)
        session_lock = SessionLock(path)
        session_lock.acquire()

        def failed(failure: Any) -> Any:
            session_lock.release()
            return failure
        return deferToThread(self.open_locked, path, session_lock).addErrback(failed)

    def open_locked(self, path: str, session_lock: SessionLock) -> "MboxMailbox":
        """The blocking part of a login, with the session lock held (the caller releases it on error)."""
        for _ in range(_REPLACED_RETRIES):
            fd = _open_mbox(path, create=False)
            if fd is None:
                return MboxMailbox(self, path, session_lock, None, mbox_format.Scan([], 0, b""), [])
            try:
                lock = _current_write_lock(path, fd, self.lock_timeout)
                if lock is None:
                    os.close(fd)
                    continue
                try:
                    index = UidIndex.load(hidden_name(path, "pop3ng-uidl"))
                    recover(path, fd, lock.touch, index.remove)
                    undo_unfinished_append(path, fd, index, lock.touch, self.format)
                    result = mbox_format.scan(fd, self.format, os.fstat(fd).st_size)
                    uids, changed = index.assign(result.records)
                    if changed:
                        index.save()
                finally:
                    lock.release()
                return MboxMailbox(self, path, session_lock, fd, result, uids)
            except BaseException:
                os.close(fd)
                raise
        raise _replaced_too_often()

    # -- IMailboxDelivery -------------------------------------------------------------------------

    def deliver(self, username: str, source: BinaryIO) -> str:
        path = self.path_for(username)
        _make_directory(path)
        for _ in range(_REPLACED_RETRIES):
            fd = _open_mbox(path, create=True)
            assert fd is not None
            try:
                lock = _current_write_lock(path, fd, self.lock_timeout)
            except BaseException:
                os.close(fd)
                raise
            if lock is not None:
                try:
                    return self._deliver_locked(path, fd, lock, source)
                finally:
                    lock.release()
                    os.close(fd)
            os.close(fd)
        raise _replaced_too_often()

    def _deliver_locked(self, path: str, fd: int, lock: WriteLock, source: BinaryIO) -> str:
        """Append with the write lock held on the file the name leads to. The append is announced
        in the index first (durably): one cut short by a kill or a power loss is then removed by
        the next locker (:func:`undo_unfinished_append`), never served as a torn message."""
        index = UidIndex.load(hidden_name(path, "pop3ng-uidl"))
        recover(path, fd, lock.touch, index.remove)
        undo_unfinished_append(path, fd, index, lock.touch, self.format)
        st = os.fstat(fd)
        size = st.st_size
        separator = mbox_format.separator_needed(fd, size)
        head = separator + from_line()
        index.pending = (st.st_dev, st.st_ino, size, head)
        index.save()
        try:
            start = size + len(separator)
            end = _append(fd, size, head, source, lock.touch, self.format)
            os.fsync(fd)
            records = mbox_format.scan(fd, self.format, end, start).records
            if len(records) != 1:
                raise TemporaryFailure("The delivered message could not be read back")
            uid = index.add(records[0])
        except BaseException:
            os.ftruncate(fd, size)  # nothing of a failed delivery stays visible
            os.fsync(fd)
            index.pending = None
            index.save()
            raise
        index.pending = None
        index.save()
        return uid


def undo_unfinished_append(path: str, fd: int, index: UidIndex, touch: Any, fmt: str) -> None:
    """Remove what a delivery cut short (a kill, a power loss) appended: it was never
    acknowledged, and the MTA delivers it again. Write lock held.

    Only when the octets at the recorded offset are the ones it wrote first (its separator and
    ``From_`` line, kept in the index): else another program has written there since (it came
    first after the kill, or rewrote the file), and nothing is touched -- mail is never removed
    on a guess. Mail appended after it is kept: its range is taken out by an in-place rewrite
    (:func:`.rewrite.rewrite`, behind its journal); with nothing after it, the file is cut back."""
    pending, index.pending = index.pending, None
    if pending is None:
        return
    st = os.fstat(fd)
    dev, ino, start, head = pending
    written = os.pread(fd, len(head), start) if (st.st_dev, st.st_ino) == (dev, ino) else b""
    if written == head:
        # Its end: the next line that starts with "From " (inside it none can: they are
        # quoted), or, sooner, another writer's From_ line right after a line the kill cut.
        # Removing up to the first such line never removes another program's octets: if the
        # first is inside the torn message after all, a piece of it stays, nothing else goes.
        starts = _from_lines(fd, start + len(head), st.st_size)
        end = starts[0] if starts else st.st_size
        found = _FOREIGN_FROM.search(_tail(fd, start + len(head), end))
        if found:
            end = start + len(head) + found.start()
        if end < st.st_size:
            spans = [_Span(0, start), _Span(start, end), _Span(end, st.st_size)]
            rewrite(path, fd, spans, st.st_size, [1], [], touch, lambda uids: None)  # type: ignore[arg-type]
        else:
            os.ftruncate(fd, start)
            os.fsync(fd)
    elif written and head.startswith(written) and start + len(written) == st.st_size:
        os.ftruncate(fd, start)  # (cut short inside its own From_ line)
        os.fsync(fd)
    else:
        if st.st_size > start:
            log.warn("mbox {path}: a delivery was cut short at offset {start}, but another program "
                     "has written there since: left as it is", path=path, start=start)
        index.save()
        return
    log.warn("mbox {path}: removed a delivery that was cut short (never acknowledged) at offset "
             "{start}", path=path, start=start)
    index.save()


#: A ``From_`` line as MTAs write it (``From SENDER Www Mmm dd hh:mm:ss yyyy``), wherever it is.
_FOREIGN_FROM = re.compile(rb"From \S+ +[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d ")


def _tail(fd: int, begin: int, end: int) -> bytes:
    """The octets ``[begin, end)`` (recovery only: a cut-short delivery's remains)."""
    return os.pread(fd, end - begin, begin) if end > begin else b""


class _Span(NamedTuple):
    """A range of the file, for :func:`.rewrite.rewrite` (which needs only these of a record)."""

    start: int
    end: int


def _from_lines(fd: int, begin: int, end: int) -> List[int]:
    """Offsets in ``[begin, end)`` where a line starts with "From " (read in chunks)."""
    found: List[int] = []
    offset, previous = begin, (os.pread(fd, 1, begin - 1) if begin else b"\n")
    while offset < end:
        data = os.pread(fd, min(_WRITE_BATCH, end - offset) + 4, offset)
        if not data:
            break
        window = previous + data
        position = window.find(b"\nFrom ")
        while position != -1 and position < len(window) - 5 and offset + position < end:
            found.append(offset + position)
            position = window.find(b"\nFrom ", position + 1)
        step = min(_WRITE_BATCH, end - offset)
        previous = data[step - 1:step]
        offset += step
    return found


def from_line(now: Optional[float] = None) -> bytes:
    """``From MAILER-DAEMON <ctime>``: the envelope sender is not known to a store."""
    return b"From MAILER-DAEMON " + time.asctime(time.localtime(now)).encode("ascii") + b"\n"


def _append(fd: int, size: int, head: bytes, source: BinaryIO, touch: Any, fmt: str) -> int:
    """Write ``head`` (separator and ``From_`` line), the message (quoted for ``fmt``, plain CRLF
    line ends made LF, a final LF added when missing) and the empty separator line at ``size``;
    the new end."""
    offset = size
    out = bytearray(head)
    carry = b""
    bol = True  # whether ``carry`` starts a line

    def emit(data: bytes) -> None:
        nonlocal offset, bol
        out.extend(mbox_format.quote(data, bol, fmt))
        bol = data.endswith(b"\n")
        if len(out) >= _WRITE_BATCH:
            offset = _flush(fd, out, offset)
            touch()

    while True:
        chunk = source.read(1 << 16)
        if not chunk:
            break
        data = carry + chunk
        nl = data.rfind(b"\n")
        if nl != -1:
            emit(data[:nl + 1])
            carry = data[nl + 1:]
        elif len(data) >= mbox_format.LINE_LIMIT:  # a long line: passed on in pieces
            emit(data)
            carry = b""
        else:
            carry = data
    if carry:
        emit(carry + b"\n")
    elif not bol:
        out.extend(b"\n")
    out.extend(b"\n")
    return _flush(fd, out, offset)


def _flush(fd: int, out: bytearray, offset: int) -> int:
    view = memoryview(out)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    view.release()
    del out[:]
    return offset


@implementer(IMailbox, IWholeMessageReader, IUIDLListing)
class MboxMailbox:
    """One session's snapshot of an mbox: records at offsets, held open on one descriptor."""

    #: Its UIDLs follow RFC 1939's rule (made so where they are made): the server need not check.
    uidls_valid = True

    def __init__(self, store: MboxStore, path: str, session_lock: SessionLock, fd: Optional[int],
                 scanned: "mbox_format.Scan", uids: List[str]) -> None:
        self.store = store
        self.path = path
        self._session_lock: Optional[SessionLock] = session_lock
        self._fd = fd
        self._scan = scanned
        self.records = scanned.records
        self.infos = [MessageInfo(uid, record.size) for uid, record in zip(uids, self.records)]
        #: (st_dev, st_ino) of the file the session reads, to see a replaced mbox.
        self._file_id = (os.fstat(fd).st_dev, os.fstat(fd).st_ino) if fd is not None else (0, 0)
        #: Where the snapshot's messages are after another program rewrote the file (None: where
        #: the scan found them), by :func:`_match`.
        self._located: Optional[List[Optional[mbox_format.Record]]] = None
        #: A commit running in its thread: close() waits for it (the descriptor stays valid).
        self._committing: Optional[Any] = None
        self._close_requested = False

    def list_messages(self) -> Sequence[MessageInfo]:
        return self.infos

    def uidl_listing(self) -> bytes:
        return uidl_body((n, info.uid) for n, info in enumerate(self.infos, 1))

    def _checked(self, index: int) -> "mbox_format.Record":
        """Where message ``index`` is now: where the scan found it while its ``From_`` line, and
        the next one's (or the end of the snapshot), are still there; else, after another
        program rewrote or replaced the file, the same message found by a new scan
        (:func:`_match`); MessageVanished when it is gone or changed."""
        fd = self._fd
        if self._located is None and fd is not None and not self._replaced() and self._in_place(fd, index):
            return self.records[index]
        if self._located is None:
            self._follow_replacement()
            fd = self._fd
            if fd is None:
                raise MessageVanished()
            current = mbox_format.scan(fd, self.store.format, os.fstat(fd).st_size)
            self._located = _match(self.records, current.records)
        record = self._located[index]
        if record is None:
            raise MessageVanished()
        return record

    def _replaced(self) -> bool:
        """Whether the mbox's name now leads to another file than the session's (one stat)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._file_id

    def _in_place(self, fd: int, index: int) -> bool:
        record = self.records[index]
        if os.pread(fd, len(record.from_line), record.start) != record.from_line:
            return False
        if index + 1 < len(self.records):
            following = self.records[index + 1].from_line
            return os.pread(fd, len(following), record.end) == following
        return os.fstat(fd).st_size >= record.end

    def open_message(self, index: int) -> "MboxMessageFile":
        record = self._checked(index)
        assert self._fd is not None
        return MboxMessageFile(self._fd, record, self.store.format)

    def read_whole(self, index: int, limit: int) -> Optional[bytes]:
        record = self._checked(index)
        if record.length >= limit:
            return None
        assert self._fd is not None
        data = b"".join(mbox_format.MessageReader(self._fd, record.content_start, record.content_end,
                                                  self.store.format).chunks())
        return data if len(data) < limit else None

    def commit(self, deleted: Sequence[int]) -> Any:
        doomed = sorted(set(deleted))
        if not doomed:
            return None
        d = self._committing = deferToThread(self.commit_now, doomed)

        def done(result: Any) -> Any:
            self._committing = None
            if self._close_requested:
                self.close()
            return result
        return d.addBoth(done)

    def commit_now(self, deleted: Sequence[int]) -> None:
        """UPDATE (blocking): the write lock, then the in-place rewrite behind a journal.

        When the snapshot part of the file is not what the login read (a mail client expunged or
        rewrote it, Dovecot's LDA updated a header in place, the file was replaced), the file is
        scanned again under the lock and the messages to remove are the ones that are *the same
        messages* as the session's deleted ones (:func:`_identity`); a deleted message that is
        gone or was changed is left alone, and mail the session never saw is kept."""
        for _ in range(_REPLACED_RETRIES):
            self._follow_replacement()
            fd = self._fd
            if fd is None:
                return  # the mbox is gone: nothing left to delete
            lock = _current_write_lock(self.path, fd, self.store.lock_timeout)
            if lock is not None:
                try:
                    self._commit_locked(fd, lock, deleted)
                finally:
                    lock.release()
                return
        raise _replaced_too_often()

    def _commit_locked(self, fd: int, lock: WriteLock, deleted: Sequence[int]) -> None:
        """UPDATE with the write lock held on the file the name leads to."""
        index = UidIndex.load(hidden_name(self.path, "pop3ng-uidl"))

        def applied(uids: Sequence[str]) -> None:
            index.remove(uids)
            index.save()
        recover(self.path, fd, lock.touch, applied)
        undo_unfinished_append(self.path, fd, index, lock.touch, self.store.format)
        uids = [self.infos[i].uid for i in deleted]
        if unchanged(fd, self._scan.end, self._scan.digest, lock.touch):
            rewrite(self.path, fd, self.records, self._scan.end, deleted, uids, lock.touch, applied)
            return
        current = mbox_format.scan(fd, self.store.format, os.fstat(fd).st_size)
        found = _match(self.records, current.records)
        position = {id(record): k for k, record in enumerate(current.records)}
        doomed = sorted(position[id(found[i])] for i in deleted if found[i] is not None)
        if doomed:
            rewrite(self.path, fd, current.records, current.end, doomed, uids, lock.touch, applied)
        else:
            applied(uids)

    def _follow_replacement(self) -> None:
        """After another program replaced the mbox (a rename over it), use the new file."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        fd = self._fd
        if fd is None:
            return
        st = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino):
            return
        self._fd = _open_mbox(self.path, create=False)
        self._located = None
        os.close(fd)
        if self._fd is not None:
            st = os.fstat(self._fd)
            self._file_id = (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self._committing is not None:  # (a connection lost during UPDATE: close after it)
            self._close_requested = True
            return
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        lock, self._session_lock = self._session_lock, None
        if lock is not None:
            lock.release()


def _identity(record: "mbox_format.Record") -> tuple:
    """What makes two records the same message: ``From_`` line, identifying fields (the
    fingerprint) and body octets -- not offsets, nor header fields mail clients add."""
    return (record.from_line, record.fingerprint, record.body_digest)


def _match(snapshot: Sequence["mbox_format.Record"],
           current: Sequence["mbox_format.Record"]) -> List[Optional["mbox_format.Record"]]:
    """For each snapshot record, the current record that is the same message, or None; identical
    copies are paired in file order."""
    groups: Dict[tuple, List["mbox_format.Record"]] = {}
    for record in current:
        groups.setdefault(_identity(record), []).append(record)
    found: List[Optional["mbox_format.Record"]] = []
    for record in snapshot:
        same = groups.get(_identity(record))
        found.append(same.pop(0) if same else None)
    return found


class MboxMessageFile:
    """A message streamed from the mbox: ``read(n)`` gives unquoted octets, at most a line piece
    more than ``n`` are held."""

    def __init__(self, fd: int, record: "mbox_format.Record", fmt: str) -> None:
        self._reader = mbox_format.MessageReader(fd, record.content_start, record.content_end, fmt)
        self._pending = b""
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed message")
        if n is None or n < 0:
            pending, self._pending = self._pending, b""
            return pending + b"".join(self._reader.chunks())
        parts, have = [self._pending], len(self._pending)
        while have < n:
            chunk = self._reader.next_chunk()
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        out, self._pending = data[:n], data[n:]
        return out

    def close(self) -> None:
        self.closed = True


__all__ = ["MboxStore", "MboxMailbox", "MboxMessageFile", "POP3Error"]
