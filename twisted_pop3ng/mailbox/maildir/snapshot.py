"""A maildir's snapshot, and when the stamp of ``new/`` or ``cur/`` proves that a listing is complete.

Rules of this module:

* a listing of a directory is the directory's contents for as long as the directory keeps the
  inode and ``st_mtime_ns`` it had (its *stamp*): every delivery, move, flag change and deletion
  renames or unlinks an entry, which sets the mtime to the time of the change;
* but a file timestamp is a clock reading truncated to the filesystem's granularity (the kernel
  takes its coarse clock, one tick of 1-10 ms; some filesystems keep whole seconds, FAT two), so a
  change within the same tick as the listing may leave the mtime as it was. A stamp is therefore
  recorded as *settled* only when the coarse clock, read before the listing started, was already
  past the mtime's granularity (:func:`settled`): every later change then gets a later mtime.
  Anything else is recorded as not settled (``None``) and listed again next time;
* the granularity is read from the mtime itself (the largest power of ten dividing its
  nanoseconds; two seconds for an even second): a filesystem of whole seconds gives whole seconds;
* the kernel's clock is the filesystem's only on a local filesystem. On anything else (NFS, CIFS,
  FUSE: the server stamps the file with its own clock) and where the kind of filesystem is unknown,
  a stamp is settled only once :data:`REMOTE_SETTLE_NS` old, as every stamp was before;
* the index file may be read by another process, maybe on another host, so it records a stamp
  only when that was :data:`REMOTE_SETTLE_NS` old at the listing (:attr:`Snapshot.durable`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

from twisted_pop3ng.interfaces import MessageInfo
from twisted_pop3ng.mailbox.maildir import dovecot_uidlist
from twisted_pop3ng.mailbox.maildir.names import base_name

#: ``(st_ino, st_mtime_ns)`` of ``new/`` or ``cur/``.
DirStamp = Tuple[int, int]
#: The two directories holding messages, in listing order (new/ first: of a name listed in both,
#: the cur/ one counts).
SUBDIRS = ("new", "cur")
#: How old a stamp must be, at the listing, where the filesystem's clock is not the kernel's
#: (network filesystems: another host's clock), and to be written to the index file.
REMOTE_SETTLE_NS = 2 * 10 ** 9
#: Local filesystems whose timestamps come from this kernel's clock.
LOCAL_FILESYSTEMS = frozenset(["ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs", "jfs",
                               "reiserfs", "bcachefs", "overlay", "ramfs", "nilfs2"])
#: ``CLOCK_REALTIME_COARSE``: the clock Linux stamps files with (``current_time()``).
_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5 if sys.platform.startswith("linux") else None)
_MOUNTINFO = "/proc/self/mountinfo"
_local_devices: Dict[int, bool] = {}


def clock() -> int:
    """Now, as the kernel would stamp a file changed now (never later than that)."""
    if _COARSE is not None:
        try:
            return time.clock_gettime_ns(_COARSE)
        except OSError:
            pass
    return time.time_ns()


def granularity(mtime_ns: int) -> int:
    """The coarsest timestamp granularity ``mtime_ns`` is consistent with: the largest power of
    ten (up to a second) dividing it, two seconds for an even second (FAT)."""
    grain = 1
    while grain < 10 ** 9 and mtime_ns % (grain * 10) == 0:
        grain *= 10
    if grain == 10 ** 9 and mtime_ns % (2 * 10 ** 9) == 0:
        grain *= 2
    return grain


def is_local(device: int) -> bool:
    """Whether the filesystem of ``device`` (``st_dev``) is one of :data:`LOCAL_FILESYSTEMS`, by
    ``/proc/self/mountinfo`` (read once per device and process); False where that cannot tell."""
    local = _local_devices.get(device)
    if local is None:
        local = _local_devices[device] = _mount_type(device) in LOCAL_FILESYSTEMS
    return local


def _mount_type(device: int) -> Optional[str]:
    wanted = "%d:%d" % (os.major(device), os.minor(device))
    try:
        with open(_MOUNTINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) > 2 and fields[2] == wanted and right:
                    return right.split()[0]
    except OSError:
        pass
    return None


def settled(device: int, mtime_ns: int, now_ns: int) -> bool:
    """Whether a listing started at ``now_ns`` (:func:`clock`) of a directory last changed at
    ``mtime_ns`` is complete for as long as the directory keeps that mtime."""
    if not is_local(device):
        return now_ns - mtime_ns >= REMOTE_SETTLE_NS
    return now_ns >= mtime_ns + granularity(mtime_ns)


def settle_wait(device: int, mtime_ns: int, now_ns: int) -> int:
    """Nanoseconds until a listing of that directory would be settled (0: now; -1: not soon)."""
    if settled(device, mtime_ns, now_ns):
        return 0
    if not is_local(device) or granularity(mtime_ns) >= 10 ** 9:
        return -1
    return mtime_ns + granularity(mtime_ns) - now_ns


def stamp(st: os.stat_result) -> DirStamp:
    return (st.st_ino, st.st_mtime_ns)


def stat_dirs(path: str, dir_fd: Optional[int] = None) -> Dict[str, os.stat_result]:
    """``stat`` of new/ and cur/ (not following a symlink); relative to ``dir_fd``, the maildir
    ``path`` names, when given (a ``/proc/self/fd/N`` path costs the kernel a walk through /proc
    on every call). ``path + "/new"``, not os.path.join: this runs on every login."""
    if dir_fd is not None:
        return {sub: os.stat(sub, dir_fd=dir_fd, follow_symlinks=False) for sub in SUBDIRS}
    return {sub: os.stat(path + "/" + sub, follow_symlinks=False) for sub in SUBDIRS}


class Snapshot:
    """The messages of a maildir at one moment: ``files[i]`` holds ``infos[i]``.

    A snapshot is never changed once a session uses it (sessions keep its lists); an update makes
    a new one (:mod:`.incremental`). Only its stamps may be completed (:attr:`dirs`).
    """

    __slots__ = ("dirs", "durable", "listings", "files", "infos", "stored", "dirty", "drift",
                 "provisional", "uidmap", "uidl_body", "_counts")

    def __init__(self, dirs: Dict[str, Optional[DirStamp]], files: List[str],
                 infos: Sequence[MessageInfo], provisional: FrozenSet[str] = frozenset(),
                 uidmap: Optional[dovecot_uidlist.Stamp] = None) -> None:
        #: new/ and cur/ -> the stamp the rows of that directory are complete for; None: not
        #: settled, list it again.
        self.dirs = dirs
        #: The directories whose stamp may go into the index file (see the module's rules).
        self.durable: FrozenSet[str] = frozenset()
        #: new/ and cur/ -> the names of that directory's last listing, in listing order, when
        #: known (not after reading the index file): what a listing again is compared with. A
        #: directory that did not change lists in the same order, and one that did differs only
        #: where it changed. (About 80 bytes a message, in the in-process cache only.)
        self.listings: Dict[str, List[str]] = {}
        #: The stamp of the ``pop3ng-uidl-map`` the UIDLs were made with (None: there was none).
        self.uidmap = uidmap
        self.files = files
        self.infos = infos
        #: Base names of unreadable files, listed with their size on disk: measured again at each
        #: login and never written to the index file.
        self.provisional = provisional
        #: (inode, mtime, size) of the index file holding this snapshot (or an older one), when known.
        self.stored: Optional[Tuple[int, int, int]] = None
        #: True while the index file should be written (see :func:`.index.flush`).
        self.dirty = False
        #: Rows added, removed or renamed since the index file was written or read.
        self.drift = 0
        #: The encoded ``UIDL`` listing, made on first use and kept as long as the snapshot is.
        self.uidl_body: Optional[bytes] = None
        self._counts: Optional[Dict[str, int]] = None

    @property
    def signature(self) -> Optional[Tuple[int, int, int, int]]:
        """(cur inode, cur mtime, new inode, new mtime) when both are settled, else None."""
        cur, new = self.dirs.get("cur"), self.dirs.get("new")
        if cur is None or new is None:
            return None
        return cur + new

    def counts(self) -> Dict[str, int]:
        """Rows per directory (new/, cur/)."""
        if self._counts is None:
            joined = "\n" + "\n".join(self.files)
            new = joined.count("\nnew/")
            self._counts = {"new": new, "cur": len(self.files) - new}
        return self._counts

    def set_counts(self, counts: Dict[str, int]) -> None:
        """What :meth:`counts` would find, known by whoever made the rows."""
        self._counts = counts

    def sizes_by_base(self) -> Dict[str, int]:
        sizes = {base_name(f[4:]): info.size for f, info in zip(self.files, self.infos)}
        for base in self.provisional:
            sizes.pop(base, None)
        return sizes

    def provisional_dirs(self) -> FrozenSet[str]:
        """The directories holding a file listed with its size on disk."""
        if not self.provisional:
            return frozenset()
        return frozenset(f[:3] for f in self.files if base_name(f[4:]) in self.provisional)
