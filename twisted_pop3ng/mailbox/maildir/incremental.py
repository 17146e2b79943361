"""A snapshot brought up to date from what changed in ``new/`` and ``cur/`` since it was taken.

A delivery, a move from new/ to cur/, a flag change or a deletion changes one directory's stamp
(:mod:`.snapshot`). :func:`update` lists again only the directories whose stamp changed or was not
settled, compares each listing with the snapshot's rows of that directory, and measures only the
names it did not know: a delivery into a 100,000-message maildir costs one ``readdir`` of new/ and
the reading of one file, not the whole cold scan.

Rules of this module:

* a listing is compared with the directory's last listing, kept in memory (:func:`differences`:
  only the part between the first and the last difference is compared name by name), or, after
  the snapshot was read from the index file, with the rows (sets of ``sub/NAME`` strings);
* a name that left a directory and one that arrived with the same base name (new/ -> cur/, a flag
  change) is the same message: its row keeps its place, UIDL and size, only its file changes;
* arrivals whose base names sort after the last message (deliveries, named by their time) are
  appended in delivery order; their sizes come from a ``,W=`` field or from reading the file;
* anything else -- an arrival that sorts between known messages, two names with one base name --
  returns None, and the caller lists both directories (:func:`.index.scan`), still measuring only
  the unknown names: rare, and then as correct as a scan by construction;
* files listed with their size on disk (:attr:`.Snapshot.provisional`: unreadable, too large to
  read now) are measured again at every login until they are measured;
* a directory with at least :data:`BIG_DIR` messages whose stamp is not settled yet by a few
  milliseconds (the change came in the current clock tick) is listed after waiting them out, so
  that the next login need not list it again.
"""

from __future__ import annotations

import os
import time
from array import array
from itertools import compress, count
from operator import attrgetter, ne
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from twisted_pop3ng.interfaces import MessageInfo, MessageTable
from twisted_pop3ng.mailbox.maildir import listing as rows
from twisted_pop3ng.mailbox.maildir.measure import FORK_MIN, TOO_LARGE, UNREADABLE, VANISHED, Measurement
from twisted_pop3ng.mailbox.maildir.names import base_name
from twisted_pop3ng.mailbox.maildir.snapshot import (REMOTE_SETTLE_NS, SUBDIRS, DirStamp, Snapshot, clock,
                                                     settle_wait, settled, stamp)
from twisted_pop3ng.wire import uidl_body

#: Messages in a directory from which an unsettled stamp is waited out before listing it.
BIG_DIR = 4096
#: The longest such wait (a few clock ticks).
MAX_SETTLE_WAIT_NS = 20 * 10 ** 6
#: Up to this many files are looked up in the rows one by one (``list.index``), more at once.
FEW = 16

UidFor = Callable[[str], str]


class Listing:
    """One directory listed again: its names, and the stamp they are complete for (None: not settled)."""

    __slots__ = ("sub", "names", "stamp", "durable")

    def __init__(self, path: str, sub: str, st: os.stat_result, big: bool) -> None:
        device, mtime = st.st_dev, st.st_mtime_ns
        now = clock()
        if big:
            now = _wait_to_settle(device, mtime, now)
        self.sub = sub
        self.names = rows.listing(path, sub)
        after = os.stat(path + "/" + sub, follow_symlinks=False)
        ok = stamp(after) == stamp(st) and settled(device, mtime, now)
        self.stamp: Optional[DirStamp] = stamp(st) if ok else None
        self.durable = ok and now - mtime >= REMOTE_SETTLE_NS


def differences(before: List[str], after: List[str]) -> Tuple[List[str], List[str]]:
    """The names only in ``after`` and those only in ``before`` (two listings of one directory).

    Compared in C, not name by name in Python: the two lists agree up to the first difference and
    from the last one on (a directory lists in the same order while it does not change, and one
    change moves no other name), and only the part between is compared as sets. Any other change
    of order makes that part longer, never the result wrong: a name is listed once, so a name in
    the common head or tail of one list is not in the middle of the other."""
    if before == after:
        return [], []
    shortest = min(len(before), len(after))
    head = next(compress(count(), map(ne, before, after)), shortest)
    tail = next(compress(count(), map(ne, reversed(before), reversed(after))), shortest)
    tail = min(tail, len(before) - head, len(after) - head)
    old = set(before[head:len(before) - tail])
    new = set(after[head:len(after) - tail])
    return list(new.difference(old)), list(old.difference(new))


def _wait_to_settle(device: int, mtime: int, now: int) -> int:
    """Sleep until a listing of the directory would be settled, if that is at most
    :data:`MAX_SETTLE_WAIT_NS` away; the clock after."""
    wait = settle_wait(device, mtime, now)
    if wait <= 0 or wait > MAX_SETTLE_WAIT_NS:
        return now
    deadline = time.monotonic_ns() + MAX_SETTLE_WAIT_NS
    while wait > 0 and time.monotonic_ns() < deadline:
        time.sleep(wait / 1e9)
        now = clock()
        wait = settle_wait(device, mtime, now)
    return now


