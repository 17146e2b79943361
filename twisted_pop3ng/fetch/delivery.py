"""Durable local delivery for ``pop3ng fetch``: Maildir, mbox, or an MDA command.

A destination hands out one *sink* per message (``write`` as the body streams in), then makes a
batch of finished sinks durable in :meth:`commit`. Only after ``commit`` returned may the fetcher
record the messages as delivered and, later, send their ``DELE``.

* **Maildir**: tmp/NAME written as the message arrives, with LF line endings as Unix mail stores
  use (what Dovecot, mutt, fetchmail's MDAs and getmail write; the POP3 transfer's CRLF is undone,
  a CR split from its LF across chunks included); at commit each file is fsynced, renamed into
  new/, and new/ is fsynced once per batch (the Maildir delivery the server's store uses too,
  :mod:`twisted_pop3ng._maildir`). NAME is derived from the account and the UIDL
  (``pop3ng-<digest>``, :func:`~twisted_pop3ng._maildir.keyed_name`) and a nonce of the run, so
  :meth:`MaildirDestination.has` can tell after a crash that a message got as far as new/ (or was
  since moved to cur/ by a mail reader) before the state file recorded it: that is what makes
  delivery exactly-once rather than at-least-once. The run writes its nonce and the UIDLs it is
  about to fetch to the state file first (:meth:`MaildirDestination.intend`), and only those
  names count after a crash: a later message that reuses a UIDL (servers that number messages
  afresh once the mailbox is empty) is never taken for the file of an earlier one.
* **mbox**: the batch is appended under an exclusive ``lockf`` lock (what mutt and procmail use) in
  mboxrd form (``From `` separator, ``>From`` quoting, LF line endings), then fsynced. The append's
  offset, length, SHA-256 and the file's identity are recorded in the state file first, and a copy
  of the batch is kept beside it; after a crash a complete append (same bytes at the same place)
  is recognised and a shorter one is cut off -- only when the bytes after the offset are exactly
  the start of that copy, never mail another program appended since -- so mbox delivery is
  exactly-once too, and never destroys someone else's mail.
* **MDA**: each message is piped (LF line endings) into ``sh -c CMD``; exit status 0 means delivered.
  A kill between the MDA's exit and the state write re-delivers that one message next time
  (at-least-once): the MDA's own side cannot be inspected.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from twisted_pop3ng._maildir import (KEYED_PREFIX, TmpFile, base_name, keyed_name, make_maildir,
                                     publish)

#: Messages above this are spooled to a temporary file instead of memory (mbox and MDA).
SPOOL_MEMORY = 1 << 20
_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


class DeliveryError(Exception):
    """The local destination failed; nothing more may be deleted on the server."""


class _Spool:
    """Holds one message in memory, or in a temporary file once it grows large."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.size = 0
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def finish(self) -> None:
        pass

    def chunks(self, size: int = 1 << 20) -> Any:
        self._file.seek(0)
        while True:
            block = self._file.read(size)
            if not block:
                return
            yield block

    def abort(self) -> None:
        self._file.close()


