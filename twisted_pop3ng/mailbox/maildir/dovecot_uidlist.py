"""Dovecot's POP3 UIDLs, kept across a switch from Dovecot: ``dovecot-uidlist`` -> ``pop3ng-uidl-map``.

A client that leaves mail on the server remembers each message by its UIDL. Dovecot's UIDL is not
the file name: by default (``pop3_uidl_format = %08Xu%08Xv``) it is the message's IMAP UID and the
folder's UIDVALIDITY in (lower-case) hex, both recorded in the maildir's ``dovecot-uidlist``; a
``P<uidl>`` field of a message's line overrides it (``pop3_save_uidl``, or UIDLs imported from an
older server), an empty ``P`` meaning the base file name. Without them every such client would
download the whole maildir again.

Rules of this module:

* **The switch happens at the first login that pop3ng serves.** If the maildir has a
  ``dovecot-uidlist`` and no ``pop3ng-index`` (pop3ng never served it), the UIDL of every message
  Dovecot listed is copied into ``pop3ng-uidl-map`` (written atomically, fsynced). From then on only
  that file is read: ``dovecot-uidlist`` may go, and a Dovecot still serving IMAP on the same
  maildir (and numbering new mail there) changes no UIDL of ours. A maildir pop3ng already serves
  never imports one, so a ``dovecot-uidlist`` appearing later cannot rename its messages.
* Messages not in the map (delivered after the switch) get the usual UIDL, the base name
  (:func:`.names.uid_for`); one that could be taken for a Dovecot UIDL (16 hex digits,
  or any UIDL of the map) gets the digest form instead, so the two kinds never collide.
* Automatic, not an option: the map must be taken before the first pop3ng session, and an option
  forgotten on that day cannot be made up for later; without a ``dovecot-uidlist`` nothing changes.
* The map is parsed once per version of the file (its inode, mtime and size) and process.
* ``dovecot-uidlist`` versions 1 (``UIDVALIDITY NEXTUID`` / ``UID NAME``) and 3 (``3 V.. N.. G..``
  / ``UID [KEYvalue...] :NAME``) are read, as Dovecot 1.0-2.4 write them; a later line for a name
  replaces an earlier one, as in Dovecot. Both files are read like the index: regular files only,
  no symlink followed, bounded in size.
"""

from __future__ import annotations

import os
import re
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple

from twisted.logger import Logger

from twisted_pop3ng._fs import fsync_directory, write_atomically
from twisted_pop3ng.mailbox.maildir.names import base_name, escape_name, hashed_uid, unescape_name
from twisted_pop3ng.mailbox.maildir.names import uid_for as own_uid_for
from twisted_pop3ng.wire.uid import is_valid_uid

UIDLIST_NAME = "dovecot-uidlist"
MAP_NAME = "pop3ng-uidl-map"
MAP_HEADER = "pop3ng-uidl-map 1"
#: Files larger than this are not read (a uidlist line is ~60 octets: about a million messages).
MAX_BYTES = 64 << 20
#: Dovecot's default ``pop3_uidl_format = %08Xu%08Xv`` (2.0-2.4): UID, then UIDVALIDITY, 8 hex
#: digits each -- in lower case: Dovecot's ``%X`` is hex, not upper-case hex (its POP3 server
#: lists ``000000046b1341b1``).
DEFAULT_FORMAT = "%08x%08x"
#: What a UIDL of the default format looks like: messages outside the map never get one.
_DOVECOT_LIKE = re.compile(r"[0-9a-fA-F]{16}\Z")
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: Parsed maps kept per maildir (the last version of each), least recently used first.
MAX_CACHED_MAPS = 256

Stamp = Tuple[int, int, int]
_log = Logger()


class UidlistError(ValueError):
    """``dovecot-uidlist`` cannot be read as Dovecot writes it."""


