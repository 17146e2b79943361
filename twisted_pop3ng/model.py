"""The values a session keeps of its maildrop: :class:`MessageInfo` per message, and
:class:`MessageTable`, the same kept as columns for big maildrops.

Rules of this module: standard library only; values, no behaviour beyond reading them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional

#: ``__slots__`` where dataclasses can add them to a frozen class (with a weakref slot, as before):
#: a cold login to a big maildrop makes one of these per message (docs/performance.rst).
_SLOTS = {"slots": True, "weakref_slot": True} if sys.version_info >= (3, 11) else {}


@dataclass(frozen=True, **_SLOTS)  # type: ignore[call-overload, unused-ignore]
class MessageInfo:
    """What the session knows of one message from login on: its UIDL and its wire size.

    ``size`` is the number of octets the client receives (CRLF line endings, before dot-stuffing).
    ``uid`` is 1-70 characters in 0x21-0x7E, unique in the maildrop and never reused.
    """

    uid: str
    size: int


class MessageTable(Sequence[MessageInfo]):
    """A read-only sequence of :class:`MessageInfo` kept as columns, for big maildrops.

    ``uids`` in message order; ``sizes`` (any sequence of ints, e.g. an ``array``) in the order
    of ``order``: message ``k`` has size ``sizes[order[k]]`` (``order`` None: the same order).
    A :class:`MessageInfo` is made only when one is asked for, and :meth:`total_size` sums the
    column: a cold login needs only the count and the total (STAT), and making an object per
    message and putting the sizes in message order was a measurable part of it.
    ``list_messages`` may return one; the server keeps it as it is (it never changes).
    """

    __slots__ = ("uids", "sizes", "order", "_list")

    def __init__(self, uids: Sequence[str], sizes: Sequence[int],
                 order: Optional[Sequence[int]] = None) -> None:
        if len(order if order is not None else sizes) != len(uids):
            raise ValueError("a MessageTable needs one size (or order entry) per UIDL")
        self.uids = uids
        self.sizes = sizes
        self.order = order
        self._list: Optional[List[MessageInfo]] = None

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.materialized()[index]
        if self._list is not None:
            return self._list[index]
        size = self.sizes[index if self.order is None else self.order[index]]
        return MessageInfo(self.uids[index], size)

    def __iter__(self) -> Iterator[MessageInfo]:
        return iter(self.materialized())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (MessageTable, list, tuple)):
            return len(self) == len(other) and self.materialized() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def total_size(self) -> int:
        order = self.order
        if order is None or len(order) == len(self.sizes):  # every size is a message's
            return sum(self.sizes)
        return sum(map(self.sizes.__getitem__, order))

    def materialized(self) -> List[MessageInfo]:
        """All rows as MessageInfo objects (made once, then kept)."""
        if self._list is None:
            sizes = self.sizes if self.order is None else [self.sizes[i] for i in self.order]
            self._list = list(map(MessageInfo, self.uids, sizes))
        return self._list

    def __repr__(self) -> str:
        return "<MessageTable of %d messages>" % len(self)


__all__ = ["MessageInfo", "MessageTable"]
