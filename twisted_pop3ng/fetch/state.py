"""The UIDL state file of ``pop3ng fetch``: which messages of one account were delivered, and when.

The file is JSON, rewritten atomically (tmp + fsync + rename + fsync of the directory) after each
durable delivery batch, so a crash leaves the previous or the next version, never a torn one::

    {"version": 1, "account": "pop3://alice@mail.example:110",
     "delivered": {"UIDL": [first_delivered_epoch, size], ...},
     "pending": null | {"offset": N, "end": M, "sha256": H, "file": [dev, ino],
                        "uids": {...}},                                # mbox appends in flight
     "intent": null | {"nonce": HEX, "uids": {"UIDL": size, ...}}}   # a Maildir run's messages

An mbox append in flight also leaves a copy of its bytes beside this file (``STATE.mbox-append``):
crash recovery compares with it (:class:`~twisted_pop3ng.fetch.delivery.MboxDestination`).

Destinations that hand each message to another program (an MTA, an MDA) record each message as
soon as it was accepted, in a journal beside the state file (``STATE.journal``, one JSON line
``[uid, size, when]`` appended per message, no fsync), and rewrite the state file only every batch:
a killed process loses nothing it wrote, so a kill costs at most the one message accepted and not
yet journaled, without a rewrite and two fsyncs per message. (A power loss may lose journal lines
the kernel had not written: those messages are handed over again, never lost.) Loading merges the
journal; the next :meth:`FetchState.save` empties it.

An entry means "durable at the destination". It stays while the message is on the server (so a
kill before QUIT does not re-deliver) and is dropped once the server no longer lists the UIDL.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Dict, Iterable, Optional

from twisted_pop3ng._fs import write_atomically

VERSION = 1


class StateError(Exception):
    """The state file exists but cannot be used (corrupt, other account, unreadable)."""


def default_path(account_key: str) -> str:
    """``$XDG_STATE_HOME/pop3ng/<account>.json`` (``~/.local/state`` by default)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    safe = re.sub(r"[^A-Za-z0-9@._+-]", "_", account_key)
    return os.path.join(base, "pop3ng", safe + ".json")


class FetchState:
    """In-memory view of the state file; :meth:`save` makes it durable."""

    def __init__(self, path: str, account: str) -> None:
        self.path = path
        self.account = account
        self.delivered: Dict[str, list] = {}
        self.pending: Optional[Dict[str, Any]] = None
        #: What a Maildir run is about to fetch, under which nonce (written before its first
        #: RETR, cleared when it ends): crash recovery trusts only those file names
        #: (:class:`~twisted_pop3ng.fetch.delivery.MaildirDestination`).
        self.intent: Optional[Dict[str, Any]] = None
        self._dirty = False
        self._journal_fd: Optional[int] = None

    @property
    def journal_path(self) -> str:
        return self.path + ".journal"

    @classmethod
    def load(cls, path: str, account: str) -> "FetchState":
        state = cls(path, account)
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            state._merge_journal()  # a first run killed before its first state write
            return state
        except (OSError, ValueError) as error:
            raise StateError("cannot read state file %s: %s" % (path, error))
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise StateError("state file %s has an unknown format" % path)
        if data.get("account") != account:
            raise StateError("state file %s belongs to %s, not %s" % (path, data.get("account"), account))
        state.delivered = {str(k): list(v) for k, v in (data.get("delivered") or {}).items()}
        state.pending = data.get("pending")
        intent = data.get("intent")
        if intent is not None and not (isinstance(intent, dict) and isinstance(intent.get("nonce"), str)
                                       and isinstance(intent.get("uids"), dict)):
            raise StateError("state file %s has an unknown format" % path)
        state.intent = intent
        state._merge_journal()
        return state

    def _merge_journal(self) -> None:
        try:
            with open(self.journal_path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return
        except OSError as error:
            raise StateError("cannot read %s: %s" % (self.journal_path, error))
        for line in lines:
            try:
                uid, size, when = json.loads(line)
                if isinstance(uid, str) and uid not in self.delivered:
                    self.delivered[uid] = [float(when), size]
                    self._dirty = True
            except (ValueError, TypeError):
                continue  # the empty tail, or a line torn by a kill mid-write
        if lines != [b""]:
            self._dirty = True  # so that the next save empties the journal

    def journal(self, uids: Dict[str, Optional[int]]) -> None:
        """Record deliveries at once, cheaply (see the module doc); :meth:`mark_delivered` too."""
        self.mark_delivered(uids)
        if self._journal_fd is None:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            self._journal_fd = os.open(self.journal_path,
                                       os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        data = b"".join(json.dumps([uid, size, self.delivered[uid][0]]).encode("utf-8") + b"\n"
                        for uid, size in uids.items())
        os.write(self._journal_fd, data)  # O_APPEND, one write: whole lines, or a torn last one

    def is_delivered(self, uid: str, size: Optional[int] = None) -> bool:
        entry = self.delivered.get(uid)
        if entry is None:
            return False
        # A different size under the same UIDL is not the message we delivered: never skip it.
        return size is None or entry[1] is None or entry[1] == size

    def delivered_at(self, uid: str) -> float:
        return float(self.delivered[uid][0])

    def mark_delivered(self, uids: Dict[str, Optional[int]], when: Optional[float] = None) -> None:
        now = time.time() if when is None else when
        for uid, size in uids.items():
            if uid not in self.delivered:
                self.delivered[uid] = [now, size]
        self._dirty = True

    def set_pending(self, pending: Optional[Dict[str, Any]]) -> None:
        self.pending = pending
        self._dirty = True
        self.save()

    def set_intent(self, intent: Optional[Dict[str, Any]]) -> None:
        """Record (durably, at once) what the run is about to fetch; None: nothing in flight."""
        if intent != self.intent:
            self.intent = intent
            self._dirty = True
        self.save()

    def clear_intent(self) -> None:
        """The run's messages are recorded or were not delivered: forget its intent (at the
        next :meth:`save`)."""
        if self.intent is not None:
            self.intent = None
            self._dirty = True

    def forget_except(self, live: Iterable[str]) -> None:
        """Drop entries whose UIDL the server no longer lists."""
        keep = set(live)
        gone = [uid for uid in self.delivered if uid not in keep]
        for uid in gone:
            del self.delivered[uid]
        if gone:
            self._dirty = True

    def forget(self, uids: Iterable[str]) -> None:
        for uid in uids:
            if self.delivered.pop(uid, None) is not None:
                self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        data = {"version": VERSION, "account": self.account, "delivered": self.delivered,
                "pending": self.pending, "intent": self.intent}
        write_atomically(self.path, json.dumps(data, separators=(",", ":")).encode("utf-8"))
        self._dirty = False
        # Only now that the state file holds them: the journal's lines are no longer needed.
        if self._journal_fd is not None:
            os.ftruncate(self._journal_fd, 0)
        elif os.path.exists(self.journal_path):
            os.truncate(self.journal_path, 0)

    def close(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

