"""The state of one POP3 session, apart from the protocol object that carries its bytes.

Rules of this module:

* it is a leaf of :mod:`twisted_pop3ng.server` (imports only :mod:`.states` and the interfaces):
  the protocol, the verbs, :mod:`.auth_verbs` and :mod:`.policy` all read and write the session
  here, none of them plants attributes of its own on the protocol;
* a :class:`Session` is made per connection and must stay small (an idle connection is measured
  in docs/performance.rst): ``__slots__``, no per-session containers until they are needed
  (``deleted`` is a shared empty frozenset until login);
* the optional mailbox extensions (:class:`~twisted_pop3ng.interfaces.IWholeMessageReader`,
  :class:`~twisted_pop3ng.interfaces.IUIDLListing`) are looked up once, when the mailbox is
  attached (:meth:`Session.attach`), and kept as bound methods: no probing per command;
* :class:`Connection` says, as a :class:`typing.Protocol`, what the policy and verb functions
  need of a connection; any object with those members (a test double, another transport's
  protocol) will do.
"""

from __future__ import annotations

from typing import AbstractSet, Any, Callable, List, Optional, Tuple
from typing import Protocol as _TypingProtocol

from twisted_pop3ng.interfaces import IUIDLListing, IWholeMessageReader
from twisted_pop3ng.server.states import AUTHORIZATION

#: Every session's deletions before login: one shared immutable empty set (``frozenset()`` makes
#: a new 216-byte object per call).
NO_DELETIONS: AbstractSet[int] = frozenset()


class Session:
    """Everything one POP3 session knows, from the greeting to the logout."""

    __slots__ = (
        # RFC 1939 state: AUTHORIZATION -> TRANSACTION -> UPDATE (only via states.TRANSITIONS).
        "state",
        # The locked maildrop (IMailbox avatar) and the realm's logout, from login on.
        "mailbox", "logout",
        # The login snapshot and the indexes marked for deletion (0-based).
        "messages", "deleted",
        # The mailbox's optional extensions, bound once per login (None: not provided).
        "read_whole", "uidl_listing",
        # USER's name until PASS; the APOP greeting timestamp; RFC 6856 UTF8 mode.
        "username", "apop_timestamp", "utf8",
        # What the abuse guard counted for this connection, to release at its end: the user's
        # session slot, the client's network (its AbuseGuard.key), the global connection count.
        "admitted_user", "counted_address", "counted_total",
        # Failed authentications on this connection (closed after max_auth_failures).
        "auth_failures",
        # The authentication under way, for its one audit log line: (user name or None,
        # mechanism); None when none is (or its line was written).
        "attempt",
        # The portal's Deferred while a login waits on the checker (a hash in the pool): cancelled
        # when the connection goes, so a queued hash of a client that left never runs.
        "pending_login",
        # The client's and the server's IP address (None: not an IP connection), learnt once from
        # the transport ``addresses_of`` by the policy (connection_info), kept for the connection.
        "peer", "host", "addresses_of",
        # Bad commands in a row (a good one resets the count).
        "bad_commands",
        # While a SASL exchange waits for a client line, lines go here instead of the dispatcher.
        "line_hook",
        # Whether the connection came in on a TLS listener (--tls-listen), for the counters.
        "tls_listener",
        # How the session ended (a word of stats.ENDINGS) once known; None: not yet.
        "ended",
        # The clock time the current login's credentials were complete (login latency).
        "login_started",
        # What the session did, for its summary log event; None unless sessions are logged.
        "summary",
    )

    state: str
    #: The IMailbox avatar (None before login and after logout).
    mailbox: Any
    logout: Optional[Callable[[], None]]
    #: A sequence of MessageInfo; the store's MessageTable as it is when it gives one.
    messages: Any
    deleted: AbstractSet[int]
    read_whole: Optional[Callable[[int, int], Optional[bytes]]]
    uidl_listing: Optional[Callable[[], bytes]]
    username: Optional[bytes]
    apop_timestamp: Optional[str]
    utf8: bool
    admitted_user: Optional[str]
    counted_address: Optional[str]
    counted_total: bool
    auth_failures: int
    attempt: Optional[Tuple[Any, str]]
    pending_login: Any
    peer: Optional[str]
    host: Optional[str]
    addresses_of: Any
    bad_commands: int
    line_hook: Optional[Callable[[bytes], Any]]
    tls_listener: bool
    ended: Optional[str]
    login_started: float
    summary: Any  # a stats.SessionSummary, or None

    def __init__(self) -> None:
        self.state = AUTHORIZATION
        self.mailbox = self.logout = None
        self.messages = ()
        #: A shared immutable empty default; a set of its own from login on.
        self.deleted = NO_DELETIONS
        self.read_whole = self.uidl_listing = None
        self.username = self.apop_timestamp = None
        self.utf8 = False
        self.admitted_user = self.counted_address = None
        self.counted_total = False
        self.auth_failures = 0
        self.attempt = self.pending_login = None
        self.peer = self.host = self.addresses_of = None
        self.bad_commands = 0
        self.line_hook = self.ended = self.summary = None
        self.tls_listener = False
        self.login_started = 0.0

    def attach(self, mailbox: Any, logout: Optional[Callable[[], None]]) -> None:
        """Take the logged-in mailbox, and bind its optional extensions once for the session."""
        self.mailbox, self.logout = mailbox, logout
        self.read_whole = mailbox.read_whole if IWholeMessageReader.providedBy(mailbox) else None
        self.uidl_listing = mailbox.uidl_listing if IUIDLListing.providedBy(mailbox) else None

    def detach(self) -> Optional[Callable[[], None]]:
        """Forget the mailbox (and its bound methods); the logout still to call, if any."""
        logout = self.logout
        self.mailbox = self.logout = self.read_whole = self.uidl_listing = None
        return logout


class Connection(_TypingProtocol):
    """What :mod:`.policy` and the verb functions need of a POP3 connection."""

    session: Session
    factory: Any
    transport: Any
    log: Any

    @property
    def config(self) -> Any: ...

    @property
    def clock(self) -> Any: ...

    def reply(self, ok: bool, text: str = "", code: Optional[str] = None) -> None: ...

    def close(self, text: Optional[str] = None, ok: bool = False,
              code: Optional[str] = None) -> None: ...


class ServerConnection(Connection, _TypingProtocol):
    """What the verb handlers (:mod:`.verbs`, :mod:`.auth_verbs`) use of the server protocol."""

    def write(self, data: bytes) -> None: ...

    def reply_lines(self, status: str, lines: List[bytes]) -> None: ...

    def bad_command(self, text: str) -> None: ...

    def capabilities(self) -> List[str]: ...

    def login(self, credentials: Any, mechanism: Optional[str] = None) -> Any: ...

    def send_message(self, index: int, status: bytes, encoder: Any = None) -> Any: ...

    def flush_output(self) -> None: ...

    def clearLineBuffer(self) -> Any: ...

    def setTimeout(self, period: Optional[float]) -> None: ...

    # The handlers' shared helpers (argument checks, message numbers, ending a session).
    def _no_args(self, cmd: Any) -> None: ...

    def _message(self, word: bytes) -> int: ...

    def _one_or_no_message(self, cmd: Any) -> Optional[int]: ...

    def _live(self) -> List[int]: ...

    def _do_logout(self) -> Any: ...

    def logout_then_close(self, text: str, ok: bool = False, code: Optional[str] = None) -> Any: ...

    def _login_failed(self, failure: Any) -> Any: ...

    @property
    def _closing(self) -> bool: ...


__all__ = ["Session", "Connection", "ServerConnection"]
