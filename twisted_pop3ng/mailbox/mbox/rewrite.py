"""UPDATE for an mbox: remove messages by compacting the file in place, behind a journal.

Why in place: agents that open the mbox before locking it (Postfix's ``mbox_open`` opens, then
dotlocks; Debian Policy's "fcntl first" order; Python's ``mailbox.mbox``) would append to the old
file after a rename replaced it, and that mail would be lost. Compacting in place keeps the inode.

Why a journal: in-place compaction interrupted by a crash leaves a damaged file. So the new
octets from the first removed message on (the kept messages after it and everything appended
since the snapshot) are first written, with fsync, to ``.NAME.pop3ng-journal``; only then is the
mbox overwritten from that offset, fsynced and truncated. Whoever next takes the write lock
(:func:`recover`) finishes an interrupted rewrite. The journal records the file's length before
(``old_len``) and after (``new_len``) and a digest of the octets ``[new_len, old_len)`` the
compaction never writes: they tell "not truncated yet" (mail appended by an MTA after the crash
lies beyond ``old_len`` and is carried over) from "truncated" (appended mail lies beyond
``new_len``, already in place).

What to remove is decided by the store (:meth:`..store.MboxMailbox.commit_now`): the session's
records when the snapshot part of the file is unchanged, else the records of a fresh scan that
are the same messages as the session's deleted ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Callable, Dict, List, Sequence, Tuple

from twisted_pop3ng._fs import create_temporary, fsync_directory
from twisted_pop3ng.errors import TemporaryFailure
from twisted_pop3ng.mailbox.mbox.format import Record
from twisted_pop3ng.mailbox.mbox.locking import hidden_name

CHUNK = 1 << 20
log = logging.getLogger(__name__)


def journal_path(mbox_path: str) -> str:
    return hidden_name(mbox_path, "pop3ng-journal")


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _digest(fd: int, start: int, end: int, touch: Callable[[], None] = lambda: None) -> str:
    """SHA-256 (hex) of the octets ``[start, end)``, read in chunks."""
    h = hashlib.sha256()
    while start < end:
        data = os.pread(fd, min(CHUNK, end - start), start)
        if not data:
            break
        h.update(data)
        start += len(data)
        touch()
    return h.hexdigest()


def _remove_stale_temporaries(mbox_path: str) -> None:
    """Remove what killed writers left half-written beside the mbox: a journal or a UIDL index
    (``create_temporary``'s ``PATH.tmp.*``).

    Both are written only under the write lock, which the caller now holds: any there is stale.
    Looked for only before a rewrite (which costs far more than a directory listing), not at
    every lock: a mail spool directory can hold many thousands of names."""
    directory = os.path.dirname(mbox_path) or "."
    prefixes = tuple(os.path.basename(hidden_name(mbox_path, suffix)) + ".tmp."
                     for suffix in ("pop3ng-journal", "pop3ng-uidl"))
    for name in os.listdir(directory):
        if name.startswith(prefixes):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError as error:  # (another user's file in a sticky spool: left, said)
                log.warning("cannot remove the stale temporary file %s: %s", name, error)
            else:
                log.warning("removed %s, left by a writer that was killed", name)


def _write_journal(path: str, header: Dict, body: Callable[[int], int]) -> None:
    """The journal: the body (written by ``body(fd)``, returning its length), the JSON header,
    and the header's length in 16 digits; fsynced and renamed into place."""
    directory = os.path.dirname(path) or "."
    tmp, fd = create_temporary(path)
    try:
        try:
            header["body_len"] = body(fd)
            trailer = json.dumps(header).encode("ascii")
            _write_all(fd, trailer + b"%016d" % len(trailer), header["body_len"])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_directory(directory)


def _read_header(fd: int) -> Dict:
    size = os.fstat(fd).st_size
    length = int(os.pread(fd, 16, size - 16))
    return json.loads(os.pread(fd, length, size - 16 - length))


def unchanged(fd: int, end: int, digest: bytes, touch: Callable[[], None]) -> bool:
    """Whether the file's first ``end`` octets still have this SHA-256 (read again in chunks)."""
    return os.fstat(fd).st_size >= end and _digest(fd, 0, end, touch) == digest.hex()


def rewrite(mbox_path: str, fd: int, records: Sequence[Record], scanned_end: int, deleted: Sequence[int],
            deleted_uids: Sequence[str], touch: Callable[[], None],
            on_applied: Callable[[Sequence[str]], None]) -> None:
    """Remove the records at ``deleted`` (write lock held; ``records`` describe the file's first
    ``scanned_end`` octets as they are now: :func:`unchanged` or a scan under this lock);
    ``deleted_uids`` leave the index once the file is rewritten."""
    st = os.fstat(fd)
    snapshot_end = scanned_end
    if st.st_size < snapshot_end:
        raise TemporaryFailure("The mbox shrank while it was locked")
    doomed = set(deleted)
    first = min(doomed)
    start = records[first].start
    copies: List[Tuple[int, int]] = [(r.start, r.end) for i, r in enumerate(records) if i >= first and i not in doomed]
    copies.append((snapshot_end, st.st_size))
    new_len = start + sum(end - begin for begin, end in copies)

    def body(journal_fd: int) -> int:
        written = 0
        for begin, end in copies:
            while begin < end:
                data = os.pread(fd, min(CHUNK, end - begin), begin)
                if not data:
                    raise TemporaryFailure("The mbox shrank while it was rewritten")
                _write_all(journal_fd, data, written)
                written += len(data)
                begin += len(data)
                touch()
        return written

    header = {"dev": st.st_dev, "ino": st.st_ino, "start": start, "old_len": st.st_size, "new_len": new_len,
              "leftover": _digest(fd, new_len, st.st_size), "deleted": list(deleted_uids)}
    path = journal_path(mbox_path)
    _remove_stale_temporaries(mbox_path)
    _write_journal(path, header, body)
    _apply(path, fd, touch, on_applied)


def _apply(path: str, fd: int, touch: Callable[[], None], on_applied: Callable[[Sequence[str]], None]) -> None:
    """Overwrite the mbox from ``start`` with the journal's body, fsync, truncate, fsync; then
    ``on_applied(deleted UIDLs)`` and remove the journal."""
    journal_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        header = _read_header(journal_fd)
        offset, done = header["start"], 0
        while done < header["body_len"]:
            data = os.pread(journal_fd, min(CHUNK, header["body_len"] - done), done)
            if not data:
                raise TemporaryFailure("The mbox journal is truncated")
            _write_all(fd, data, offset + done)
            done += len(data)
            touch()
        os.fsync(fd)
        os.ftruncate(fd, header["start"] + header["body_len"])
        os.fsync(fd)
    finally:
        os.close(journal_fd)
    on_applied(header["deleted"])
    os.unlink(path)
    fsync_directory(os.path.dirname(path) or ".")


def recover(mbox_path: str, fd: int, touch: Callable[[], None],
            on_applied: Callable[[Sequence[str]], None]) -> None:
    """Finish a rewrite a crash interrupted (write lock held); nothing to do without a journal."""
    path = journal_path(mbox_path)
    try:
        journal_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        header = _read_header(journal_fd)
    finally:
        os.close(journal_fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (header["dev"], header["ino"]):
        aside = "%s.orphan-%d" % (path, int(time.time()))
        log.warning("mbox journal %s belongs to a replaced mbox: moved to %s", path, aside)
        os.rename(path, aside)
        return
    old_len, new_len, size = header["old_len"], header["new_len"], st.st_size
    if size >= old_len and _digest(fd, new_len, old_len) == header["leftover"]:
        log.warning("finishing the interrupted rewrite of %s", mbox_path)
        if size > old_len:  # mail appended after the crash: carried over in a new journal
            old_body = header["body_len"]

            def body(new_fd: int) -> int:
                source = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    done = 0
                    for src, begin, end in ((source, 0, old_body), (fd, old_len, size)):
                        while begin < end:
                            data = os.pread(src, min(CHUNK, end - begin), begin)
                            if not data:
                                raise TemporaryFailure("The mbox journal is truncated")
                            _write_all(new_fd, data, done)
                            done += len(data)
                            begin += len(data)
                    return done
                finally:
                    os.close(source)
            header.update(old_len=size, new_len=new_len + size - old_len,
                          leftover=_digest(fd, new_len + size - old_len, size))
            _write_journal(path, header, body)
        _apply(path, fd, touch, on_applied)
    else:  # truncated: the rewrite was complete; only the bookkeeping is left
        on_applied(header["deleted"])
        os.unlink(path)
        fsync_directory(os.path.dirname(path) or ".")
