"""An in-memory mailbox store, for embedding and tests.

Same semantics as the maildir backend: snapshot at open, exclusive lock per user within the process,
deletions only on commit, UIDs never reused.
"""

from __future__ import annotations

import io
import itertools
from typing import Dict, List, Optional, Sequence, Set, Tuple

from zope.interface import implementer

from twisted_pop3ng.errors import MailboxInUse, MessageVanished
from twisted_pop3ng.interfaces import IMailbox, IMailboxStore, IWholeMessageReader, MessageInfo
from twisted_pop3ng.wire import wire_size_of


@implementer(IMailboxStore)
class MemoryStore:
    """Maildrops kept in a dict: ``{user: [(uid, message bytes), ...]}``."""

    def __init__(self) -> None:
        self.maildrops: Dict[str, List[Tuple[str, bytes]]] = {}
        self._locked: Set[str] = set()
        self._uids = itertools.count(1)

    @classmethod
    def from_spec(cls, rest: str) -> "MemoryStore":
        return cls()

    def deliver(self, user: str, message: bytes) -> str:
        uid = "m%d" % next(self._uids)
        self.maildrops.setdefault(user, []).append((uid, message))
        return uid

    def open_mailbox(self, user: str) -> "MemoryMailbox":
        if user in self._locked:
            raise MailboxInUse()
        self._locked.add(user)
        return MemoryMailbox(self, user, list(self.maildrops.get(user, [])))

    def _unlock(self, user: str) -> None:
        self._locked.discard(user)


@implementer(IMailbox, IWholeMessageReader)
class MemoryMailbox:
    def __init__(self, store: MemoryStore, user: str, messages: List[Tuple[str, bytes]]) -> None:
        self.store = store
        self.user = user
        self._messages = messages
        self._closed = False

    def list_messages(self) -> List[MessageInfo]:
        return [MessageInfo(uid, wire_size_of(data)) for uid, data in self._messages]

    def open_message(self, index: int) -> io.BytesIO:
        uid, data = self._messages[index]
        if all(u != uid for u, _ in self.store.maildrops.get(self.user, [])):
            raise MessageVanished()
        return io.BytesIO(data)

    def read_whole(self, index: int, limit: int) -> Optional[bytes]:
        """The optional fast path: a message shorter than ``limit`` as bytes, else None."""
        data = self.open_message(index).getvalue()
        return data if len(data) < limit else None

    def commit(self, deleted: Sequence[int]) -> None:
        doomed = {self._messages[i][0] for i in deleted}
        drop = self.store.maildrops.get(self.user, [])
        drop[:] = [(u, d) for u, d in drop if u not in doomed]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.store._unlock(self.user)
