"""The maildir index: a maildir's snapshot (files, UIDLs, wire sizes), kept so a login need not list
or read 100,000 files again, and brought up to date from what changed when something did.

The file ``pop3ng-index`` in the maildir is text, replaced atomically (tmp + fsync + rename)::

    pop3ng-index 2
    dirs CUR NEW          each INO:MTIME_NS, or "-" when not settled ("dirs -": neither is)
    uidmap INO:MTIME_NS:SIZE                               only with a pop3ng-uidl-map (below)
    SIZE UID FILE                                          one row per message, in message order

``FILE`` is ``cur/NAME`` or ``new/NAME``, with ``%``, space, CR and LF percent-escaped.

Rules of trust:

* the rows of a directory *are* its messages while it keeps the recorded inode and mtime (a
  *settled* stamp, see :mod:`.snapshot` for when a stamp is settled), and the maildir's
  ``pop3ng-uidl-map`` (UIDLs kept from Dovecot, :mod:`.dovecot_uidlist`) is still the one the
  ``uidmap`` line records, or still absent: every delivery, move, flag change and deletion in a
  maildir renames or unlinks an entry, which changes its directory's mtime;
* a directory whose stamp changed or was not settled is listed again, and only the names not in
  its rows are read (:mod:`.incremental`); when that cannot place them (a name sorting between
  known messages, two names of one base name) both directories are listed (:func:`scan`), and
  still only messages not known by base name are read;
* anything unparsable, a FILE outside ``cur/``/``new/``, an invalid UIDL or a negative size: the
  index is ignored and rebuilt. UIDLs derive from base names (and the UIDL map, which is never
  rewritten), so a rebuild never changes one.
* the file itself is read only when it is a regular file of at most :data:`MAX_INDEX_BYTES`,
  opened without following a symlink or waiting for a FIFO (:func:`_read_index`); it is written as
  a new file under an unpredictable name, then renamed (:func:`twisted_pop3ng._fs.write_atomically`).

Besides the file, the last snapshots stay in memory (bounded by :data:`MAX_CACHED_MESSAGES`), so a
later login in the same process costs a few ``stat`` calls, plus a listing of what changed.

The file is written at logout (:func:`flush`), after the session, not during the login: after a
scan, and after updates once they changed a sizeable share of the rows (:func:`worth_writing`).
An older file is still a consistent snapshot (its stamps are its rows'), so a process reading it
only brings it up to date; rewriting 100,000 rows at every logout of a maildir that receives mail
all day would cost more than that.

A scan (:func:`scan`) lists both directories and reads only the messages whose size it does not
know; on a cold login to a big maildir that is every message, read by this process and a forked
helper side by side (:mod:`.measure`) while the rows are built (:mod:`.listing`).
"""

from __future__ import annotations

import bisect
import os
import re
import stat
from array import array
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, cast

from twisted_pop3ng.interfaces import MessageInfo, MessageTable
from twisted_pop3ng._fs import write_atomically
from twisted_pop3ng.mailbox.maildir import dovecot_uidlist, incremental, listing as rows
from twisted_pop3ng.mailbox.maildir.names import ESCAPES, base_name, escape_name, unescape_name
from twisted_pop3ng.mailbox.maildir.listing import UIDS as _UIDS, delivery_order, order_key  # noqa: F401 (re-exported)
from twisted_pop3ng.mailbox.maildir.measure import FORK_MIN, TOO_LARGE, UNREADABLE, VANISHED, Measurement, measure  # noqa: F401
from twisted_pop3ng.mailbox.maildir.snapshot import (REMOTE_SETTLE_NS, SUBDIRS, DirStamp, Snapshot, clock,
                                                     settled, stamp, stat_dirs)

