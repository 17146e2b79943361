"""Random POP3 sessions against a real ``twistd -n pop3ng --mailbox SPEC``, for every backend,
checked byte for byte against a model of the maildrop (hypothesis ``RuleBasedStateMachine``).

Rules: deliveries (any time, as an MTA), login (also pipelined with the greeting unread), STAT,
LIST [n], UIDL [n], RETR n, TOP n k, DELE n, RSET, NOOP (any verb case), invalid commands (-ERR,
nothing changes), several commands in one write, a second login while a session holds the
maildrop (-ERR [IN-USE]), QUIT (deletions commit; nothing answered after it) and a drop
(nothing commits). Every example runs on a user of its own and ends with a session that checks the
whole maildrop. One server per backend class, started by its test.

Defaults keep the module well under a minute; for a long run by hand::

    POP3NG_STATEFUL_EXAMPLES=500 POP3NG_STATEFUL_STEPS=80 python3 -m twisted.trial \\
        tests.integration.test_stateful_sessions
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any, List, Optional

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test
from twisted.trial import unittest

from .e2e import STATUS_RE
from .stateful_support import (
    LISTING_RE,
    Mail,
    OCTETS_RE,
    Backend,
    MaildirBackend,
    Maildrop,
    MboxBackend,
    MemoryBackend,
    PostgresBackend,
    Snapshot,
    messages,
)
from .support import Session

SETTINGS = settings(
    max_examples=int(os.environ.get("POP3NG_STATEFUL_EXAMPLES", "15")),
    stateful_step_count=int(os.environ.get("POP3NG_STATEFUL_STEPS", "30")),
    deadline=None,
    database=None,  # (trial's temporary directory would not keep it anyway)
    report_multiple_bugs=False,  # (shrink the first failure only: a failing run stays short)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: -ERR replies in a row the machine allows itself: the server closes after 20 bad commands.
ERRORS_IN_A_ROW = 12

#: Commands that are wrong in the TRANSACTION state whatever the maildrop holds.
INVALID = [
    b"FOO", b"", b"LIST 1 2", b"UIDL 1 2", b"STAT 1", b"NOOP x", b"RSET 1", b"QUIT now", b"USER u000000",
    b"PASS secret", b"STLS", b"AUTH PLAIN", b"TOP 1", b"TOP", b"RETR", b"DELE", b"RETR 1 1", b"RETR x",
    b"DELE 0", b"RETR -1", b"LIST +1", b"UIDL 1x", b"LIST 0x1", b"TOP 1 -1", b"TOP 1 x", b"TOP 1 1 1",
    b"RETR 99999999999999999999", b"\xff\xfe", b"RETR\x001", b"NOOP " + b"x" * 300,
]


def _verb(verb: bytes) -> Any:
    """``verb`` as a client may spell it (RFC 1939: keywords are case-insensitive)."""
    return st.sampled_from([verb, verb.lower(), verb.capitalize()])


def _mismatch(what: str, got: bytes, want: bytes) -> str:
    """Where two replies first differ (bodies can be megabytes: show the neighbourhood)."""
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return "%s: %d octets, want %d; first difference at %d: got %r, want %r" % (
        what, len(got), len(want), at, got[max(0, at - 40):at + 40], want[max(0, at - 40):at + 40])


class SessionMachine(RuleBasedStateMachine):
    """One user's maildrop, at most one session holding it, a model predicting every reply."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        self.user = backend.users.fresh()
        self.maildrop = Maildrop()
        self.session: Optional[Session] = None
        self.snapshot: Optional[Snapshot] = None
        #: A session ended without QUIT: the server frees the maildrop once it has noticed.
        self.dropped = False
        self.sockets: List[Session] = []

    # -- talking to the server --------------------------------------------------------------------

    def connect(self) -> Session:
        assert self.backend.server is not None
        session = Session(self.backend.server.connect(timeout=30.0))
        self.sockets.append(session)
        return session

    def credentials(self) -> bytes:
        return b"USER %s\r\nPASS %s\r\n" % (self.user.encode(), self.backend.users.password(self.user).encode())

    def open_session(self, then: Optional[bytes] = None) -> None:
        """Log in (retrying while a dropped session still holds the maildrop); ``then`` is sent in
        the same write as USER and PASS, before the greeting is read, and its reply checked."""
        deadline = time.monotonic() + 20.0
        while True:
            session = self.connect()
            session.send(self.credentials() + (then + b"\r\n" if then is not None else b""))
            greeting, user_reply, reply = session.line(), session.line(), session.line()
            assert greeting.startswith(b"+OK") and user_reply.startswith(b"+OK"), (greeting, user_reply)
            assert STATUS_RE.match(reply), reply
            if reply.startswith(b"+OK"):
                break
            # Only a dropped session may still hold the lock (QUIT frees it before its reply).
            assert self.dropped and reply.startswith(b"-ERR [IN-USE]") and time.monotonic() < deadline, reply
            if then is not None:
                assert session.line().startswith(b"-ERR"), "a command after a failed login ran"
            session.close()
            time.sleep(0.05)
        self.dropped = False
        self.session, self.snapshot = session, Snapshot(self.maildrop)
        if then is not None:
            self.check_reply(then)

    def exchange(self, commands: List[bytes], quit: bool = False) -> None:
        """Send ``commands`` (and QUIT, and a NOOP it must swallow) in one write; check each reply."""
        assert self.session is not None and self.snapshot is not None
        if self.snapshot.error_streak + len(commands) >= ERRORS_IN_A_ROW:
            commands = [b"NOOP"] + commands  # (stay clear of "too many bad commands")
        tail = [b"QUIT", b"NOOP"] if quit else []
        self.session.send(b"".join(command + b"\r\n" for command in commands + tail))
        for command in commands:
            self.check_reply(command)
        if quit:
            self.check_quit()

    def check_reply(self, command: bytes) -> None:
        session, snapshot = self.session, self.snapshot
        assert session is not None and snapshot is not None
        expected = snapshot.expect(command)
        status = session.line()
        assert STATUS_RE.match(status) and len(status) <= 512, (command, status)
        assert status.startswith(b"+OK" if expected.ok else b"-ERR"), (command, status, expected.status)
        body = session.body() if expected.body is not None else None
        snapshot.learn(command, status, body)  # (UIDs the store did not tell at delivery)
        expected = snapshot.expect(command)
        if expected.exact:
            assert status == expected.status, (command, status, expected.status)
        if body is not None:
            assert expected.body is not None
            assert body == expected.body, _mismatch(repr(command), body, expected.body)
            self.check_conventional_numbers(status, body)
        snapshot.apply(command, expected.ok)

    @staticmethod
    def check_conventional_numbers(status: bytes, body: bytes) -> None:
        """"+OK 123 octets" (RETR) and "+OK 2 messages (320 octets)" (LIST, RFC 1939's examples) are
        not required, but when the server says them they must be true."""
        octets = OCTETS_RE.match(status)
        if octets:
            unstuffed = body[:-3].replace(b"\r\n.", b"\r\n")
            assert int(octets.group(1)) == len(unstuffed[1:] if unstuffed.startswith(b".") else unstuffed), status
        listing = LISTING_RE.match(status)
        if listing:
            sizes = [int(line.split(b" ")[1]) for line in body[:-3].split(b"\r\n")[:-1]]
            assert (int(listing.group(1)), int(listing.group(2))) == (len(sizes), sum(sizes)), status

    def check_quit(self) -> None:
        session, snapshot = self.session, self.snapshot
        assert session is not None and snapshot is not None
        reply = session.line()
        assert STATUS_RE.match(reply) and reply.startswith(b"+OK"), ("QUIT", reply)
        assert session.closed(timeout=30.0), "the connection stayed open after QUIT"
        assert session.buffer == b"", "answered after QUIT: %r" % (session.buffer,)
        self.maildrop.commit(snapshot.doomed())
        self.session = self.snapshot = None

    def number(self) -> Any:
        """A message-number argument: mostly a message of the snapshot, sometimes none (0, n+1)."""
        assert self.snapshot is not None
        count = len(self.snapshot.messages)
        return st.one_of(st.integers(1, max(1, count)), st.integers(0, count + 2)).map(b"%d".__mod__)

    def command(self) -> Any:
        """Any TRANSACTION command, valid or not (for pipelines)."""
        n = self.number()
        return st.one_of(
            _verb(b"STAT"), _verb(b"LIST"), _verb(b"UIDL"), _verb(b"NOOP"), _verb(b"RSET"),
            st.tuples(st.sampled_from([b"LIST", b"UIDL", b"RETR", b"DELE", b"dele"]), n).map(b" ".join),
            st.tuples(_verb(b"TOP"), n, st.sampled_from([b"0", b"1", b"3", b"100000"])).map(b" ".join),
            st.sampled_from(INVALID))

    # -- rules ------------------------------------------------------------------------------------

    @initialize(batch=st.lists(messages(), max_size=6))
    def deliver_first(self, batch: List[Mail]) -> None:
        """A maildrop that already holds mail at the first login."""
        for mail in batch:
            self.deliver(mail)

    @rule(mail=messages())
    def deliver(self, mail: Mail) -> None:
        """An MTA delivers, whether or not a session is open (it shows in the next one)."""
        self.maildrop.delivered(mail.data, self.backend.deliver(self.user, mail.data))

    @precondition(lambda self: self.session is None)
    @rule(pipelined=st.booleans())
    def login(self, pipelined: bool) -> None:
        self.open_session(then=b"STAT" if pipelined else None)

    @precondition(lambda self: self.session is not None)
    @rule(then_quit=st.booleans())
    def second_login_in_use(self, then_quit: bool) -> None:
        """A second login to a held maildrop: -ERR [IN-USE] at once; its QUIT or drop leaves the
        first session's lock alone (the next rules go on in the first)."""
        second = self.connect()
        reply = second.login(self.user.encode(), self.backend.users.password(self.user).encode())
        assert reply.startswith(b"-ERR [IN-USE]") and STATUS_RE.match(reply), reply
        if then_quit:
            assert second.command(b"QUIT").startswith(b"+OK")
            assert second.closed(timeout=30.0)
        second.close()

    @precondition(lambda self: self.session is not None)
    @rule(verb=_verb(b"STAT"))
    def stat(self, verb: bytes) -> None:
        self.exchange([verb])

    @precondition(lambda self: self.session is not None)
    @rule(verb=st.sampled_from([b"LIST", b"UIDL"]), data=st.data())
    def listing(self, verb: bytes, data: Any) -> None:
        """LIST / UIDL, of all messages or of one."""
        one = data.draw(st.booleans(), "one")
        self.exchange([verb + b" " + data.draw(self.number(), "n") if one else verb])

    @precondition(lambda self: self.session is not None)
    @rule(data=st.data())
    def retr(self, data: Any) -> None:
        self.exchange([data.draw(_verb(b"RETR"), "verb") + b" " + data.draw(self.number(), "n")])

    @precondition(lambda self: self.session is not None)
    @rule(data=st.data(), lines=st.sampled_from([b"0", b"1", b"2", b"5", b"100000", b"99999999999999999999"]))
    def top(self, data: Any, lines: bytes) -> None:
        self.exchange([b"TOP %s %s" % (data.draw(self.number(), "n"), lines)])

    @precondition(lambda self: self.session is not None)
    @rule(data=st.data())
    def dele(self, data: Any) -> None:
        self.exchange([data.draw(_verb(b"DELE"), "verb") + b" " + data.draw(self.number(), "n")])

    @precondition(lambda self: self.session is not None)
    @rule(verb=st.sampled_from([b"RSET", b"NOOP"]))
    def rset_or_noop(self, verb: bytes) -> None:
        self.exchange([verb])

    @precondition(lambda self: self.session is not None)
    @rule(command=st.sampled_from(INVALID))
    def invalid(self, command: bytes) -> None:
        self.exchange([command])

    @precondition(lambda self: self.session is not None)
    @rule(data=st.data(), quit=st.booleans())
    def pipeline(self, data: Any, quit: bool) -> None:
        """Several commands in one write (RFC 2449 PIPELINING), perhaps ending with QUIT."""
        self.exchange(data.draw(st.lists(self.command(), min_size=2, max_size=6), "commands"), quit=quit)

    @precondition(lambda self: self.session is not None)
    @rule()
    def quit(self) -> None:
        self.exchange([], quit=True)

    @precondition(lambda self: self.session is not None)
    @rule(data=st.data())
    def drop(self, data: Any) -> None:
        """Close without QUIT, perhaps right after sending commands (DELE among them): nothing
        commits, whatever the server had done with them."""
        assert self.session is not None
        unanswered = data.draw(st.lists(self.command(), max_size=4), "unanswered")
        if unanswered:
            self.session.send(b"".join(command + b"\r\n" for command in unanswered))
        self.session.close()
        self.session = self.snapshot = None
        self.dropped = True

    # -- the end of an example --------------------------------------------------------------------

    def teardown(self) -> None:
        """Unless the example already failed: end the open session with QUIT, then check the whole
        maildrop from a new session (every message's listing and content)."""
        try:
            if sys.exc_info()[0] is None:
                if self.session is not None:
                    self.exchange([], quit=True)
                self.open_session()
                assert self.snapshot is not None
                count = len(self.snapshot.messages)
                self.exchange([b"STAT", b"LIST", b"UIDL"] + [b"RETR %d" % n for n in range(1, count + 1)], quit=True)
        finally:
            for session in self.sockets:
                session.close()


