"""UIDLs for mbox messages: ``X-UIDL`` when usable, else an identity kept in ``.NAME.pop3ng-uidl``.

An mbox has no per-message name, and offsets change whenever a message before them is removed, so
the index maps a message's *fingerprint* (:func:`..format.fingerprint`: its ``From_`` line,
Message-ID, Date, From, Subject, X-UIDL and stored length -- what another mail client rewriting the
file leaves alone) to the UIDL it was given. Identical copies share a fingerprint and take the
group's UIDLs in file order. A message the index does not know gets its ``X-UIDL`` value when that
is a valid UIDL not used by another message, else ``EPOCH.N`` from a counter that only grows;
EPOCH is random per index, so a lost index never brings back an old UIDL (the messages get new
ones, and a client downloads them once more). Entries of messages gone from the file are dropped.

Format: a first line ``pop3ng-mbox-uidl 1 EPOCH NEXT`` (with ``append:DEV:INO:OFFSET:HEAD`` added while a
delivery appends), then ``FINGERPRINT UIDL`` per message.
Written with tmp + fsync + rename; a missing or damaged index is started afresh.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections import defaultdict, deque
from typing import Deque, Dict, List, Optional, Sequence, Set, Tuple

from twisted_pop3ng._fs import write_atomically
from twisted_pop3ng.mailbox.mbox.format import Record
from twisted_pop3ng.wire import is_valid_uid

MAGIC = "pop3ng-mbox-uidl"
log = logging.getLogger(__name__)


class UidIndex:
    def __init__(self, path: str, epoch: str, next_number: int, entries: List[Tuple[str, str]],
                 pending: Optional[Tuple[int, int, int, bytes]] = None) -> None:
        self.path = path
        self.epoch = epoch
        self.next_number = next_number
        self.entries = entries
        #: A delivery under way: (st_dev, st_ino, offset it appends at, the octets it writes
        #: first). Saved before the append and cleared with the new UIDL: found set by the next
        #: locker, the append was cut short (a kill, a power loss) and never acknowledged
        #: (:func:`..store.undo_unfinished_append`).
        self.pending = pending

    @classmethod
    def load(cls, path: str) -> "UidIndex":
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "r", encoding="ascii") as f:
                lines = f.read(64 << 20).splitlines()
            magic, version, epoch, next_number, *rest = lines[0].split()
            if magic != MAGIC or version != "1" or len(rest) > 1:
                raise ValueError("not an index")
            pending = None
            if rest:
                kind, dev, ino, start, head = rest[0].split(":")
                if kind != "append":
                    raise ValueError("damaged header")
                pending = (int(dev), int(ino), int(start), base64.b64decode(head, validate=True))
            entries = [tuple(line.split()) for line in lines[1:]]
            if any(len(entry) != 2 or not is_valid_uid(entry[1]) for entry in entries):
                raise ValueError("damaged entry")
            return cls(path, epoch, int(next_number), entries, pending)  # type: ignore[arg-type]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, IndexError, UnicodeDecodeError, binascii.Error) as error:
            log.warning("mbox UIDL index %s is damaged (%s): started afresh", path, type(error).__name__)
        return cls(path, os.urandom(4).hex(), 1, [])

    def save(self) -> None:
        text = "%s 1 %s %d" % (MAGIC, self.epoch, self.next_number)
        if self.pending is not None:
            dev, ino, start, head = self.pending
            text += " append:%d:%d:%d:%s" % (dev, ino, start, base64.b64encode(head).decode("ascii"))
        text += "\n"
        text += "".join("%s %s\n" % entry for entry in self.entries)
        write_atomically(self.path, text.encode("ascii"))

    def _new_uid(self, x_uidl: Optional[str], used: Set[str]) -> str:
        if x_uidl is not None and x_uidl not in used:
            return x_uidl
        while True:
            uid = "%s.%d" % (self.epoch, self.next_number)
            self.next_number += 1
            if uid not in used:
                return uid

    def assign(self, records: Sequence[Record]) -> Tuple[List[str], bool]:
        """The UIDL of each record, and whether the index changed (then :meth:`save` it)."""
        groups: Dict[str, Deque[str]] = defaultdict(deque)
        for fp, uid in self.entries:
            groups[fp].append(uid)
        uids: List[Optional[str]] = [groups[r.fingerprint].popleft() if groups.get(r.fingerprint) else None
                                     for r in records]
        used = {uid for uid in uids if uid is not None}
        assigned: List[str] = []
        for record, known in zip(records, uids):
            if known is None:
                known = self._new_uid(record.x_uidl, used)
                used.add(known)
            assigned.append(known)
        entries = [(r.fingerprint, uid) for r, uid in zip(records, assigned)]
        changed = entries != self.entries
        self.entries = entries
        return assigned, changed

    def add(self, record: Record) -> str:
        """The UIDL of a message just appended (delivery), recorded in the index."""
        uid = self._new_uid(record.x_uidl, {uid for _, uid in self.entries})
        self.entries.append((record.fingerprint, uid))
        return uid

    def remove(self, uids: Sequence[str]) -> None:
        doomed = set(uids)
        self.entries = [entry for entry in self.entries if entry[1] not in doomed]
