"""Helpers of ``test_stateful_sessions``: the maildrop model, the message strategy, the backends.

The model predicts every reply of a POP3 session from what was delivered, with the RFC 1939
oracle of :mod:`.e2e` (never the server's codec): exact status lines where the RFC fixes them
(STAT, LIST n, UIDL n), exact multi-line bodies, ``+OK``/``-ERR`` elsewhere.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set

from hypothesis import strategies as st

from twisted_pop3ng.mailbox import store_from_spec

from .e2e import stuffed, top_lines, wire_lines, wire_message
from .support import ServerProcess, Session, start_server, write_users

UID_RE = re.compile(rb"\A[\x21-\x7e]{1,70}\Z")
#: Conventional (not RFC-fixed) status texts that carry numbers: when present they must be right.
OCTETS_RE = re.compile(rb"\A\+OK (\d+) octets\r\n\Z")
LISTING_RE = re.compile(rb"\A\+OK (\d+) messages \((\d+) octets\)\r\n\Z")

# -- messages --------------------------------------------------------------------------------------

#: Lines that trip codecs and stores: dot lines (stuffing, the terminator), mbox "From " lines
#: (quoting must be reversible), 8-bit octets, bare CRs, a CR at the very end, long lines.
TRICKY_LINES = [b".", b"..", b".x", b"..x", b". ", b"From nobody Thu Jan  1 00:00:00 1970", b">From quoted",
                b">>From twice", b"From ", b"From", b"", b" ", b"\t", b"gr\xc3\xbc\xc3\x9fe \xff\x80\x00",
                b"bare\rCR", b"\r", b"x" * 1500, b"." * 1000]
HEADERS = [b"From: a@example.org", b"To: b@example.org", b"Subject: test", b"Subject: =?utf-8?q?gr=C3=BC?=",
           b"X-Long: " + b"y" * 900, b" folded continuation"]

_line = st.one_of(st.sampled_from(TRICKY_LINES), st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")))


@dataclass(frozen=True)
class Mail:
    """A message as ``head`` + ``unit`` * ``times`` (so that a big one prints short in a
    falsifying example), without its final line ending unless ``final_newline``."""

    head: bytes
    unit: bytes = b""
    times: int = 0
    final_newline: bool = True

    @property
    def data(self) -> bytes:
        out = self.head + self.unit * self.times
        if not self.final_newline:
            out = out[:-2] if out.endswith(b"\r\n") else out[:-1]
        return out


@st.composite
def messages(draw: Callable[..., Any]) -> Mail:
    """A stored message as an MTA hands it over: LF, CRLF or mixed line endings, with or without a
    header/body separator, an empty body, no final newline; now and then big enough to span many
    read buffers (dot lines at every offset)."""
    ending = draw(st.sampled_from([b"\n", b"\r\n", None]))

    def joined(lines: List[bytes]) -> bytes:
        return b"".join(line + (ending or draw(st.sampled_from([b"\n", b"\r\n"]))) for line in lines)

    header = draw(st.lists(st.sampled_from(HEADERS), max_size=3))
    separator = [b""] if draw(st.booleans()) else []
    lines = header + separator + draw(st.lists(_line, max_size=8))
    head = joined(lines or [b"Subject: empty body", b""])
    unit, times = b"", 0
    if draw(st.integers(0, 9)) == 9:  # ~10 %: some 100-300 KB (shrinking goes towards 0: small)
        unit = joined(draw(st.lists(_line, min_size=1, max_size=5)) + [b".", b"x" * draw(st.integers(0, 100))])
        times = draw(st.integers(100_000, 300_000)) // len(unit)
    return Mail(head, unit, times, draw(st.booleans()))


# -- the model -------------------------------------------------------------------------------------


@dataclass(eq=False)
class Stored:
    """One message of the maildrop; ``uid`` is None until the store or a reply has told it."""

    raw: bytes
    uid: Optional[bytes] = None

    @property
    def size(self) -> int:
        return len(wire_message(self.raw))


@dataclass
class Expected:
    """A predicted reply: ``status`` exact, or only its ``+OK``/``-ERR`` prefix when the RFC leaves
    the text free; ``body`` the exact multi-line body (None: single line)."""

    status: bytes
    exact: bool = False
    body: Optional[bytes] = None

    @property
    def ok(self) -> bool:
        return self.status.startswith(b"+OK")


class Maildrop:
    """What the store holds for one user, in delivery order, and every UID it has ever shown."""

    def __init__(self) -> None:
        self.stored: List[Stored] = []
        self.uids_seen: Set[bytes] = set()

    def delivered(self, raw: bytes, uid: Optional[bytes]) -> None:
        message = Stored(raw)
        self.stored.append(message)
        if uid is not None:
            self.pin(message, uid)

    def pin(self, message: Stored, uid: bytes) -> None:
        """``message`` has ``uid``: well-formed, and never any other message's (ever)."""
        assert UID_RE.match(uid), "malformed UIDL %r" % (uid,)
        if message.uid is not None:
            assert message.uid == uid, "UIDL changed from %r to %r" % (message.uid, uid)
            return
        assert uid not in self.uids_seen, "UIDL %r given to two messages" % (uid,)
        self.uids_seen.add(uid)
        message.uid = uid

    def commit(self, doomed: List[Stored]) -> None:
        self.stored = [m for m in self.stored if all(m is not d for d in doomed)]