class MaildirDestination:
    """Deliver into a Maildir with names derived from the account, the UIDL and the run's nonce
    (see the module doc)."""

    def __init__(self, path: str, account: str) -> None:
        self.path = os.path.abspath(path)
        self.account = account
        make_maildir(self.path)
        #: tmp/ names of the sinks begun and not yet published or aborted.
        self._writing: Set[str] = set()
        #: The nonce in this run's names (:meth:`intend` records it before the first message).
        self.nonce = secrets.token_hex(8)
        #: UIDL -> LIST size of the messages an interrupted run's intent names and whose file is
        #: in new/ or cur/ (:meth:`recover`).
        self._recovered: Dict[str, Optional[int]] = {}

    def _name(self, uid: str, nonce: str) -> str:
        return keyed_name("%s\0%s\0%s" % (self.account, uid, nonce))

    def name_for(self, uid: str) -> str:
        return self._name(uid, self.nonce)

    def recover(self, state: Any) -> None:
        """Find the files of the messages the last run meant to fetch (its intent in the state
        file) that reached new/ or cur/ before it could record them."""
        intent = state.intent
        if not intent:
            return
        wanted = {self._name(uid, intent["nonce"]): (uid, size) for uid, size in intent["uids"].items()}
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(self.path, sub)):
                found = wanted.get(base_name(name)) if name.startswith(KEYED_PREFIX) else None
                if found is not None:
                    self._recovered[found[0]] = found[1]

    def has(self, uid: str, size: Optional[int] = None) -> bool:
        """True if this message (this UIDL, and the size the server lists now, when both runs
        knew it) reached new/ or cur/ in an interrupted run that meant to fetch it."""
        if uid not in self._recovered:
            return False
        known = self._recovered[uid]
        return known is None or size is None or known == size

    def intend(self, state: Any, todo: Sequence[Tuple[str, Optional[int]]]) -> None:
        """Record, before the first RETR, this run's nonce and the messages it will fetch: what
        :meth:`recover` looks for should the run be killed."""
        state.set_intent({"nonce": self.nonce, "uids": dict(todo)} if todo else None)

    def begin(self, uid: str) -> "_MaildirSink":
        """A sink for one message. Two at once under one name would write the same tmp/ file
        (finding F12): the fetcher never asks for that, and this refuses it if it ever did."""
        name = self.name_for(uid)
        if name in self._writing:
            raise DeliveryError("two messages with the UIDL %r in one run" % uid)
        self._writing.add(name)
        return _MaildirSink(self, uid, name)

    def _done(self, name: str) -> None:
        self._writing.discard(name)

    def commit(self, sinks: Sequence["_MaildirSink"]) -> None:
        try:
            for sink in sinks:
                sink.sync()
            publish(self.path, [sink.name for sink in sinks])
        except OSError as error:
            raise DeliveryError("cannot deliver into %s: %s" % (self.path, error))
        self._writing.difference_update(sink.name for sink in sinks)

    def close(self) -> None:
        pass


class _MaildirSink:
    """Streams one message into ``tmp/NAME`` as it arrives, with LF line endings."""

    def __init__(self, destination: MaildirDestination, uid: str, name: str) -> None:
        self.uid = uid
        self.name = name
        self._destination = destination
        self.size = 0
        self._file = TmpFile(destination.path, name)
        self.tmp_path = self._file.path

    def _open(self) -> None:
        try:
            self._file.open()
        except OSError as error:
            raise DeliveryError("cannot create %s: %s" % (self.tmp_path, error))

    _held_cr = b""

    def write(self, data: bytes) -> None:
        data, self._held_cr = self._held_cr + data, b""
        if data[-1:] == b"\r":
            data, self._held_cr = data[:-1], b"\r"
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        self._write(data)

    def _write(self, data: bytes) -> None:
        self._open()
        try:
            self._file.write(data)
        except OSError as error:
            raise DeliveryError("cannot write %s: %s" % (self.tmp_path, error))
        self.size += len(data)

    def finish(self) -> None:
        self._open()
        if self._held_cr:
            self._held_cr, held = b"", self._held_cr
            self._write(held)

    def sync(self) -> None:
        self._file.sync()

    def abort(self) -> None:
        self._file.abort()
        self._destination._done(self.name)


def _mboxrd(spool: _Spool, when: float) -> bytes:
    """One mboxrd entry: From_ line, LF endings, ``>From`` quoting, a blank line after it."""
    data = b"".join(spool.chunks()).replace(b"\r\n", b"\n")
    data = _FROM_LINE.sub(rb">\1", data)
    if not data.endswith(b"\n"):
        data += b"\n"
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(when)).encode("ascii")
    return b"From MAILER-DAEMON " + stamp + b"\n" + data + b"\n"


