"""Drive a POP3 server session in memory: for testing your own realms, checkers and mailbox backends.

Like ``treq.testing`` does for HTTP, :class:`SessionDriver` runs the real
:class:`~twisted_pop3ng.server.POP3ServerFactory` and protocol over a
``twisted.internet.testing.StringTransport`` with a ``twisted.internet.task.Clock``: no socket, no
reactor, no real time. Lines go in, the exact reply bytes come out::

    from twisted_pop3ng.testing import SessionDriver

    session = SessionDriver(users={"alice": "secret"}, messages={"alice": [b"Subject: hi\\n\\nhello\\n"]})
    session.login("alice", "secret")
    assert session.send("STAT") == b"+OK 1 22\\r\\n"
    reply = session.command("RETR 1")          # parsed: ok, text, code, lines (unstuffed)
    assert reply.lines == [b"Subject: hi", b"", b"hello"]
    session.command("DELE 1")
    session.command("QUIT")                    # commits: the message is gone from the store
    assert session.store.maildrops["alice"] == []

Pass ``portal=`` (your checkers and realm) or ``store=`` (your ``IMailboxStore``, behind the stock
:class:`~twisted_pop3ng.server.MailboxRealm` and an in-memory checker) to test your own parts.

Rules of this module:

* nothing here replaces server code: the factory, protocol, policy and verbs are the shipped ones,
  so what passes here is what a client over TCP gets (less TLS and the socket fast path);
* time moves only when the test says so (:meth:`SessionDriver.advance`,
  :meth:`SessionDriver.wait_reply`); work the reactor would do "now" (``callLater(0, ...)``, such as
  the next chunks of a streamed message) is run before a call returns;
* by default the peer is a local (loopback) connection, to which the server's own policy allows
  USER/PASS without TLS; pass ``peer=`` a remote address to test the plaintext policy;
* when the server closes the connection, the harness delivers ``connectionLost`` as the reactor
  would once the last reply left, so logout hooks (the maildrop unlock) run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional, Tuple, Union

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import error, task
from twisted.internet.address import IPv4Address
from twisted.python.failure import Failure

try:
    from twisted.internet.testing import StringTransport
except ImportError:  # Twisted before 21.7
    from twisted.test.proto_helpers import StringTransport

from twisted_pop3ng import wire
from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.server.protocol import POP3ServerFactory, POP3ServerProtocol, ServerConfig
from twisted_pop3ng.server.realm import MailboxRealm

__all__ = [
    "SessionDriver", "Reply", "IncompleteReply", "LoginFailed", "memory_portal", "parse_reply",
    "LOCAL_PEER", "REMOTE_PEER",
]

Text = Union[str, bytes]

#: The default client address: the server's own address, so the connection counts as local.
LOCAL_PEER = IPv4Address("TCP", "127.0.0.1", 40110)
#: A remote client (for the plaintext-authentication and per-address limits).
REMOTE_PEER = IPv4Address("TCP", "192.0.2.1", 40110)
_SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 110)
#: Verbs whose ``+OK`` reply is multi-line whatever their arguments; LIST and UIDL only without one.
_MULTILINE_VERBS = frozenset({b"CAPA", b"RETR", b"TOP"})
_LISTING_VERBS = frozenset({b"LIST", b"UIDL"})
#: Bound on the zero-delay calls run after one input (a stream of a huge message yields each turn).
_MAX_TURNS = 100_000


def _bytes(value: Text) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


class IncompleteReply(AssertionError):
    """The server has not (yet) sent a whole reply: it waits for the clock, a Deferred or input."""


class LoginFailed(AssertionError):
    """:meth:`SessionDriver.login` got ``-ERR``; ``reply`` is the :class:`Reply`."""

    def __init__(self, reply: "Reply") -> None:
        AssertionError.__init__(self, "login failed: %r" % (reply.raw,))
        self.reply = reply


@dataclass(frozen=True)
class Reply:
    """One server reply, parsed the way a client parses it."""

    ok: bool
    #: The status text after ``+OK``/``-ERR`` and the response code.
    text: str
    #: The RFC 2449 response code (``"IN-USE"``, ``"AUTH"``, ``"SYS/TEMP"``...), or None.
    code: Optional[str]
    #: The body lines of a multi-line reply, dot-unstuffed, without CRLF; None for a single line.
    lines: Optional[List[bytes]]
    #: The exact bytes the server sent for this reply.
    raw: bytes

    @property
    def body(self) -> bytes:
        """The multi-line body as the client's consumer receives it (CRLF line endings)."""
        return b"".join(line + b"\r\n" for line in self.lines or ())


