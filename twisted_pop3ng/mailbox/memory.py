"""An in-memory mailbox store, for embedding and tests.

Same semantics as the maildir backend: snapshot at open, exclusive lock per user within the process,
deletions only on commit, UIDs never reused.
"""

from __future__ import annotations

import io
import itertools
import threading
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

from zope.interface import implementer

from twisted_pop3ng.errors import MailboxInUse, MessageVanished
from twisted_pop3ng.interfaces import IMailbox, IMailboxDelivery, IMailboxStore, IWholeMessageReader, MessageInfo
from twisted_pop3ng.wire import wire_size_of


#: How much of a delivery's source one ``read`` asks for.
READ_SIZE = 1 << 20


@implementer(IMailboxStore, IMailboxDelivery)
class MemoryStore:
    """Maildrops kept in a dict: ``{user: [(uid, message bytes), ...]}``.

    :meth:`deliver` may run in other threads (the LMTP listener's pool) while the reactor thread
    opens and commits maildrops: one lock guards the dict's lists.
    """

    def __init__(self) -> None:
        self.maildrops: Dict[str, List[Tuple[str, bytes]]] = {}
        self._locked: Set[str] = set()
        self._uids = itertools.count(1)
        self._mutex = threading.Lock()

    @classmethod
    def from_spec(cls, rest: str) -> "MemoryStore":
        return cls()

    def deliver(self, user: str, source: Union[bytes, Any]) -> str:
        """Add a message (``bytes``, or a binary file read to its end: :class:`IMailboxDelivery`)
        to ``user``'s maildrop; returns its UIDL."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            message = bytes(source)
        else:
            message = b"".join(iter(lambda: source.read(READ_SIZE), b""))
        with self._mutex:
            uid = "m%d" % next(self._uids)
            self.maildrops.setdefault(user, []).append((uid, message))
        return uid

    def open_mailbox(self, user: str) -> "MemoryMailbox":
        with self._mutex:
            if user in self._locked:
                raise MailboxInUse()
            self._locked.add(user)
            messages = list(self.maildrops.get(user, []))
        return MemoryMailbox(self, user, messages)

    def _unlock(self, user: str) -> None:
        with self._mutex:
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
        with self.store._mutex:
            drop = self.store.maildrops.get(self.user, [])
            drop[:] = [(u, d) for u, d in drop if u not in doomed]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.store._unlock(self.user)