@dataclass(frozen=True)
class Uidlist:
    """What ``dovecot-uidlist`` says: the folder's UIDVALIDITY and each base name's UID and POP3 UIDL."""

    version: int
    uidvalidity: int
    next_uid: int
    #: Base name -> (UID, the ``P`` field or None), in file order.
    records: Dict[str, Tuple[int, Optional[str]]]

    def pop3_uidls(self) -> Dict[str, str]:
        """Base name -> the UIDL Dovecot's POP3 server lists for it: the ``P`` field, the base name
        for an empty one (Dovecot's shorthand), else the default format."""
        return {base: (DEFAULT_FORMAT % (uid, self.uidvalidity) if uidl is None else uidl or base)
                for base, (uid, uidl) in self.records.items()}


def parse_uidlist(text: str) -> Uidlist:
    """Parse a ``dovecot-uidlist``; raises :class:`UidlistError` when its header is broken.
    Broken record lines are skipped (Dovecot would rebuild the file; the others keep their UIDLs)."""
    lines = text.split("\n")
    header = lines[0].split(" ")
    uidvalidity = next_uid = 0
    try:
        version = int(header[0])
        if version == 1:
            uidvalidity, next_uid = int(header[1]), int(header[2])
        elif version == 3:
            for item in header[1:]:
                if item[:1] == "V":
                    uidvalidity = int(item[1:])
                elif item[:1] == "N":
                    next_uid = int(item[1:])
        else:
            raise UidlistError("unsupported dovecot-uidlist version %d" % version)
    except (ValueError, IndexError):
        raise UidlistError("broken dovecot-uidlist header %r" % lines[0][:80])
    if uidvalidity <= 0 or next_uid <= 0:
        raise UidlistError("dovecot-uidlist header without UIDVALIDITY or next UID")
    records: Dict[str, Tuple[int, Optional[str]]] = {}
    for line in lines[1:]:
        record = _record(line, version)
        if record is not None:
            name, uid, uidl = record
            records.pop(name, None)  # a later line for a name wins (Dovecot drops the old UID)
            records[name] = (uid, uidl)
    return Uidlist(version, uidvalidity, next_uid, records)


def _record(line: str, version: int) -> Optional[Tuple[str, int, Optional[str]]]:
    """(base name, UID, ``P`` field) of one record line, or None for an empty or broken one."""
    if not line:
        return None
    uid_text, _, rest = line.partition(" ")
    if not uid_text.isdigit() or not 0 < int(uid_text) < 1 << 32:
        return None
    uidl: Optional[str] = None
    if version == 3:
        fields, colon, name = rest.partition(":")
        if not colon:
            return None
        for item in fields.split():
            if item[:1] == "P":
                uidl = item[1:]
    else:
        name = rest.strip(" ")
    name = base_name(name)
    if not name or "/" in name:
        return None
    return name, int(uid_text), uidl


@dataclass(frozen=True)
class UIDLMap:
    """The UIDLs carried over from Dovecot: base name -> UIDL, and the UIDLs for new messages."""

    stamp: Optional[Stamp]
    uidls: Dict[str, str]
    taken: FrozenSet[str] = field(default=frozenset())

    def uid_for(self, base: str) -> str:
        """The UIDL of the message with this base name (see the module's rules)."""
        uidl = self.uidls.get(base)
        if uidl is not None:
            return uidl
        own = own_uid_for(base)
        if own in self.taken or _DOVECOT_LIKE.match(own):
            return hashed_uid(base)
        return own


def format_map(uidls: Iterable[Tuple[str, str]]) -> bytes:
    rows = "".join("%s %s\n" % (escape_name(base), uidl) for base, uidl in uidls)
    return ("%s\n%s" % (MAP_HEADER, rows)).encode("utf-8", "surrogateescape")


def parse_map(text: str, stamp: Optional[Stamp]) -> UIDLMap:
    lines = text.split("\n")
    if lines[0] != MAP_HEADER:
        raise ValueError("not a %s file" % MAP_NAME)
    uidls: Dict[str, str] = {}
    for line in lines[1:]:
        if line:
            base, uidl = line.split(" ")
            uidls[unescape_name(base)] = uidl
    return UIDLMap(stamp, uidls, frozenset(uidls.values()))