_NUMBER = re.compile(rb"\A[1-9][0-9]{0,8}\Z")


class Snapshot:
    """One session's view (RFC 1939 TRANSACTION): numbering fixed at login, deletions are marks."""

    def __init__(self, maildrop: Maildrop) -> None:
        self.maildrop = maildrop
        self.messages = list(maildrop.stored)
        self.deleted: Set[int] = set()
        #: -ERR replies in a row: the server closes after ``max_bad_commands`` bad ones.
        self.error_streak = 0

    def live(self) -> List[int]:
        return [i for i in range(len(self.messages)) if i not in self.deleted]

    def index(self, word: bytes) -> Optional[int]:
        """The 0-based index a message-number argument names, None if it names no live message."""
        if not _NUMBER.match(word):
            return None
        n = int(word)
        return n - 1 if n <= len(self.messages) and n - 1 not in self.deleted else None

    def expect(self, command: bytes) -> Expected:
        words = command.split(b" ")
        verb, args = words[0].upper(), words[1:]
        err = Expected(b"-ERR")
        if verb in (b"STAT", b"NOOP", b"RSET") and not args:
            if verb == b"STAT":
                live = self.live()
                total = sum(self.messages[i].size for i in live)
                return Expected(b"+OK %d %d\r\n" % (len(live), total), exact=True)
            return Expected(b"+OK")
        if verb in (b"LIST", b"UIDL") and not args:
            if verb == b"LIST":
                lines = [b"%d %d\r\n" % (i + 1, self.messages[i].size) for i in self.live()]
            else:
                lines = [b"%d %s\r\n" % (i + 1, self.messages[i].uid or b"?") for i in self.live()]
            return Expected(b"+OK", body=b"".join(lines) + b".\r\n")
        if verb in (b"LIST", b"UIDL", b"RETR", b"DELE") and len(args) == 1:
            i = self.index(args[0])
            if i is None:
                return err
            message = self.messages[i]
            if verb == b"LIST":
                return Expected(b"+OK %d %d\r\n" % (i + 1, message.size), exact=True)
            if verb == b"UIDL":
                return Expected(b"+OK %d %s\r\n" % (i + 1, message.uid or b"?"), exact=True)
            if verb == b"RETR":
                return Expected(b"+OK", body=stuffed(wire_lines(message.raw)))
            return Expected(b"+OK")
        if verb == b"TOP" and len(args) == 2:
            i = self.index(args[0])
            if i is None or not re.match(rb"\A[0-9]+\Z", args[1]):
                return err
            return Expected(b"+OK", body=stuffed(top_lines(self.messages[i].raw, int(args[1]))))
        return err

    def learn(self, command: bytes, status: bytes, body: Optional[bytes]) -> None:
        """Pin the UIDs an UIDL reply shows for messages whose UID the store did not tell."""
        words = command.split(b" ")
        if words[0].upper() != b"UIDL" or not status.startswith(b"+OK"):
            return
        if len(words) == 2:
            lines = [status[4:-2]]
        else:
            assert body is not None and body.endswith(b".\r\n"), body
            lines = body[:-3].split(b"\r\n")[:-1] if body != b".\r\n" else []
        for line in lines:
            number, _, uid = line.partition(b" ")
            if _NUMBER.match(number) and int(number) <= len(self.messages):
                self.maildrop.pin(self.messages[int(number) - 1], uid)

    def apply(self, command: bytes, ok: bool) -> None:
        """The effect of a reply on the session (DELE marks, RSET unmarks) and on the error streak."""
        self.error_streak = 0 if ok else self.error_streak + 1
        if not ok:
            return
        words = command.split(b" ")
        verb = words[0].upper()
        if verb == b"DELE":
            index = self.index(words[1])
            assert index is not None
            self.deleted.add(index)
        elif verb == b"RSET":
            self.deleted.clear()

    def doomed(self) -> List[Stored]:
        return [self.messages[i] for i in sorted(self.deleted)]


# -- users -----------------------------------------------------------------------------------------


