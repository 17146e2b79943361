"""Durable local delivery for ``pop3ng fetch``: Maildir, mbox, or an MDA command.

A destination hands out one *sink* per message (``write`` as the body streams in), then makes a
batch of finished sinks durable in :meth:`commit`. Only after ``commit`` returned may the fetcher
record the messages as delivered and, later, send their ``DELE``.

* **Maildir**: tmp/NAME written as the message arrives, with LF line endings as Unix mail stores
  use (what Dovecot, mutt, fetchmail's MDAs and getmail write; the POP3 transfer's CRLF is undone,
  a CR split from its LF across chunks included); at commit each file is fsynced, renamed into
  new/, and new/ is fsynced once per batch (the Maildir delivery the server's store uses too,
  :mod:`twisted_pop3ng._maildir`). NAME is derived from the account and the UIDL
  (``pop3ng-<digest>``, :func:`~twisted_pop3ng._maildir.keyed_name`), so
  :meth:`MaildirDestination.has` can tell after a crash that a message got as far as new/ (or was
  since moved to cur/ by a mail reader) before the state file recorded it: that is what makes
  delivery exactly-once rather than at-least-once.
* **mbox**: the batch is appended under an exclusive ``lockf`` lock (what mutt and procmail use) in
  mboxrd form (``From `` separator, ``>From`` quoting, LF line endings), then fsynced. The append's
  offset, length and SHA-256 are recorded in the state file first; after a crash a complete append
  (same bytes at the same place) is recognised and a shorter one is cut off, so mbox delivery is
  exactly-once too.
* **MDA**: each message is piped (LF line endings) into ``sh -c CMD``; exit status 0 means delivered.
  A kill between the MDA's exit and the state write re-delivers that one message next time
  (at-least-once): the MDA's own side cannot be inspected.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Sequence

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
    """Deliver into a Maildir with names derived from the account and UIDL (see module doc)."""

    def __init__(self, path: str, account: str) -> None:
        self.path = os.path.abspath(path)
        self.account = account
        make_maildir(self.path)
        self._existing = set()
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(self.path, sub)):
                if name.startswith(KEYED_PREFIX):
                    self._existing.add(base_name(name))

    def name_for(self, uid: str) -> str:
        return keyed_name("%s\0%s" % (self.account, uid))

    def has(self, uid: str) -> bool:
        """True if this message already reached new/ (or cur/) in an earlier, interrupted run."""
        return self.name_for(uid) in self._existing

    def begin(self, uid: str) -> "_MaildirSink":
        return _MaildirSink(self, uid, self.name_for(uid))

    def commit(self, sinks: Sequence["_MaildirSink"]) -> None:
        try:
            for sink in sinks:
                sink.sync()
            publish(self.path, [sink.name for sink in sinks])
        except OSError as error:
            raise DeliveryError("cannot deliver into %s: %s" % (self.path, error))
        self._existing.update(sink.name for sink in sinks)

    def recover(self, state: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _MaildirSink:
    """Streams one message into ``tmp/NAME`` as it arrives, with LF line endings."""

    def __init__(self, destination: MaildirDestination, uid: str, name: str) -> None:
        self.uid = uid
        self.name = name
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


class MboxDestination:
    """Append to an mbox file under ``lockf``, recording each append first (see module doc)."""

    def __init__(self, path: str, account: str) -> None:
        self.path = os.path.abspath(path)
        self.state: Any = None

    def has(self, uid: str) -> bool:
        return False

    def begin(self, uid: str) -> _Spool:
        return _Spool(uid)

    def _open_locked(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        return fd

    def recover(self, state: Any) -> None:
        """Finish what a killed run left: a complete append counts, a partial one is cut off."""
        self.state = state
        pending = state.pending
        if not pending:
            return
        fd = self._open_locked()
        try:
            size = os.fstat(fd).st_size
            offset, end = pending["offset"], pending["end"]
            if size >= end and _digest_at(fd, offset, end) == pending.get("sha256"):
                state.mark_delivered(pending["uids"])
            elif size > offset:
                os.ftruncate(fd, offset)
                os.fsync(fd)
        finally:
            os.close(fd)
        state.set_pending(None)

    def commit(self, sinks: Sequence[_Spool]) -> None:
        if not sinks:
            return
        now = time.time()
        entries = [_mboxrd(s, now) for s in sinks]
        blob = b"".join(entries)
        total = len(blob)
        try:
            fd = self._open_locked()
        except OSError as error:
            raise DeliveryError("cannot open %s: %s" % (self.path, error))
        try:
            offset = os.fstat(fd).st_size
            if self.state is not None:
                self.state.set_pending({"offset": offset, "end": offset + total,
                                        "sha256": hashlib.sha256(blob).hexdigest(),
                                        "uids": {s.uid: None for s in sinks}})
            data = memoryview(blob)
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError as error:
            try:
                os.ftruncate(fd, offset)
            except OSError:
                pass
            raise DeliveryError("cannot append to %s: %s" % (self.path, error))
        finally:
            os.close(fd)
            for sink in sinks:
                sink.abort()

    def close(self) -> None:
        pass


class MDADestination:
    """Pipe each message into ``sh -c COMMAND``; exit status 0 means the MDA took it."""

    #: Record each message as soon as its MDA succeeded: a later failure must not hide it.
    batch_limit = 1

    def __init__(self, command: str, account: str) -> None:
        self.command = command

    def has(self, uid: str) -> bool:
        return False

    def begin(self, uid: str) -> _Spool:
        return _Spool(uid)

    def recover(self, state: Any) -> None:
        pass

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
    """``kind`` is ``maildir``, ``mbox`` or ``mda``."""
    classes: Dict[str, Any] = {"maildir": MaildirDestination, "mbox": MboxDestination,
                               "mda": MDADestination}
    return classes[kind](target, account)


__all__: List[str] = ["DeliveryError", "MaildirDestination", "MboxDestination", "MDADestination",
                      "open_destination"]