class StatefulSessions:
    """The test; a subclass adds ``unittest.TestCase`` and names its backend."""

    backend_class: type
    addCleanup: Any
    fail: Any
    assertNotIn: Any

    def test_random_sessions(self) -> None:
        backend = self.backend_class()
        self.addCleanup(backend.stop)
        backend.start()
        try:
            run_state_machine_as_test(lambda: SessionMachine(backend), settings=SETTINGS)
        except Exception as error:
            # (hypothesis puts the failing steps, a reproducer, in the exception's notes, which
            # trial's report leaves out: the formatted exception has them)
            self.fail("".join(traceback.format_exception(error)))
        log = backend.server.log()
        self.assertNotIn("Traceback", log, log[-5000:])


class MaildirStatefulTests(StatefulSessions, unittest.TestCase):
    backend_class = MaildirBackend


class MboxStatefulTests(StatefulSessions, unittest.TestCase):
    backend_class = MboxBackend


class MemoryStatefulTests(StatefulSessions, unittest.TestCase):
    """Deliveries through the server's own LMTP listener (the store lives in its process)."""

    backend_class = MemoryBackend


class PostgresStatefulTests(StatefulSessions, unittest.TestCase):
    """A fresh database of this process's test cluster (initdb in a temporary directory)."""

    backend_class = PostgresBackend
