"""From the names in ``new/`` and ``cur/`` to a snapshot's rows, cheaply for 100,000 names.

Used by :func:`.maildir_index.scan`; each step works on whole lists (a joined string checked by
``str``/``bytes`` methods, ``map`` over C functions, one sort) rather than a Python statement per
name, which on a small VM costs about a microsecond per name and statement:

* :func:`message_rows`: the order of messages (delivery time; see :func:`order_key`), one entry
  per base name, with each message's UIDL and file; for the usual names (all zero-padded
  standard names, no two with one base name) by :func:`standard_rows`, without a regular
  expression or a statement per name, otherwise by :func:`delivery_positions` and :func:`uids_of`;
* :func:`unsized_infos` / :func:`sized_infos`: the :class:`MessageInfo` objects, made in message
  order so that they lie in memory in the order STAT and LIST read them;
* :func:`gc_paused`: no garbage collection while all that is built.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import re
import types
from collections import deque
from contextlib import contextmanager
from itertools import islice, repeat
from operator import itemgetter, lt
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

from twisted_pop3ng.interfaces import MessageInfo
from twisted_pop3ng.mailbox.maildir.names import uid_for as maildir_uid_for
from twisted_pop3ng.wire.limits import MAX_UID_LENGTH
from twisted_pop3ng.wire.uid import UID_OCTETS, UID_PATTERN

_W_FIELD = re.compile(r",W=(\d+)")
#: The largest ``,W=`` size taken from a name (18 digits: sizes are kept as 64-bit integers).
MAX_W_FIELD = 10 ** 18 - 1
#: Standard names start TIME.M<usec>; usec is not zero-padded, so order numerically, not by name.
_ORDER = re.compile(r"(\d{1,20})(?:\.M(\d{1,9}))?")
#: Lines that all start TIME(10).M<usec>(6): their order as strings is delivery order.
_PADDED = re.compile(r"\d{10}\.M\d{6}(?!\d)[^\n]*(?:\n\d{10}\.M\d{6}(?!\d)[^\n]*)*")
UIDS = re.compile(r"%s(?:\n%s)*" % (UID_PATTERN, UID_PATTERN))
#: The same tests as ``_PADDED`` and ``UIDS`` on ASCII text, by ``bytes`` methods (3-4 times
#: cheaper for 100,000 names): digits made ``0``, and the octets a UIDL may hold.
_ZERO_DIGITS = bytes.maketrans(b"123456789", b"0" * 9)
_PADDED_LINE = b"\n0000000000.M000000"
_UID_OCTETS = UID_OCTETS
#: Distinct ``:info`` suffixes (flag sets) :func:`strip_infos` removes one ``replace`` at a time.
MAX_INFOS = 16


def listing(path: str, sub: str) -> List[str]:
    """The names in ``path/sub``, without dot files. ``sub`` is opened without following a
    symlink (ELOOP): a ``cur/`` swapped for a link to another user's must not list that one's
    UIDLs."""
    fd = os.open(path + "/" + sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        names = os.listdir(fd)
    finally:
        os.close(fd)
    if "\n." in "\n" + "\n".join(names):  # one scan of the text, not a test per name
        names = [name for name in names if name[:1] != "."]
    return names


@contextmanager
def gc_paused(big: bool) -> Iterator[None]:
    """No cyclic garbage collection meanwhile: building 100,000 entries would otherwise run a few
    hundred collections, some over the whole heap, and while a forked helper lives each page they
    touch must be copied. A scan makes no reference cycles.

    After a ``big`` scan its objects, all long-lived, are moved to the oldest generation at once
    (``gc.freeze`` + ``gc.unfreeze``) instead of being traversed by the collection that would
    follow (30-45 ms for 100,000 messages in the server). Not after small scans: the young objects
    of the rest of the process move too, so their cycles wait for a full collection.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if big and gc.get_freeze_count() == 0:  # somebody else's frozen objects stay frozen
            gc.freeze()
            gc.unfreeze()
        gc.enable()


T = TypeVar("T")


def permuted(values: Sequence[T], positions: List[int]) -> List[T]:
    """``[values[i] for i in positions]``, by one ``itemgetter`` (no Python call per item; for
    an ``array`` it also makes the new ints in the order of ``positions``)."""
    if len(positions) < 2:
        return [values[i] for i in positions]
    return list(itemgetter(*positions)(values))


