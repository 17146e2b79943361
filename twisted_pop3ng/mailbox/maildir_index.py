"""The maildir index: a maildir's snapshot (files, UIDLs, wire sizes), kept so a login need not list
or read 100,000 files again.

The file ``pop3ng-index`` in the maildir is text, replaced atomically (tmp + fsync + rename)::

    pop3ng-index 2
    dirs CUR_INO:CUR_MTIME_NS NEW_INO:NEW_MTIME_NS        ("dirs -" when not settled)
    SIZE UID FILE                                          one row per message, in message order

``FILE`` is ``cur/NAME`` or ``new/NAME``, with ``%``, space, CR and LF percent-escaped.

Rules of trust:

* the rows *are* the snapshot while both directories keep the recorded inode and mtime: every
  delivery, move, flag change and deletion in a maildir renames or unlinks an entry, which changes
  its directory's mtime. A signature is recorded only when it was stable across the listing and the
  mtime was at least :data:`SETTLE_NS` old, so a change within the same clock tick as the listing
  cannot hide behind an unchanged mtime;
* otherwise the directories are listed again and only messages not known by base name are read;
* anything unparsable, a FILE outside ``cur/``/``new/``, an invalid UIDL or a negative size: the
  index is ignored and rebuilt. UIDLs derive from base names, so a rebuild never changes one.

Besides the file, the last snapshots stay in memory (bounded by :data:`MAX_CACHED_MESSAGES`), so a
second login in the same process costs two ``stat`` calls.
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from typing import Dict, FrozenSet, List, Optional, Tuple

from ..interfaces import MessageInfo
from ..wire import wire_size

INDEX_NAME = "pop3ng-index"
INDEX_HEADER = "pop3ng-index 2"
#: A directory mtime younger than this when listed is not trusted next time (clock tick, NFS).
SETTLE_NS = 2 * 10 ** 9
#: Messages kept in the in-process cache over all maildrops (~350 bytes each).
MAX_CACHED_MESSAGES = 300_000
#: One read measures a message up to this size; larger ones are streamed.
SMALL_READ = 1 << 16

Signature = Tuple[int, int, int, int]

_W_FIELD = re.compile(r",W=(\d+)")
#: Standard names start TIME.M<usec>; usec is not zero-padded, so order numerically, not by name.
_ORDER = re.compile(r"(\d{1,20})(?:\.M(\d{1,9}))?")
#: A name whose order as a string may differ from delivery order (not TIME(10).M<usec>(6)...).
_UNPADDED = re.compile(r"^(?!\d{10}\.M\d{6}(?!\d))", re.MULTILINE)
_UIDS = re.compile(r"[\x21-\x7e]{1,70}(?:\n[\x21-\x7e]{1,70})*")
_FILES = re.compile(r"(?:cur|new)/[^/\n\x00.][^/\n\x00]*(?:\n(?:cur|new)/[^/\n\x00.][^/\n\x00]*)*")
_ESCAPES = (("%", "%25"), (" ", "%20"), ("\r", "%0D"), ("\n", "%0A"))


class Snapshot:
    """The messages of a maildir at one moment: ``files[i]`` holds ``infos[i]``."""

    __slots__ = ("signature", "files", "infos", "stored", "dirty", "provisional")

    def __init__(self, signature: Optional[Signature], files: List[str],
                 infos: List[MessageInfo], provisional: FrozenSet[str] = frozenset()) -> None:
        self.signature = signature
        self.files = files
        self.infos = infos
        #: Base names of unreadable files, listed with their size on disk: never remembered.
        self.provisional = provisional
        #: (inode, mtime, size) of the index file holding this snapshot, when known.
        self.stored: Optional[Tuple[int, int, int]] = None
        #: True while the index file does not hold this snapshot yet (see :func:`flush`).
        self.dirty = False

    def sizes_by_base(self) -> Dict[str, int]:
        sizes = {base_name(f[4:]): info.size for f, info in zip(self.files, self.infos)}
        for base in self.provisional:
            sizes.pop(base, None)
        return sizes


def base_name(filename: str) -> str:
    return filename.partition(":")[0]


def signature(path: str) -> Signature:
    cur = os.stat(os.path.join(path, "cur"))
    new = os.stat(os.path.join(path, "new"))
    return (cur.st_ino, cur.st_mtime_ns, new.st_ino, new.st_mtime_ns)


def _file_signature(path: str) -> Optional[Tuple[int, int, int]]:
    try:
        st = os.stat(os.path.join(path, INDEX_NAME))
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def order_key(base: str) -> Tuple[int, int, str]:
    """Delivery order: seconds, then microseconds of standard names; other names after, by name."""
    match = _ORDER.match(base)
    if match is None:
        return (1 << 64, 0, base)
    return (int(match.group(1)), int(match.group(2) or 0), base)


def delivery_order(bases: List[str]) -> List[str]:
    """``bases`` sorted by :func:`order_key`; when every name has the zero-padded standard form,
    plain string order is the same, and much cheaper than a Python key per name."""
    ordered = sorted(bases)
    if ordered and _UNPADDED.search("\n".join(ordered)):
        ordered.sort(key=order_key)
    return ordered


def _settled(sig: Signature, now_ns: int) -> bool:
    return max(sig[1], sig[3]) <= now_ns - SETTLE_NS


# -- the file ---------------------------------------------------------------------------------------

def _escape(name: str) -> str:
    for raw, quoted in _ESCAPES:
        name = name.replace(raw, quoted)
    return name


def _unescape(name: str) -> str:
    for raw, quoted in reversed(_ESCAPES):
        name = name.replace(quoted, raw)
    return name


def load(path: str) -> Optional[Snapshot]:
    """The snapshot stored in ``path``'s index, or None when missing, old or corrupt."""
    try:
        with open(os.path.join(path, INDEX_NAME), "rb") as f:
            st = os.fstat(f.fileno())
            text = f.read().decode("utf-8", "surrogateescape")
        header, dirs, body = text.split("\n", 2)
        if header != INDEX_HEADER or not dirs.startswith("dirs "):
            return None
        sig: Optional[Signature] = None
        if dirs != "dirs -":
            cur, new = dirs[5:].split(" ")
            sig = tuple(int(x) for x in cur.split(":") + new.split(":"))  # type: ignore
            if len(sig) != 4:
                return None
        parts = body.replace("\n", " ").split(" ")
        if parts[-1] == "":
            parts.pop()
        if len(parts) % 3:
            return None
        sizes = list(map(int, parts[0::3]))
        uids, files = parts[1::3], parts[2::3]
        if sizes and (min(sizes) < 0 or not _UIDS.fullmatch("\n".join(uids))):
            return None
        joined = "\n".join(files)
        if files and not _FILES.fullmatch(joined):
            return None
        if "%" in joined:
            files = [_unescape(f) if "%" in f else f for f in files]
        snapshot = Snapshot(sig, files, list(map(MessageInfo, uids, sizes)))
        snapshot.stored = (st.st_ino, st.st_mtime_ns, st.st_size)
        return snapshot
    except (OSError, ValueError, UnicodeError):
        return None