def prefixed(sub: str, names: List[str]) -> List[str]:
    """``sub/NAME`` for each name (one ``replace`` and ``split`` when no name holds a LF)."""
    text = "\n".join(names)
    if not names or text.count("\n") != len(names) - 1:
        return [sub + "/" + name for name in names]
    return (sub + "/" + text.replace("\n", "\n" + sub + "/")).split("\n")


def _positions(files: List[str], wanted: Set[str]) -> Dict[str, int]:
    """Where each of ``wanted`` is in ``files`` (those that are)."""
    if len(wanted) <= FEW:
        found = {}
        for name in wanted:
            try:
                found[name] = files.index(name)
            except ValueError:
                pass
        return found
    return {name: i for i, name in enumerate(files) if name in wanted}


def columns(infos: Sequence[MessageInfo]) -> Tuple[List[str], "array[int]"]:
    """New lists of the UIDLs and sizes of ``infos``, in message order."""
    if MessageTable in type(infos).__mro__:
        table: MessageTable = infos  # type: ignore[assignment]
        order = table.order
        sizes = table.sizes if order is None else rows.permuted(table.sizes, list(order))
        return list(table.uids), array("q", sizes)
    return list(map(attrgetter("uid"), infos)), array("q", map(attrgetter("size"), infos))


def _measure(path: str, files: List[str], measurement_type: Callable[..., Measurement]) -> List[int]:
    """Wire sizes of ``files`` (``sub/NAME``): a size, :data:`VANISHED`, or for a file that could
    not be measured its size on disk negated minus 10 (see :func:`_provisional_size`)."""
    order = sorted(range(len(files)), key=lambda i: files[i][:3] != "new")  # new/ first
    names = [files[i][4:] for i in order]
    boundary = sum(1 for i in order if files[i][:3] == "new")
    out = [VANISHED] * len(files)
    with rows.gc_paused(len(files) >= FORK_MIN):
        with measurement_type(path, names, boundary) as measurement:
            measurement.start()
            measured = measurement.finish()
            for j, i in enumerate(order):
                size = measured[j]
                if size in (UNREADABLE, TOO_LARGE):
                    on_disk = measurement.size_on_disk(j)
                    size = VANISHED if on_disk is None else -10 - on_disk
                out[i] = size
    return out


def _provisional_size(size: int) -> Optional[int]:
    """The size on disk of a file :func:`_measure` could not measure, else None."""
    return -10 - size if size <= -10 else None


def update(path: str, previous: Snapshot, stats: Dict[str, os.stat_result],
           uid_for: Callable[[], UidFor], measurement: Callable[..., Measurement] = Measurement) -> Optional[Snapshot]:
    """``previous`` brought up to date, or None when the changes need both directories listed.

    ``stats``: ``stat`` of new/ and cur/ taken now; ``uid_for``: gives the UIDL rule (called only
    when a message arrived); ``measurement``: what measures the unknown files (:class:`.Measurement`,
    or what the caller has in its place). ``previous`` itself is returned, its stamps completed, when nothing
    changed."""
    listings = [Listing(path, sub, stats[sub], previous.counts()[sub] >= BIG_DIR)
                for sub in SUBDIRS if previous.dirs.get(sub) is None or previous.dirs[sub] != stamp(stats[sub])]
    added: List[str] = []
    removed: Set[str] = set()
    known: Optional[Set[str]] = None
    for listing in listings:
        before = previous.listings.get(listing.sub)
        if before is not None:
            arrived, left = differences(before, listing.names)
            added.extend(prefixed(listing.sub, arrived))
            removed.update(prefixed(listing.sub, left))
            continue
        if known is None:
            known = set(previous.files)  # (the strings keep their hashes: ~2 ms for 100,000)
        _compare(previous, listing, known, added, removed)
    dirs = dict(previous.dirs)
    durable = set(previous.durable)
    listed = dict(previous.listings)
    for listing in listings:
        dirs[listing.sub] = listing.stamp
        (durable.add if listing.durable else durable.discard)(listing.sub)
        listed[listing.sub] = listing.names
    if not added and not removed and not previous.provisional:
        # Nothing changed: the same snapshot (its lists are shared with sessions: not touched).
        previous.dirs, previous.durable, previous.listings = dirs, frozenset(durable), listed
        return previous
    changed = _changed(path, previous, added, removed, uid_for, measurement)
    if changed is not None:
        fresh, vanished = changed
        fresh.dirs, fresh.durable, fresh.listings = dirs, frozenset(durable), listed
        for name in vanished:  # listed, but no message: not known next time either
            names = listed.get(name[:3])
            if names is not None and name[4:] in names:
                names.remove(name[4:])
        return fresh
    return None