def _read(path: str) -> Optional[Tuple[str, Stamp]]:
    """The text and stamp of a regular file of at most :data:`MAX_BYTES` (None when missing)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
            raise UidlistError("%s is not a regular file of at most %d octets" % (path, MAX_BYTES))
        parts: List[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            parts.append(chunk)
            if sum(map(len, parts)) > MAX_BYTES:
                raise UidlistError("%s grew past %d octets" % (path, MAX_BYTES))
    finally:
        os.close(fd)
    text = b"".join(parts).decode("utf-8", "surrogateescape")
    return text, (st.st_ino, st.st_mtime_ns, st.st_size)


def stamp(maildir: str, dir_fd: Optional[int] = None) -> Optional[Stamp]:
    """(inode, mtime, size) of the maildir's ``pop3ng-uidl-map``, None without one: what a
    snapshot's UIDLs depend on besides the names. ``dir_fd``: the maildir, opened."""
    try:
        if dir_fd is not None:
            # Asked at every login, and the answer is almost always "none": access() says so
            # without the exception a failed stat() raises (half the cost).
            if not os.access(MAP_NAME, os.F_OK, dir_fd=dir_fd, follow_symlinks=False):
                return None
            st = os.stat(MAP_NAME, dir_fd=dir_fd, follow_symlinks=False)
        else:
            st = os.stat(maildir + "/" + MAP_NAME, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


_maps: "OrderedDict[str, UIDLMap]" = OrderedDict()


def uidl_map(maildir: str, key: str, served_before: bool) -> Optional[UIDLMap]:
    """The maildir's UIDL map, or None when it has none: read from ``pop3ng-uidl-map`` (once per
    version of it), or made from ``dovecot-uidlist`` when pop3ng never ``served_before``.
    ``key``: the maildir's name in the cache (``maildir`` may be a ``/proc/self/fd`` path)."""
    current = stamp(maildir)
    cached = _maps.get(key)
    if cached is not None and current is not None and cached.stamp == current:
        _maps.move_to_end(key)
        return cached
    try:
        if current is None:
            if served_before or not import_uidlist(maildir, key):
                return None
        read = _read(maildir + "/" + MAP_NAME)
        if read is None:
            return None
        mapping = parse_map(*read)
    except (OSError, ValueError) as error:
        # Listed with our own UIDLs meanwhile: a client may fetch some messages twice, none is lost.
        _log.error("maildir {maildir}: cannot use {name} ({error}); Dovecot's UIDLs are not kept",
                   maildir=key, name=MAP_NAME, error=str(error))
        return None
    _maps[key] = mapping
    _maps.move_to_end(key)
    while len(_maps) > MAX_CACHED_MAPS:
        _maps.popitem(last=False)
    return mapping


def import_uidlist(maildir: str, name: Optional[str] = None) -> bool:
    """Write ``pop3ng-uidl-map`` from the maildir's ``dovecot-uidlist``; False when there is none.
    Invalid UIDLs (a ``P`` field outside RFC 1939's rule) and repeated ones are left out: those
    messages get UIDLs of ours. ``name``: the maildir's name for the log."""
    read = _read(maildir + "/" + UIDLIST_NAME)
    if read is None:
        return False
    uidlist = parse_uidlist(read[0])
    seen = set()
    rows = []
    for base, uidl in uidlist.pop3_uidls().items():
        if is_valid_uid(uidl) and uidl not in seen:
            seen.add(uidl)
            rows.append((base, uidl))
    write_atomically(maildir + "/" + MAP_NAME, format_map(rows))
    fsync_directory(maildir)  # not a cache: it must outlive a crash
    _log.info("maildir {maildir}: kept the POP3 UIDLs of {count} messages from {name} "
              "(UIDVALIDITY {uidvalidity}) in {map}", maildir=name or maildir, count=len(rows),
              name=UIDLIST_NAME, uidvalidity=uidlist.uidvalidity, map=MAP_NAME)
    return True


def forget(key: Optional[str] = None) -> None:
    """Drop cached maps (all, or one maildir's); tests use it to simulate a new process."""
    if key is None:
        _maps.clear()
    else:
        _maps.pop(key, None)