# -- order ------------------------------------------------------------------------------------------

def order_key(base: str) -> Tuple[int, int, str]:
    """Delivery order: seconds, then microseconds of standard names; other names after, by name."""
    match = _ORDER.match(base)
    if match is None:
        return (1 << 64, 0, base)
    return (int(match.group(1)), int(match.group(2) or 0), base)


def padded(text: str, count: int) -> bool:
    """Whether each of the ``count`` lines of ``text`` (names or base names joined by LF) starts
    TIME(10).M<usec>(6) (``_PADDED``); for ASCII text without a LF inside a name (the usual case)
    see :func:`padded_octets`."""
    if text.isascii() and count and text.count("\n") == count - 1:
        return padded_octets(text.encode("ascii"), count)
    return _PADDED.fullmatch(text) is not None


def padded_octets(raw: bytes, count: int) -> bool:
    """:func:`padded` for ``count`` names in ASCII, none holding a LF: two searches of the text
    with its digits made ``0`` (each line must begin ``0000000000.M000000`` and not go on with
    another ``0``), 3-4 times cheaper than the regular expression."""
    zeros = raw.translate(_ZERO_DIGITS)
    first = _PADDED_LINE[1:]
    return (zeros.startswith(first) and not zeros.startswith(first + b"0")
            and zeros.count(_PADDED_LINE) == count - 1 and _PADDED_LINE + b"0" not in zeros)


def delivery_order(bases: List[str]) -> List[str]:
    """``bases`` sorted by :func:`order_key`; when every name has the zero-padded standard form,
    plain string order is the same, and much cheaper than a Python key per name."""
    ordered = sorted(bases)
    if ordered and not padded("\n".join(ordered), len(ordered)):
        ordered.sort(key=order_key)
    return ordered


def delivery_positions(bases: List[str], text: Optional[str] = None) -> List[int]:
    """Positions in ``bases`` in delivery order (as :func:`delivery_order`), one per base name:
    of a name listed twice (moved from new/ to cur/ during the listing) the last listed.
    ``text``: the names (or ``bases``) joined by LF, when the caller has it."""
    n = len(bases)
    if len(set(bases)) == n:
        positions: List[int] = list(range(n))
    else:
        positions = sorted(dict(zip(bases, range(n))).values())
    if padded("\n".join(bases) if text is None else text, n):
        positions.sort(key=bases.__getitem__)
    else:
        positions.sort(key=list(map(order_key, bases)).__getitem__)
    return positions


# -- rows -------------------------------------------------------------------------------------------

def base_names(names: List[str], text: str) -> List[str]:
    """The base name of each of ``names`` (joined by LF in ``text``): by :func:`split_bases` when
    no name holds a LF, else one ``partition`` per name."""
    if names and text.count("\n") == len(names) - 1:
        bases = split_bases(text, len(names))
        if bases is not None:
            return bases
    return [name.partition(":")[0] for name in names]


def split_bases(text: str, count: int) -> Optional[List[str]]:
    """The base names of the ``count`` names joined by LF in ``text`` (none holding a LF), or None
    when there are too many distinct ``:info`` parts (see :func:`strip_infos`). When every name
    ends in the same ``:info`` and has no other colon (a maildir whose messages all have the
    same flags), one ``split`` on ``:info`` + LF."""
    colon = text.find(":")
    if colon < 0:
        return text.split("\n")
    end = text.find("\n", colon)
    suffix = text[colon:] if end < 0 else text[colon:end]
    if text.endswith(suffix) and text.count(":") == count:
        parts = text.split(suffix + "\n")
        if len(parts) == count:  # every line ends in ``suffix``, its only colon
            parts[-1] = parts[-1][:-len(suffix)]
            return parts
    stripped = strip_infos(text)
    return None if stripped is None else stripped.split("\n")


def strip_infos(text: str) -> Optional[str]:
    """``text`` (names, one a line) with each line cut at its first ``:``; None when the lines
    end in more than :data:`MAX_INFOS` distinct ``:info`` parts.

    Each round removes every occurrence of one ``:INFO\\n`` (a colon to the end of its line).
    That only ever cuts a line at one of its colons, so once no colon is left each line is what
    preceded its first colon, whichever suffixes were removed on the way.
    """
    text += "\n"
    for _ in range(MAX_INFOS):
        colon = text.find(":")
        if colon < 0:
            return text[:-1]
        end = text.index("\n", colon)
        text = text.replace(text[colon:end + 1], "\n")
    return None if ":" in text else text[:-1]