def _compare(previous: Snapshot, listing: Listing, known: Set[str], added: List[str], removed: Set[str]) -> None:
    """Add to ``added`` and ``removed`` how ``listing`` differs from the rows of its directory
    (``known``: all the rows' files)."""
    sub = listing.sub
    now = set(prefixed(sub, listing.names))
    arrived = now.difference(known)
    added.extend(arrived)
    if len(now) - len(arrived) == previous.counts()[sub]:
        return  # every message of the directory is still there (the usual delivery)
    if previous.counts()[sub] == len(previous.files):  # (every message in this directory)
        before = known
    else:
        head = sub + "/"
        before = {name for name in previous.files if name.startswith(head)}
    removed.update(before.difference(now))


def _changed(path: str, previous: Snapshot, added: List[str], removed: Set[str],
             uid_for: Callable[[], UidFor], measurement: Callable[..., Measurement]
             ) -> Optional[Tuple[Snapshot, List[str]]]:
    """The snapshot with these changes, and the arrivals that were no message after all."""
    files = previous.files
    where = _positions(files, removed)  # removed names that were messages, and their rows
    leaving = {base_name(name[4:]): name for name in where}
    renames: Dict[int, str] = {}
    arrivals: List[str] = []
    for name in sorted(added):
        old = leaving.pop(base_name(name[4:]), None)
        if old is not None:
            renames[where[old]] = name
        else:
            arrivals.append(name)
    deleted = {where[name] for name in leaving.values()}
    bases = [base_name(name[4:]) for name in arrivals]
    if len(set(bases)) != len(bases):
        return None  # two names of one base name: a scan decides which counts
    if arrivals:
        order = sorted(range(len(arrivals)), key=lambda i: rows.order_key(bases[i]))
        arrivals = [arrivals[i] for i in order]
        bases = [bases[i] for i in order]
        last = len(files) - 1
        while last >= 0 and last in deleted:
            last -= 1
        if last >= 0 and rows.order_key(bases[0]) <= rows.order_key(base_name(files[last][4:])):
            return None  # not after the last message: its number is a scan's to give
    # Sizes: arrivals without a ,W= field, and the rows listed with their size on disk.
    known = rows.known_sizes(bases, {})
    provisional_rows = [i for i, name in enumerate(files) if i not in deleted
                        and base_name(renames.get(i, name)[4:]) in previous.provisional] if previous.provisional else []
    todo = [arrivals[k] for k, size in enumerate(known) if size is None]
    todo += [renames.get(i, files[i]) for i in provisional_rows]
    measured = _measure(path, todo, measurement) if todo else []
    results = iter(measured)
    arrival_sizes = [size if size is not None else next(results) for size in known]
    provisional = set(previous.provisional)
    uids, sizes = columns(previous.infos)
    new_files = list(files)
    for i, name in renames.items():
        new_files[i] = name
    for i in provisional_rows:
        size = next(results)
        base = base_name(new_files[i][4:])
        on_disk = _provisional_size(size)
        if size == VANISHED:
            deleted.add(i)
            provisional.discard(base)
        elif on_disk is not None:
            sizes[i] = on_disk
        else:
            sizes[i] = size
            provisional.discard(base)
    for i in deleted:
        provisional.discard(base_name(files[i][4:]))
    if deleted:
        keep = [i not in deleted for i in range(len(files))]
        new_files = list(compress(new_files, keep))
        uids = list(compress(uids, keep))
        sizes = array("q", compress(sizes, keep))
    appended: List[str] = []
    rule = uid_for() if arrivals else None
    first_new = len(uids)
    vanished: List[str] = []
    for name, base, size in zip(arrivals, bases, arrival_sizes):
        if size == VANISHED:
            vanished.append(name)  # gone meanwhile (or no message: a directory, a FIFO)
            continue
        on_disk = _provisional_size(size)
        if on_disk is not None:
            provisional.add(base)
            size = on_disk
        assert rule is not None
        new_files.append(name)
        uids.append(rule(base))
        sizes.append(size)
        appended.append(name)
    infos: Sequence[MessageInfo]
    if len(uids) >= FORK_MIN:
        infos = MessageTable(uids, sizes)
    else:
        infos = list(map(MessageInfo, uids, sizes))
    fresh = Snapshot(dict(previous.dirs), new_files, infos, frozenset(provisional), previous.uidmap)
    counts = dict(previous.counts())
    for i, name in renames.items():
        counts[files[i][:3]] -= 1
        counts[name[:3]] += 1
    for i in deleted:
        counts[renames.get(i, files[i])[:3]] -= 1
    for name in appended:
        counts[name[:3]] += 1
    fresh.set_counts(counts)
    fresh.stored = previous.stored
    fresh.dirty = previous.dirty
    fresh.drift = previous.drift + len(renames) + len(deleted) + len(appended) + len(provisional_rows)
    if not deleted and previous.uidl_body is not None:  # numbers unchanged: the listing grows
        fresh.uidl_body = previous.uidl_body + uidl_body(enumerate(uids[first_new:], first_new + 1))
    return fresh, vanished


__all__ = ["update", "Listing", "differences", "prefixed", "columns", "BIG_DIR"]