class UserPool:
    """Fresh users for every example (shrinking runs many): the passwd-file grows as needed (the
    server re-reads a changed file; it is replaced by rename, never seen half-written)."""

    def __init__(self, path: str, size: int = 500) -> None:
        self.path = path
        self.size = size
        self.next = 0

    @staticmethod
    def password(user: str) -> str:
        return "pass word %s" % user

    def users(self) -> Dict[str, str]:
        """The pool as ``{user: password}`` (for ``start_server``, which writes the file first)."""
        names = ["u%06d" % i for i in range(self.size)]
        return {name: self.password(name) for name in names}

    def fresh(self) -> str:
        if self.next >= self.size:
            self.size *= 2
            write_users(self.path + ".new", self.users())
            os.replace(self.path + ".new", self.path)
        user = "u%06d" % self.next
        self.next += 1
        return user


# -- backends --------------------------------------------------------------------------------------


class Backend:
    """A ``--mailbox`` store under a running ``twistd pop3ng``, and how mail gets into it."""

    name = ""
    extra_args: List[str] = []
    server: Optional[ServerProcess] = None
    _store: Any = None

    def start(self) -> None:
        """Make the store in a new temporary directory and start ``twistd -n pop3ng`` on it."""
        self.root = tempfile.mkdtemp(prefix="pop3ng-stateful-")
        self.spec = self.make_spec()
        self.users = UserPool(os.path.join(self.root, "users"))  # (the passwd-file start_server writes)
        self.server = start_server(self.root, users=self.users.users(), tls=False,
                                   extra_args=["--mailbox", self.spec] + self.extra_args)

    def make_spec(self) -> str:
        raise NotImplementedError

    def deliver(self, user: str, data: bytes) -> Optional[bytes]:
        """Deliver as an MTA would, through the store's ``IMailboxDelivery``; the UID it returns."""
        if self._store is None:
            self._store = store_from_spec(self.spec)
        return str(self._store.deliver(user, io.BytesIO(data))).encode()

    def stop(self) -> None:
        """Stop the server (which fails on a traceback in its log), the store, remove the files."""
        try:
            if self.server is not None:
                self.server.stop()
        finally:
            if hasattr(self._store, "stop"):
                self._store.stop()  # (a database store's pool and threads)
            self.cleanup_store()
            if getattr(self, "root", None):
                shutil.rmtree(self.root, ignore_errors=True)

    def cleanup_store(self) -> None:
        """Remove what :meth:`make_spec` made outside the temporary directory (a database)."""


class MaildirBackend(Backend):
    name = "maildir"

    def make_spec(self) -> str:
        return "maildir:" + os.path.join(self.root, "mail", "{user}", "Maildir")


class MboxBackend(Backend):
    name = "mbox"

    def make_spec(self) -> str:
        os.makedirs(os.path.join(self.root, "mail"))  # (the store makes no directories, like /var/mail)
        return "mbox:" + os.path.join(self.root, "mail", "{user}")


class PostgresBackend(Backend):
    """A fresh database of this process's test cluster (initdb in a temporary directory)."""

    name = "postgresql"

    def make_spec(self) -> str:
        from twisted_pop3ng.testing.postgresql import fresh_database

        self.dsn = fresh_database()
        return "postgresql:" + self.dsn

    def cleanup_store(self) -> None:
        from twisted_pop3ng.testing.postgresql import drop_database

        if getattr(self, "dsn", None):
            drop_database(self.dsn)


class MemoryBackend(Backend):
    """``memory:`` lives in the server process: mail gets in through its LMTP listener (RFC 2033),
    spoken here over a raw socket; without trace headers the store keeps exactly what DATA carried
    (the wire form: LMTP cannot carry a bare-LF message), and the UID is not told."""

    name = "memory"
    extra_args = ["--lmtp-listen", "tcp:0:interface=127.0.0.1", "--lmtp-trace-headers", "no"]

    def make_spec(self) -> str:
        return "memory:"

    def deliver(self, user: str, data: bytes) -> Optional[bytes]:
        assert self.server is not None
        found = re.findall(r"LMTPFactory starting on (\d+)", self.server.log())
        assert found, "no LMTP listener in the server log"
        lmtp = Session(socket.create_connection(("127.0.0.1", int(found[0])), 20.0))
        try:
            assert lmtp.line()[:4] == b"220 "
            lmtp.send(b"LHLO client.example.org\r\n")
            while True:
                line = lmtp.line()
                assert line[:3] == b"250", line
                if line[3:4] == b" ":
                    break
            for command, code in ((b"MAIL FROM:<sender@example.org>", b"250"),
                                  (b"RCPT TO:<%s@example.org>" % user.encode(), b"250"), (b"DATA", b"354")):
                reply = lmtp.command(command)
                assert reply[:3] == code, (command, reply)
            lmtp.send(stuffed(wire_lines(data)))
            reply = lmtp.line()  # one reply per recipient (RFC 2033 §4.2)
            assert reply[:4] == b"250 ", reply
            lmtp.command(b"QUIT")
        finally:
            lmtp.close()
        return None


BACKENDS: Dict[str, type] = {b.name: b for b in (MaildirBackend, MboxBackend, MemoryBackend, PostgresBackend)}