def valid_uids(bases: List[str]) -> bool:
    """Whether every base name is a valid UIDL (``UIDS``: 1-70 octets in 0x21-0x7E): the octets
    of the joined names checked by one ``bytes.translate``, then the lengths."""
    text = "\n".join(bases)
    if not bases or not text.isascii():
        return False
    # Once the UIDL octets are deleted only the LF between names may be left.
    return (len(text.encode("ascii").translate(None, _UID_OCTETS)) == len(bases) - 1
            and max(map(len, bases)) <= MAX_UID_LENGTH and min(map(len, bases)) >= 1)


def uids_of(bases: List[str], uid_for: Callable[[str], str]) -> List[str]:
    """``uid_for`` of each base name; for the maildir backend's own rule (a valid base name is its
    own UIDL), one check of the joined names instead of a call per name."""
    if uid_for is maildir_uid_for and valid_uids(bases):
        return bases
    return list(map(uid_for, bases))


class Rows(NamedTuple):
    """A snapshot's rows before their sizes are known (see :func:`message_rows`)."""

    #: Indexes in ``new + cur`` in message order, one per base name.
    positions: List[int]
    #: Each message's base name, in message order.
    bases: List[str]
    #: Each message's UIDL, in message order.
    uids: List[str]
    #: Each message's ``new/NAME`` or ``cur/NAME``, in message order.
    files: List[str]


def message_rows(new: List[str], cur: List[str], uid_for: Callable[[str], str],
                 text: Optional[str] = None, bases: Optional[List[str]] = None) -> Rows:
    """The messages listed in ``new`` and ``cur``: their order, base names, UIDLs and files.
    ``text``: the names of ``new + cur`` joined by LF, when the caller has it; ``bases``: their
    base names, when the caller has them."""
    names = new + cur
    if text is None:
        text = "\n".join(names)
    rows = standard_rows(new, cur, uid_for, names, text)
    if rows is not None:
        return rows
    if bases is None:
        bases = base_names(names, text)
    positions = delivery_positions(bases, text)
    ordered = permuted(bases, positions)
    return Rows(positions, ordered, uids_of(ordered, uid_for), prefixed(new, cur, positions))


def standard_rows(new: List[str], cur: List[str], uid_for: Callable[[str], str], names: List[str],
                  text: str) -> Optional[Rows]:
    """:func:`message_rows` for the usual names, or None: ASCII zero-padded standard names (so
    that string order is delivery order), no LF in a name, no base name listed twice, few
    distinct ``:info`` parts.

    The names are sorted as they are, and the base names and files made from the sorted names
    joined by LF (``replace`` and ``split``): so they are made in message order, where the
    session reads them, and the checks run over the joined text or lists in memory order, not a
    regular expression or a statement per name. Sorting whole names gives base-name order unless
    one base name is a prefix of another; the base names, strictly increasing, prove it.
    """
    n = len(names)
    if not n or text.count("\n") != n - 1 or not text.isascii():
        return None
    raw = text.encode("ascii")
    if not padded_octets(raw, n):
        return None
    positions = list(range(n))
    positions.sort(key=names.__getitem__)
    sorted_text = "\n".join(permuted(names, positions))
    ordered = split_bases(sorted_text, n)
    if ordered is None:
        return None
    if not all(map(lt, ordered, islice(ordered, 1, None))):
        return None  # a base name listed twice, or a prefix of another
    # Names of UIDL octets only have base names of UIDL octets; padded ones are not empty.
    if (uid_for is maildir_uid_for and len(raw.translate(None, _UID_OCTETS)) == n - 1
            and max(map(len, ordered)) <= MAX_UID_LENGTH):
        uids = ordered
    else:
        uids = list(map(uid_for, ordered))
    if new and cur:
        files = permuted(_prefixed_lines(new, cur, text), positions)
    else:
        sub = "new/" if new else "cur/"
        files = (sub + sorted_text.replace("\n", "\n" + sub)).split("\n")
    return Rows(positions, ordered, uids, files)