def parse_reply(data: bytes, multiline: bool = False) -> Tuple[Reply, bytes]:
    """Parse the first reply in ``data``: ``(reply, the bytes after it)``.

    ``multiline``: whether a ``+OK`` reply carries a body (the client knows this from its command).
    Raises :class:`IncompleteReply` when ``data`` holds no complete reply.
    """
    end = data.find(b"\r\n")
    if end == -1:
        raise IncompleteReply("no complete status line in %r" % (data[:200],))
    status = wire.parse_status(data[:end])
    rest = data[end + 2:]
    if not (status.ok and multiline) or status.continuation:
        return Reply(status.ok, status.text, status.code, None, data[:end + 2]), rest
    decoder = wire.MultiLineDecoder()
    body, leftover = decoder.feed(rest)
    if leftover is None:
        raise IncompleteReply("multi-line reply without its terminator: %r" % (data[:200],))
    lines = body.split(b"\r\n")[:-1] if body else []
    raw = data[:len(data) - len(leftover)]
    return Reply(True, status.text, status.code, lines, raw), leftover


def expects_body(line: bytes) -> bool:
    """Whether a successful reply to this command line is multi-line (RFC 1939 / RFC 2449)."""
    verb, _, rest = line.strip().partition(b" ")
    verb = verb.upper()
    return verb in _MULTILINE_VERBS or (verb in _LISTING_VERBS and not rest.strip())


def memory_portal(users: Optional[Mapping[str, Text]] = None,
                  messages: Optional[Mapping[str, Iterable[bytes]]] = None,
                  store: Any = None) -> Portal:
    """A portal for tests: ``users`` (name -> password) in an in-memory checker, and a
    :class:`~twisted_pop3ng.server.MailboxRealm` over ``store`` (default: a new
    :class:`~twisted_pop3ng.mailbox.memory.MemoryStore`, available as ``portal.realm.store``).

    ``messages`` (name -> messages as stored, LF or CRLF line endings) are delivered with the
    store's ``deliver``, in order: message 1 first.
    """
    if store is None:
        store = MemoryStore()
    for user, stored in (messages or {}).items():
        for message in stored:
            store.deliver(user, message)
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for user, password in (users or {}).items():
        checker.addUser(_bytes(user), _bytes(password))
    return Portal(MailboxRealm(store), [checker])