def save(path: str, snapshot: Snapshot) -> None:
    """Write the index; a failure only costs a rescan next time."""
    from .maildir import write_atomically

    sig = snapshot.signature
    dirs = "dirs -" if sig is None else "dirs %d:%d %d:%d" % sig
    files, infos = snapshot.files, snapshot.infos
    if snapshot.provisional:
        keep = [base_name(f[4:]) not in snapshot.provisional for f in files]
        files = [f for f, k in zip(files, keep) if k]
        infos = [i for i, k in zip(infos, keep) if k]
    joined = "\n".join(files)
    if any(raw in joined.replace("\n", "") for raw, _ in _ESCAPES[:3]) or "\r" in joined:
        files = [_escape(f) for f in files]
    rows = "".join(["%d %s %s\n" % (info.size, info.uid, f) for info, f in zip(infos, files)])
    data = ("%s\n%s\n%s" % (INDEX_HEADER, dirs, rows)).encode("utf-8", "surrogateescape")
    try:
        write_atomically(os.path.join(path, INDEX_NAME), data)
    except OSError:
        return
    snapshot.stored = _file_signature(path)
    snapshot.dirty = False


def flush(path: str, snapshot: Snapshot) -> None:
    """Write the index if the snapshot is not in it yet. Called at logout, still under the lock,
    so that writing a large index is not part of the login's latency."""
    if snapshot.dirty:
        save(path, snapshot)

# -- listing and measuring --------------------------------------------------------------------------