def _digest_at(fd: int, start: int, end: int) -> str:
    """SHA-256 of the file's bytes in [start, end): is our append there, whole and unchanged?"""
    digest = hashlib.sha256()
    while start < end:
        block = os.pread(fd, min(1 << 20, end - start), start)
        if not block:
            break
        digest.update(block)
        start += len(block)
    return digest.hexdigest()


def _same_bytes(fd: int, start: int, end: int, copy_path: str) -> bool:
    """Whether the file's bytes in [start, end) are exactly the start of the file ``copy_path``."""
    try:
        copy = os.open(copy_path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        position = 0
        while start + position < end:
            want = min(1 << 20, end - start - position)
            ours = os.pread(copy, want, position)
            if len(ours) != want or os.pread(fd, want, start + position) != ours:
                return False
            position += want
        return True
    finally:
        os.close(copy)


def _file_digest(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    try:
        return _digest_at(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


class MboxDestination:
    """Append to an mbox file under ``lockf``, recording each append first (see module doc).

    Crash recovery cuts off only bytes this fetcher wrote (finding F11): each batch is also
    written, before the append, to a copy beside the state file (``STATE.mbox-append``, not
    fsynced: it only has to outlive a killed process), and the append is recorded with the
    mbox's identity (device, inode). After a kill, what follows the recorded offset is cut off
    only when it is the same file and those bytes are exactly the start of that copy; anything
    else (mail another program appended, a rewritten or replaced mbox) is left as it is, reported
    in :attr:`warnings`, and the batch is delivered again.
    """

    def __init__(self, path: str, account: str) -> None:
        self.path = os.path.abspath(path)
        self.state: Any = None
        #: What recovery left alone for the user to look at (printed by the command line).
        self.warnings: List[str] = []

    def has(self, uid: str, size: Optional[int] = None) -> bool:
        return False

    def intend(self, state: Any, todo: Sequence[Tuple[str, Optional[int]]]) -> None:
        """(Nothing: an append in flight is recorded as ``pending`` instead.)"""

    def begin(self, uid: str) -> _Spool:
        return _Spool(uid)

    def _open_locked(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        return fd

    def _copy_path(self) -> Optional[str]:
        return self.state.path + ".mbox-append" if self.state is not None else None

    def _remove_copy(self) -> None:
        copy = self._copy_path()
        if copy is not None:
            try:
                os.unlink(copy)
            except OSError:
                pass

    def recover(self, state: Any) -> None:
        """Finish what a killed run left: a complete append counts, a partial one of ours is cut
        off, and anything else is left alone and reported."""
        self.state = state
        pending = state.pending
        if not pending:
            self._remove_copy()
            return
        fd = self._open_locked()
        try:
            info = os.fstat(fd)
            size = info.st_size
            offset, end = pending["offset"], pending["end"]
            identity = pending.get("file")
            same_file = identity is None or list(identity) == [info.st_dev, info.st_ino]
            copy = self._copy_path()
            if size >= end and _digest_at(fd, offset, end) == pending.get("sha256"):
                state.mark_delivered(pending["uids"])
            elif size == offset and same_file:
                pass  # killed before a byte was written
            elif (offset < size <= end and same_file and copy is not None
                    and _file_digest(copy) == pending.get("sha256")
                    and _same_bytes(fd, offset, size, copy)):
                os.ftruncate(fd, offset)  # exactly our partial append: nobody else's bytes
                os.fsync(fd)
            else:
                self.warnings.append(
                    "%s was changed by another program after an interrupted append (expected "
                    "our %d octets at offset %d, the file now has %d octets%s): left as it is; "
                    "check it for a partial message at offset %d. The %d message(s) of that append "
                    "are delivered again." % (self.path, end - offset, offset, size,
                                              "" if same_file else " and is another file",
                                              offset, len(pending.get("uids") or ())))
        finally:
            os.close(fd)
        state.set_pending(None)
        self._remove_copy()

    def commit(self, sinks: Sequence[_Spool]) -> None:
        if not sinks:
            return
        now = time.time()
        entries = [_mboxrd(s, now) for s in sinks]
        blob = b"".join(entries)
        total = len(blob)
        copy = self._copy_path()
        if copy is not None:
            try:
                # Before the append is recorded: what recovery compares a partial append with.
                _write_copy(copy, blob)
            except OSError as error:
                raise DeliveryError("cannot write %s: %s" % (copy, error))
        try:
            fd = self._open_locked()
        except OSError as error:
            raise DeliveryError("cannot open %s: %s" % (self.path, error))
        try:
            info = os.fstat(fd)
            offset = info.st_size
            if self.state is not None:
                self.state.set_pending({"offset": offset, "end": offset + total,
                                        "sha256": hashlib.sha256(blob).hexdigest(),
                                        "file": [info.st_dev, info.st_ino],
                                        "uids": {s.uid: None for s in sinks}})
            data = memoryview(blob)
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError as error:
            try:
                os.ftruncate(fd, offset)  # still under our lock: only our own bytes
            except OSError:
                pass
            raise DeliveryError("cannot append to %s: %s" % (self.path, error))
        finally:
            os.close(fd)
            for sink in sinks:
                sink.abort()

    def close(self) -> None:
        if self.state is not None and not self.state.pending:
            self._remove_copy()


def _write_copy(path: str, blob: bytes) -> None:
    """The batch's bytes beside the state file, private, never through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        data = memoryview(blob)
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


class HandOffDestination:
    """A destination that hands each message to another program (an MDA, an MTA): spooled here,
    handed over at :meth:`commit`; nothing of it stays here to look in or to recover."""

    #: Record each message as soon as the other program took it: a later failure must not hide
    #: it (at most one duplicate after a kill); journaled at once, the state file rewritten every
    #: batch (:mod:`.state`).
    batch_limit = 1
    journaled = True
    #: :meth:`commit` waits for the other program: the fetcher runs it in a thread, one at a time.
    blocking = True

    def has(self, uid: str, size: Optional[int] = None) -> bool:
        return False

    def intend(self, state: Any, todo: Sequence[Tuple[str, Optional[int]]]) -> None:
        """(Nothing: each message is journaled as soon as the other program took it.)"""

    def begin(self, uid: str) -> _Spool:
        return _Spool(uid)

    def recover(self, state: Any) -> None:
        pass


class MDADestination(HandOffDestination):
    """Pipe each message into ``sh -c COMMAND``; exit status 0 means the MDA took it.

    ``POP3NG_UIDL`` in the command's environment is the server's UIDL: checked by the client
    (1-70 characters in 0x21-0x7E, so no NUL, space or control character), but still the server's
    choice -- it may hold ``/`` or ``..``, so a command must not use it as a file name as it is.
    """

    def __init__(self, command: str, account: str) -> None:
        self.command = command

    def commit(self, sinks: Sequence[_Spool]) -> None:
        for sink in sinks:
            data = b"".join(sink.chunks()).replace(b"\r\n", b"\n")
            env = dict(os.environ, POP3NG_UIDL=sink.uid)
            try:
                result = subprocess.run(["/bin/sh", "-c", self.command], input=data, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except OSError as error:
                raise DeliveryError("cannot run the MDA: %s" % error)
            finally:
                sink.abort()
            if result.returncode != 0:
                err = result.stderr.decode("utf-8", "replace").strip()[-300:]
                raise DeliveryError("the MDA exited with status %d%s" % (
                    result.returncode, ": " + err if err else ""))

    def close(self) -> None:
        pass


def open_destination(kind: str, target: str, account: str) -> Any:
    """``kind`` is ``maildir``, ``mbox`` or ``mda`` (``forward`` is :mod:`.forward`'s)."""
    classes: Dict[str, Any] = {"maildir": MaildirDestination, "mbox": MboxDestination,
                               "mda": MDADestination}
    return classes[kind](target, account)


__all__: List[str] = ["DeliveryError", "MaildirDestination", "MboxDestination", "MDADestination",
                      "open_destination"]