class SessionDriver:
    """One POP3 session of a real server factory, over a ``StringTransport``, on a ``Clock``.

    Give it a ``portal``, or the parts of one: ``users`` and ``messages`` for
    :func:`memory_portal`, ``store`` for your own ``IMailboxStore``. ``config`` is the
    :class:`~twisted_pop3ng.server.ServerConfig` (default: the stock one). The greeting is in
    :attr:`greeting`. Further sessions of the same server (same store, clock and limits) come
    from :meth:`another`.
    """

    def __init__(self, portal: Optional[Portal] = None, *,
                 users: Optional[Mapping[str, Text]] = None,
                 messages: Optional[Mapping[str, Iterable[bytes]]] = None,
                 store: Any = None,
                 config: Optional[ServerConfig] = None,
                 peer: Any = None,
                 factory: Optional[POP3ServerFactory] = None) -> None:
        if factory is None:
            if portal is None:
                portal = memory_portal(users, messages, store)
            elif users or messages or store is not None:
                raise TypeError("pass either a portal or users/messages/store, not both")
            factory = POP3ServerFactory(portal, config or ServerConfig(), clock=task.Clock())
        self.factory = factory
        self.portal = factory.portal
        #: The clock the server's timeouts and delays run on.
        self.clock: task.Clock = factory.clock
        #: The mailbox store behind the portal's realm, when it has one (``realm.store``).
        self.store: Any = getattr(getattr(self.portal, "realm", None), "store", None)
        self.peer = peer if peer is not None else LOCAL_PEER
        self.transport = StringTransport(hostAddress=_SERVER_ADDRESS, peerAddress=self.peer)
        protocol = factory.buildProtocol(self.peer)
        if not isinstance(protocol, POP3ServerProtocol):
            raise TypeError("%r built %r, not a POP3ServerProtocol" % (factory, protocol))
        self.protocol = protocol
        self._lost = False
        self.protocol.makeConnection(self.transport)
        #: The greeting line, as sent (``b"+OK POP3 server ready.\\r\\n"`` by default).
        self.greeting = self._collect()

    # -- sending ----------------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> bytes:
        """Feed ``data`` to the server as received from the network; return every byte it sent
        back, before any time passes (pipelined commands: several replies)."""
        if self._lost:
            raise error.ConnectionDone("the session is closed")
        self.protocol.dataReceived(data)
        return self._collect()

    def send(self, line: Text) -> bytes:
        """Send one command line (CRLF is added); return the exact reply bytes sent back."""
        return self.send_raw(_bytes(line) + b"\r\n")

    def command(self, line: Text, multiline: Optional[bool] = None, wait: bool = False) -> Reply:
        """Send one command line and parse its reply.

        ``multiline``: whether a ``+OK`` has a body; by default decided from the verb as a client
        does (CAPA, RETR, TOP; LIST and UIDL without an argument). ``wait``: if the reply is not
        complete at once, let the clock run to its next scheduled calls until it is (a failed
        login's delay, a checker answering through the clock); otherwise that raises
        :class:`IncompleteReply`.
        """
        raw_line = _bytes(line)
        if multiline is None:
            multiline = expects_body(raw_line)
        data = self.send(raw_line)
        return self._parse(data, multiline, wait)

    def wait_reply(self, multiline: bool = False, max_calls: int = 1000) -> Reply:
        """Advance the clock from one scheduled call to the next until a whole reply arrives."""
        return self._parse(b"", multiline, True, max_calls)

    def login(self, user: Text, password: Text) -> Reply:
        """USER and PASS; returns the reply to PASS, waiting out a failure delay on the clock.
        Raises :class:`LoginFailed` when either is refused."""
        reply = self.command(b"USER " + _bytes(user))
        if not reply.ok:
            raise LoginFailed(reply)
        reply = self.command(b"PASS " + _bytes(password), wait=True)
        if not reply.ok:
            raise LoginFailed(reply)
        return reply

    # -- time and the connection ------------------------------------------------------------------

    def advance(self, seconds: float) -> bytes:
        """Let ``seconds`` of clock time pass (timeouts, delayed replies); return what was sent."""
        self.clock.advance(seconds)
        return self._collect()

    @property
    def connected(self) -> bool:
        """False once the server closed the connection (QUIT, a timeout) or :meth:`close` ran."""
        return not self._lost

    def close(self) -> None:
        """The client hangs up (no QUIT: nothing is committed); the logout hook runs. Idempotent."""
        if not self._lost:
            self._lost = True
            self.protocol.connectionLost(Failure(error.ConnectionDone()))

    def another(self, peer: Any = None) -> "SessionDriver":
        """A new session of the same server: same factory, store, clock and limits."""
        return SessionDriver(factory=self.factory, peer=peer if peer is not None else self.peer)

    def __enter__(self) -> "SessionDriver":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    def _collect(self) -> bytes:
        """Run what the reactor would run now, deliver a server-side close, take the output."""
        clock = self.clock
        for _ in range(_MAX_TURNS):
            now = clock.seconds()
            if not any(call.getTime() <= now for call in clock.getDelayedCalls()):
                break
            clock.advance(0)
        data = self.transport.value()
        self.transport.clear()
        if self.transport.disconnecting and not self._lost:
            # What the reactor does once the write buffer is empty after loseConnection.
            self._lost = True
            self.protocol.connectionLost(Failure(error.ConnectionDone()))
        return data

    def _parse(self, data: bytes, multiline: bool, wait: bool, max_calls: int = 1000) -> Reply:
        for _ in range(max_calls):
            try:
                reply, rest = parse_reply(data, multiline)
            except IncompleteReply:
                calls = self.clock.getDelayedCalls() if wait else ()
                if not calls:
                    raise
                next_time = min(call.getTime() for call in calls)
                data += self.advance(max(next_time - self.clock.seconds(), 0))
                continue
            if rest:
                raise AssertionError("more than one reply: %r after %r" % (rest[:200], reply.raw[:200]))
            return reply
        raise IncompleteReply("no reply after %d scheduled calls: %r" % (max_calls, data[:200]))