def _prefixed_lines(new: List[str], cur: List[str], text: str) -> List[str]:
    """``new/NAME`` or ``cur/NAME`` for each of ``new + cur`` (listing order), from ``text``
    (those names joined by LF, none holding a LF): a ``replace`` and a ``split`` per directory."""
    cut = sum(map(len, new)) + len(new)  # where the cur/ names begin
    lines: List[str] = []
    if new:
        lines += ("new/" + text[:cut - 1].replace("\n", "\nnew/")).split("\n")
    if cur:
        lines += ("cur/" + text[cut:].replace("\n", "\ncur/")).split("\n")
    return lines


def known_sizes(bases: List[str], known: Dict[str, int]) -> List[Optional[int]]:
    """Sizes known without reading a file: from ``known`` (by base name), then from a ``,W=``
    field in the name; None for the others. A ``,W=`` field beyond :data:`MAX_W_FIELD` is no
    size (a name anyone who can deliver may choose): that file is read."""
    sizes: List[Optional[int]] = list(map(known.get, bases))
    if ",W=" in "\n".join(bases):
        for i, base in enumerate(bases):
            if sizes[i] is None and ",W=" in base:
                match = _W_FIELD.search(base)
                if match and len(match.group(1)) <= 18:  # (and no int of a million digits)
                    sizes[i] = int(match.group(1))
    return sizes


def prefixed(new: List[str], cur: List[str], positions: List[int]) -> List[str]:
    """``new/NAME`` or ``cur/NAME`` for each of ``positions`` in ``new + cur``."""
    return permuted(["new/" + name for name in new] + ["cur/" + name for name in cur], positions)


def _fast_infos_possible() -> bool:
    try:
        names = tuple(field.name for field in dataclasses.fields(MessageInfo))
    except TypeError:
        return False
    return names == ("uid", "size") and not hasattr(MessageInfo, "__post_init__")


#: Whether :func:`unsized_infos` may set the fields of a :class:`MessageInfo` itself.
FAST_INFOS = _fast_infos_possible()


def _slot_setters() -> Optional[Tuple[Callable[[MessageInfo, str], None], Callable[[MessageInfo, int], None]]]:
    """The ``__set__`` of the ``uid`` and ``size`` slots when MessageInfo has ``__slots__``."""
    uid, size = (vars(MessageInfo).get(name) for name in ("uid", "size"))
    if isinstance(uid, types.MemberDescriptorType) and isinstance(size, types.MemberDescriptorType):
        return uid.__set__, size.__set__
    return None


#: With slots, a field is set by its descriptor: half the cost of ``object.__setattr__``.
_SLOT_SETTERS = _slot_setters()


def unsized_infos(uids: List[str]) -> List[MessageInfo]:
    """:class:`MessageInfo` objects with these UIDLs, to get their sizes from :func:`sized_infos`.

    The fields are set as the frozen dataclass's own ``__init__`` sets them (by the slot
    descriptors where MessageInfo has ``__slots__``, else ``object.__setattr__``) but without a
    Python call per object, most of it while the sizes are still being measured: for 100,000
    objects with slots about 0.03 s then and 0.01 s after, instead of 0.1-0.16 s after (2-core test
    VM). Only while MessageInfo is exactly ``uid, size`` without ``__post_init__``; otherwise the
    constructor builds them in :func:`sized_infos`.
    """
    if not FAST_INFOS:
        return uids  # type: ignore[return-value]
    # One whole object first. CPython (3.11) keeps a class's attribute values compactly, with
    # one key table shared by its instances, only if the keys are known before many instances
    # exist; 100,000 instances made bare first got a dictionary each (336 bytes, not 96) and so
    # did every MessageInfo made after them in the process.
    MessageInfo("", 0)
    n = len(uids)
    infos = list(map(object.__new__, repeat(MessageInfo, n)))
    if _SLOT_SETTERS is not None:
        deque(map(_SLOT_SETTERS[0], infos, uids), maxlen=0)
    else:
        deque(map(object.__setattr__, infos, repeat("uid", n), uids), maxlen=0)
    return infos


def sized_infos(infos: List[MessageInfo], sizes: List[int]) -> List[MessageInfo]:
    """Complete the objects of :func:`unsized_infos` (the same list, in the same order)."""
    if not FAST_INFOS:
        return list(map(MessageInfo, infos, sizes))  # type: ignore[arg-type]
    if _SLOT_SETTERS is not None:
        deque(map(_SLOT_SETTERS[1], infos, sizes), maxlen=0)
    else:
        deque(map(object.__setattr__, infos, repeat("size", len(infos)), sizes), maxlen=0)
    return infos