INDEX_NAME = "pop3ng-index"
INDEX_HEADER = "pop3ng-index 2"
#: Kept for the deprecated ``maildir_index`` module: how old a stamp must be to go into the file.
SETTLE_NS = REMOTE_SETTLE_NS
#: Messages kept in the in-process cache over all maildrops (~350 bytes each, ~430 with the
#: directory listings an update compares with, see :attr:`.Snapshot.listings`).
MAX_CACHED_MESSAGES = 300_000
#: An index file is read when it is at most this large (about 600,000 messages at a usual 100
#: octets a row), or larger but no more than :data:`INDEX_PER_DIRECTORY_BYTE` times the sizes of
#: new/ and cur/ together (:func:`index_limit`): reading and parsing one costs a few times its size
#: in memory, so a forged one must not be read whatever its size, but a real one grows with the
#: directories it lists. A larger one is ignored and not written again.
MAX_INDEX_BYTES = 64 << 20
#: Index octets allowed per octet of directory size above :data:`MAX_INDEX_BYTES`. A directory
#: entry takes at least its name and 8 octets on ext4 (names and a header on XFS, twice the name
#: on btrfs); a row is the name, its UIDL (mostly the name again) and a size: at most about 3
#: times an entry.
INDEX_PER_DIRECTORY_BYTE = 4
#: The index is read as the message files are (see :func:`_read_index`).
_INDEX_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: After updates, the file is rewritten once the rows changed since it was written reach this
#: share of the messages (1/64), or :data:`WRITE_DRIFT_MAX` rows: a process reading an older file
#: measures those again, which costs less than writing every row at every logout.
WRITE_DRIFT_SHARE = 64
WRITE_DRIFT_MAX = 4096

Signature = Tuple[int, int, int, int]

_FILES = re.compile(r"(?:cur|new)/[^/\n\x00.][^/\n\x00]*(?:\n(?:cur|new)/[^/\n\x00.][^/\n\x00]*)*")


def signature(path: str) -> Signature:
    """(cur inode, cur mtime, new inode, new mtime) of ``path``."""
    dirs = stat_dirs(path)
    return stamp(dirs["cur"]) + stamp(dirs["new"])