def measure(dir_fd: int, name: str) -> int:
    """Wire size of one message (CRLF line endings, unstuffed), read in one call when small."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)  # no symlinks: see maildir.py
    try:
        data = os.read(fd, SMALL_READ)
        if len(data) == SMALL_READ:
            rest = iter(lambda: os.read(fd, 1 << 20), b"")
            return wire_size(_chain(data, rest))
    finally:
        os.close(fd)
    if b"\r" in data:
        return wire_size([data])
    if not data:
        return 0
    # LF-only (the usual maildir form): each LF becomes CRLF; a last line without LF gets CRLF.
    return len(data.replace(b"\n", b"\r\n")) + (0 if data[-1] == 0x0A else 2)


def _chain(first: bytes, rest):  # type: ignore[no-untyped-def]
    yield first
    yield from rest


def scan(path: str, previous: Optional[Snapshot], uid_for) -> Snapshot:  # type: ignore
    """List ``new/`` and ``cur/``; sizes come from ``,W=``, ``previous`` or reading the file."""
    now = time.time_ns()
    before = signature(path)
    found: Dict[str, str] = {}
    for sub in ("new", "cur"):
        prefix = sub + "/"
        for name in os.listdir(os.path.join(path, sub)):
            if name[:1] != ".":
                found[name.partition(":")[0]] = prefix + name
    after = signature(path)
    known = previous.sizes_by_base() if previous is not None else {}
    files: List[str] = []
    infos: List[MessageInfo] = []
    provisional = set()
    fds: Dict[str, int] = {}
    try:
        for base in delivery_order(list(found)):
            filename = found[base]
            size = known.get(base)
            if size is None and ",W=" in base:
                match = _W_FIELD.search(base)
                size = int(match.group(1)) if match else None
            if size is None:
                sub = filename[:3]
                if sub not in fds:
                    fds[sub] = os.open(os.path.join(path, sub),
                                       os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    size = measure(fds[sub], filename[4:])
                except (FileNotFoundError, IsADirectoryError):
                    continue  # moved or deleted meanwhile (the next session sees it), or no message
                except OSError:
                    # Unreadable (permissions): one bad file must not lock the user out of the
                    # rest; list it with its size on disk, RETR answers -ERR, measure it next time.
                    try:
                        size = os.stat(filename[4:], dir_fd=fds[sub], follow_symlinks=False).st_size
                    except OSError:
                        continue
                    provisional.add(base)
            files.append(filename)
            infos.append(MessageInfo(uid_for(base), size))
    finally:
        for fd in fds.values():
            os.close(fd)
    sig = after if before == after and _settled(after, now) and not provisional else None
    return Snapshot(sig, files, infos, frozenset(provisional))


# -- the in-process cache ---------------------------------------------------------------------------

_cache: "OrderedDict[str, Snapshot]" = OrderedDict()


def _remember(path: str, snapshot: Snapshot) -> None:
    _cache.pop(path, None)
    if len(snapshot.infos) > MAX_CACHED_MESSAGES:
        return
    _cache[path] = snapshot
    total = sum(len(s.infos) for s in _cache.values())
    while total > MAX_CACHED_MESSAGES:
        _, evicted = _cache.popitem(last=False)
        total -= len(evicted.infos)


def forget(path: Optional[str] = None) -> None:
    """Drop cached snapshots (all, or one maildir's); tests use it to simulate a new process."""
    if path is None:
        _cache.clear()
    else:
        _cache.pop(path, None)


def snapshot(path: str, uid_for) -> Snapshot:  # type: ignore
    """The current snapshot of ``path`` (the caller holds the maildrop lock)."""
    current = signature(path)
    cached = _cache.get(path)
    if cached is not None and cached.signature == current and cached.stored is not None:
        # Also check the file: another process may have rewritten it, or it was damaged.
        if cached.stored == _file_signature(path):
            _cache.move_to_end(path)
            return cached
    stored = load(path)
    if stored is not None and stored.signature == current:
        _remember(path, stored)
        return stored
    previous = cached or stored
    fresh = scan(path, previous, uid_for)
    if (previous is not None and previous.stored is not None
            and previous.stored == _file_signature(path) and previous.signature == fresh.signature
            and previous.files == fresh.files and previous.infos == fresh.infos):
        fresh.stored = previous.stored  # nothing new to write (e.g. still not settled)
    else:
        fresh.dirty = True
    _remember(path, fresh)
    return fresh