def _file_signature(path: str, dir_fd: Optional[int] = None) -> Optional[Tuple[int, int, int]]:
    try:
        if dir_fd is not None:
            st = os.stat(INDEX_NAME, dir_fd=dir_fd, follow_symlinks=False)
        else:
            st = os.stat(path + "/" + INDEX_NAME, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def worth_writing(snapshot: Snapshot) -> bool:
    """Whether the rows changed since the file was written are worth writing it again."""
    drift = snapshot.drift
    if drift <= 0:
        return False
    return drift >= WRITE_DRIFT_MAX or drift * WRITE_DRIFT_SHARE >= len(snapshot.files)


# -- the file ---------------------------------------------------------------------------------------

def index_limit(dirs: Optional[Dict[str, os.stat_result]]) -> int:
    """The largest index file read for a maildir whose new/ and cur/ are ``dirs`` (their
    ``stat``; None: not known, :data:`MAX_INDEX_BYTES`). Asked only of a file larger than that,
    so that a login's checks cost nothing for it."""
    if dirs is None:
        return MAX_INDEX_BYTES
    listed = sum(dirs[sub].st_size for sub in SUBDIRS if sub in dirs)
    return max(MAX_INDEX_BYTES, INDEX_PER_DIRECTORY_BYTE * listed)


def _read_index(path: str, dirs: Optional[Dict[str, os.stat_result]] = None
                ) -> Optional[Tuple[bytes, os.stat_result]]:
    """The index file's contents and ``fstat``, or None when it is not a regular file of at most
    :func:`index_limit` octets for ``dirs`` (the ``stat`` of new/ and cur/) or changed while it
    was read; raises OSError as ``open`` does.

    A user who can write to the maildir must not hang or exhaust the server through it (audit F8):
    no symlink is followed (``/dev/zero``), ``O_NONBLOCK`` and ``S_ISREG`` keep a FIFO from
    blocking the open or the read, the size bounds the read (a sparse terabyte), and a short read
    is not taken as the end."""
    fd = os.open(path + "/" + INDEX_NAME, _INDEX_FLAGS)
    try:
        st = os.fstat(fd)
        size = st.st_size
        if not stat.S_ISREG(st.st_mode) or (size > MAX_INDEX_BYTES and size > index_limit(dirs)):
            return None
        parts: List[bytes] = []
        total = 0
        while total <= size:  # one octet more than fstat knows: a file that grew is seen
            chunk = os.read(fd, size + 1 - total)
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total != size:
        return None  # rewritten meanwhile (not by a server: it replaces the file): rebuilt
    return b"".join(parts) if len(parts) != 1 else parts[0], st


def load(path: str, dirs: Optional[Dict[str, os.stat_result]] = None) -> Optional[Snapshot]:
    """The snapshot stored in ``path``'s index, or None when missing, old, corrupt, not a regular
    file or larger than :func:`index_limit` for ``dirs`` (then the maildir is scanned and the index
    rewritten if it fits)."""
    try:
        read = _read_index(path, dirs)
        if read is None:
            return None
        source, st = _Text(read[0]), read[1]
        del read
        with rows.gc_paused(len(source.raw) > 64 * FORK_MIN):  # about FORK_MIN rows or more
            snapshot = _parse(source)
    except (OSError, ValueError, UnicodeError, OverflowError):  # (a size beyond 64 bits)
        return None
    if snapshot is not None:
        snapshot.stored = (st.st_ino, st.st_mtime_ns, st.st_size)
    return snapshot


class _Text:
    """The index file's octets, handed to :func:`_parse` so that it holds the only reference:
    each copy of a million rows is ~75 MB, and the parse drops them as soon as it can."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def take(self) -> str:
        raw, self.raw = self.raw, b""
        return raw.decode("utf-8", "surrogateescape")


def _parse(source: _Text) -> Optional[Snapshot]:
    text = source.take()
    header_end = text.find("\n")
    dirs_end = text.find("\n", header_end + 1)
    if header_end < 0 or dirs_end < 0:
        return None
    header, dirs = text[:header_end], text[header_end + 1:dirs_end]
    if header != INDEX_HEADER or not dirs.startswith("dirs "):
        return None
    start = dirs_end + 1
    uidmap: Optional[dovecot_uidlist.Stamp] = None
    if text.startswith("uidmap ", start):
        line_end = text.find("\n", start)
        if line_end < 0:
            return None
        ino, mtime, size = map(int, text[start + 7:line_end].split(":"))
        uidmap = (ino, mtime, size)
        start = line_end + 1
    stamps: Dict[str, Optional[DirStamp]] = {"cur": None, "new": None}
    if dirs != "dirs -":
        cur, new = dirs[5:].split(" ")
        for sub, field in (("cur", cur), ("new", new)):
            if field != "-":
                ino, mtime = map(int, field.split(":"))
                stamps[sub] = (ino, mtime)
    # The rows as one split: every LF made a space (one copy of the text, while the text itself is
    # let go), then the header's words skipped.
    skip = text.count(" ", 0, start) + text.count("\n", 0, start)
    spaced = text.replace("\n", " ")
    del text
    parts = spaced.split(" ")
    del spaced
    del parts[:skip]
    if parts and parts[-1] == "":
        parts.pop()
    if len(parts) % 3:
        return None
    uids, files = parts[1::3], parts[2::3]
    sizes = array("q", map(int, parts[0::3]))
    del parts  # (the size strings)
    if sizes and (min(sizes) < 0 or not _UIDS.fullmatch("\n".join(uids))):
        return None
    joined = "\n".join(files)
    if files and not _FILES.fullmatch(joined):
        return None
    if "%" in joined:
        files = [unescape_name(f) if "%" in f else f for f in files]
    infos: Sequence[MessageInfo]
    if len(uids) >= FORK_MIN:
        infos = MessageTable(uids, sizes)  # columns, as a scan makes them
    else:
        infos = rows.sized_infos(rows.unsized_infos(uids), list(sizes))
    snapshot = Snapshot(stamps, files, infos, uidmap=uidmap)
    snapshot.durable = frozenset(sub for sub, st in stamps.items() if st is not None)
    return snapshot


def _dirs_line(snapshot: Snapshot) -> str:
    """The ``dirs`` line: a stamp only where it is durable and its rows are all measured."""
    unsure = snapshot.provisional_dirs()
    fields = []
    for sub in ("cur", "new"):
        st = snapshot.dirs.get(sub)
        ok = st is not None and sub in snapshot.durable and sub not in unsure
        fields.append("%d:%d" % st if ok and st is not None else "-")
    return "dirs -" if fields == ["-", "-"] else "dirs %s %s" % tuple(fields)


def save(path: str, snapshot: Snapshot) -> None:
    """Write the index; a failure only costs a rescan next time."""
    dirs = _dirs_line(snapshot)
    if snapshot.uidmap is not None:
        dirs += "\nuidmap %d:%d:%d" % snapshot.uidmap
    files, infos = snapshot.files, snapshot.infos
    if snapshot.provisional:
        keep = [base_name(f[4:]) not in snapshot.provisional for f in files]
        files = [f for f, k in zip(files, keep) if k]
        infos = [i for i, k in zip(infos, keep) if k]
    joined = "\n".join(files)
    if any(raw in joined.replace("\n", "") for raw, _ in ESCAPES[:3]) or "\r" in joined:
        files = [escape_name(f) for f in files]
    uids, sizes = incremental.columns(infos)
    rows = "".join(["%d %s %s\n" % row for row in zip(sizes, uids, files)])
    data = ("%s\n%s\n%s" % (INDEX_HEADER, dirs, rows)).encode("utf-8", "surrogateescape")
    try:
        if len(data) > MAX_INDEX_BYTES and len(data) > index_limit(stat_dirs(path)):
            return  # no login would read it: writing it at every logout would be all cost
        write_atomically(os.path.join(path, INDEX_NAME), data)
    except OSError:
        return
    snapshot.stored = _file_signature(path)
    snapshot.dirty = False
    snapshot.drift = 0


def flush(path: str, snapshot: Snapshot) -> None:
    """Write the index if the snapshot is not in it yet. Called at logout, still under the lock,
    so that writing a large index is not part of the login's latency."""
    if snapshot.dirty:
        save(path, snapshot)

# -- listing and measuring -------------------------------------------------------------------------

def scan(path: str, previous: Optional[Snapshot], uid_for: Callable[[str], str]) -> Snapshot:
    """List ``new/`` and ``cur/``; sizes come from ``previous``, ``,W=`` or reading the file.

    The files are read by this process and a forked helper (see :mod:`.maildir_measure`) while
    the rows are built (see :mod:`.maildir_listing`).
    """
    now = clock()
    before = stat_dirs(path)
    new = rows.listing(path, "new")
    cur = rows.listing(path, "cur")
    after = stat_dirs(path)
    with rows.gc_paused(len(new) + len(cur) >= FORK_MIN):
        names = new + cur  # listing order: positions below len(new) are in new/
        text = "\n".join(names)
        # Cold (nothing known, no ,W= field): everything is read, and the helper is forked before
        # anything else is built, so that fewer pages are shared with it (each costs a copy).
        cold = (previous is None or not previous.files) and ",W=" not in text
        bases: Optional[List[str]] = None
        sizes: Optional[List[Optional[int]]] = None
        todo: Sequence[int] = range(len(names))
        todo_names: Sequence[str] = names
        if not cold:
            bases = rows.base_names(names, text)
            sizes = rows.known_sizes(bases, previous.sizes_by_base() if previous else {})
            todo = [i for i, size in enumerate(sizes) if size is None]
            todo_names = list(map(names.__getitem__, todo))
        with Measurement(path, todo_names, bisect.bisect_left(todo, len(new))) as measurement:
            measurement.start()
            positions, ordered_bases, uids, files = rows.message_rows(new, cur, uid_for, text, bases)
            measured = measurement.finish()
            if sizes is not None:
                for i, size in zip(todo, measured):
                    sizes[i] = size
                measured = array("q", sizes)  # type: ignore[arg-type]
            provisional: Set[str] = set()
            infos: Sequence[MessageInfo]
            if measured and min(measured) < 0:  # VANISHED, UNREADABLE or TOO_LARGE
                ordered = rows.permuted(measured, positions)
                keep = _failures(positions, ordered, todo, ordered_bases, measurement, provisional)
                files, uids, ordered = (list(map(x.__getitem__, keep))
                                        for x in cast(Tuple[List[Any], ...], (files, uids, ordered)))
                infos = MessageTable(uids, ordered)
            elif len(uids) >= FORK_MIN:
                # Columns, not 100,000 objects: the sizes stay in listing order (STAT sums
                # them as they are), message k's is measured[positions[k]]; the positions
                # as an array (8 bytes each, not an int object and a list slot: 36).
                infos = MessageTable(uids, measured, array("q", positions))
            else:  # a list: each RETR reads a row, and a list row costs no Python call
                infos = list(map(MessageInfo, uids, rows.permuted(measured, positions)))
    fresh = Snapshot({}, files, infos, frozenset(provisional))
    unsure = fresh.provisional_dirs()  # measured again next time: the directory is listed again
    # A base name listed twice (a move by link + unlink, half done): both directories are listed
    # again next time, as long as it lasts; a name that is no row must not hide in a listing.
    twice = len(positions) < len(new) + len(cur)
    durable = set()
    for sub, names in (("new", new), ("cur", cur)):
        st = before[sub]
        ok = (stamp(st) == stamp(after[sub]) and settled(st.st_dev, st.st_mtime_ns, now)
              and sub not in unsure and not twice)
        fresh.dirs[sub] = stamp(st) if ok else None
        if ok and now - st.st_mtime_ns >= REMOTE_SETTLE_NS:
            durable.add(sub)
        if len(files) == len(new) + len(cur):  # every name is a message's
            fresh.listings[sub] = names
    fresh.durable = frozenset(durable)
    return fresh


def _failures(positions: List[int], ordered: List[int], todo: Sequence[int], bases: List[str],
              measurement: Measurement, provisional: Set[str]) -> List[int]:
    """The rows (indexes in ``ordered``, whose base names are ``bases``) to keep when some files
    could not be measured."""
    keep = []
    for k, i in enumerate(positions):
        if ordered[k] == VANISHED:
            # Moved or deleted meanwhile (the next session sees it), or no message: a directory,
            # a FIFO or a socket is not listed (it holds no message RETR could send).
            continue
        if ordered[k] in (UNREADABLE, TOO_LARGE):
            # Unreadable (permissions): one bad file must not lock the user out of the rest;
            # list it with its size on disk, RETR answers -ERR, measure it next time. Too large
            # to read now (a sparse terabyte, or past the scan's budget): listed the same way,
            # RETR streams it, a later scan measures it if it can.
            on_disk = measurement.size_on_disk(bisect.bisect_left(todo, i))
            if on_disk is None:
                continue
            ordered[k] = on_disk
            provisional.add(bases[k])
        keep.append(k)
    return keep


# -- the in-process cache ---------------------------------------------------------------------------

_cache: "OrderedDict[str, Snapshot]" = OrderedDict()
#: The messages of all cached snapshots (kept, not summed at every login: with thousands of
#: maildrops cached, the sum was the login's largest cost).
_cached_messages = 0


def _remember(path: str, snapshot: Snapshot) -> None:
    global _cached_messages
    previous = _cache.pop(path, None)
    if previous is not None:
        _cached_messages -= len(previous.infos)
    if len(snapshot.infos) > MAX_CACHED_MESSAGES:
        return
    _cache[path] = snapshot
    _cached_messages += len(snapshot.infos)
    while _cached_messages > MAX_CACHED_MESSAGES:
        _, evicted = _cache.popitem(last=False)
        _cached_messages -= len(evicted.infos)


def forget(path: Optional[str] = None) -> None:
    """Drop cached snapshots (all, or one maildir's); tests use it to simulate a new process."""
    global _cached_messages
    if path is None:
        _cache.clear()
        _cached_messages = 0
    else:
        previous = _cache.pop(path, None)
        if previous is not None:
            _cached_messages -= len(previous.infos)


class _MapChanged(Exception):
    """The UIDL map changed while a snapshot was being updated: scan instead."""


def snapshot(path: str, uid_for: Callable[[str], str], key: Optional[str] = None,
             dir_fd: Optional[int] = None) -> Snapshot:
    """The current snapshot of ``path`` (the caller holds the maildrop lock). ``key``: the
    maildir's name in the in-process cache when ``path`` is not it (``/proc/self/fd/N``, see
    :meth:`.store.MaildirStore.open_root`). ``dir_fd``: the maildir opened, for the checks of
    an unchanged maildir (every login's path), which then cost no walk through /proc."""
    if key is None:
        key = path
    stats = stat_dirs(path, dir_fd)
    uidmap = dovecot_uidlist.stamp(path, dir_fd)
    cached = _cache.get(key)
    stored: Optional[Snapshot] = None
    base = cached if cached is not None and cached.uidmap == uidmap else None
    if base is None:
        stored = load(path, stats)
        if stored is not None and stored.uidmap == uidmap:
            base = stored
    if base is not None:
        try:
            fresh = _brought_up_to_date(path, key, base, stats, uid_for)
        except _MapChanged:
            fresh = None
        if fresh is not None:
            if not fresh.dirty and (worth_writing(fresh) or not _file_holds(path, fresh, dir_fd, stats)):
                fresh.dirty = True
            _remember(key, fresh)
            return fresh
    previous = cached or stored
    # UIDLs kept from Dovecot: read only for a scan (then once per version of the map), made
    # from dovecot-uidlist only for a maildir pop3ng never served (no index, nothing cached).
    served_before = cached is not None or _file_signature(path) is not None
    mapping = dovecot_uidlist.uidl_map(path, key, served_before)
    if mapping is not None:
        uid_for = mapping.uid_for
    fresh = scan(path, previous, uid_for)
    fresh.uidmap = None if mapping is None else mapping.stamp
    fresh.dirty = True
    _remember(key, fresh)
    return fresh


def _file_holds(path: str, snapshot: Snapshot, dir_fd: Optional[int] = None,
                dirs: Optional[Dict[str, os.stat_result]] = None) -> bool:
    """Whether the index file still holds ``snapshot`` or an older version of it; else it is
    written at logout. Another process's valid file (a worker of the same server) is left as it is:
    two processes rewriting each other's file at every login would each pay for a write."""
    current = _file_signature(path, dir_fd)
    if current is None:
        return False  # deleted by someone
    if current == snapshot.stored:
        return True
    other = load(path, dirs)  # (damaged, or written by another process)
    if other is None:
        return False
    snapshot.stored = other.stored
    return True


def _brought_up_to_date(path: str, key: str, base: Snapshot, stats: Dict[str, os.stat_result],
                        uid_for: Callable[[str], str]) -> Optional[Snapshot]:
    """``base`` (cached or read from the file, with the current UIDL map) as the directories are
    now: itself when neither changed, else :func:`.incremental.update`."""
    if not base.provisional and all(base.dirs.get(sub) == stamp(stats[sub]) for sub in SUBDIRS):
        return base

    def rule() -> Callable[[str], str]:
        mapping = dovecot_uidlist.uidl_map(path, key, True)
        if (None if mapping is None else mapping.stamp) != base.uidmap:
            raise _MapChanged()
        return uid_for if mapping is None else mapping.uid_for

    # (Measurement by this module's name: what a test puts in its place measures here too.)
    return incremental.update(path, base, stats, rule, lambda *args: Measurement(*args))
