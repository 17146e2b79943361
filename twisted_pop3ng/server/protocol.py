"""The POP3 server protocol (RFC 1939, RFC 2449) and its factory.

Rules of this module:

* the session state changes only through :data:`TRANSITIONS`; which verbs are valid in which state is
  data (the ``@command`` registry), a verb missing from a state's set is the error;
* one small handler per verb; a handler either answers at once or returns a Deferred, and while that
  Deferred is pending no further command line is read (so pipelined commands are answered in order,
  also after an asynchronous login);
* the session's state is on its :class:`~.session.Session` (``protocol.session``), not on the
  protocol; the protocol object carries the connection's I/O state only;
* the protocol never touches files: messages come from the ``IMailbox`` avatar, as bytes when
  small (``read_whole``, when it provides ``IWholeMessageReader``) or as file-like objects
  streamed through :class:`~twisted_pop3ng.wire.MessageEncoder`; how lines come in and replies go out (batching,
  backpressure, streaming, timeouts) is :mod:`.server_io`'s business;
* every error goes through :func:`twisted_pop3ng.errors.classify`; no exception text reaches the peer.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Callable, List, Optional

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_pop3ng.auth import checkers as cred
from twisted_pop3ng.server import audit, policy, session_log
from twisted_pop3ng import wire
from twisted_pop3ng import __version__
from twisted_pop3ng.errors import (
    BadCommand,
    MessageDeleted,
    NoSuchMessage,
    POP3Error,
    classify,
    log_failure,
)
from twisted_pop3ng.interfaces import IMailbox, MessageInfo, MessageTable
from twisted_pop3ng.server import auth_verbs, verbs
from twisted_pop3ng.server.registry import CommandSet
from twisted_pop3ng.server.session import Session
from twisted_pop3ng.server.stats import NO_CODE, OTHER, ServerStats, SessionSummary
from twisted_pop3ng.server.states import TRANSITIONS, UPDATE
from twisted_pop3ng.server.io import (CHUNK_SIZE, STOCK_SENDER, IdleSweeper, MessageStream,
                                      SessionIO, TransportFlow, set_no_delay,
                                      stock_connection_info)

#: ``Command(verb, rest)`` without the named tuple's Python-level ``__new__``.
_new_command = tuple.__new__
#: Longest password (or SASL PLAIN response) hashed: SHA-crypt and MD5-crypt cost grows with the
#: length and passlib takes up to 4 KB (F2); a longer one fails as a wrong password, unhashed.
MAX_PASSWORD = 1024
#: Seconds a closing connection may take to deliver its last reply before it is aborted: a peer
#: that never reads, or never completes the TLS handshake, would otherwise keep the connection (and
#: the maildrop lock) forever, since loseConnection waits for the write buffer to drain. After QUIT
#: a slow client may still be receiving a message: it gets longer.
CLOSE_GRACE = 5.0
QUIT_CLOSE_GRACE = 60.0
#: Seconds a login may wait for its checker and realm (a queue of hashes, a database) when no
#: absolute login deadline comes first; past it, ``-ERR [SYS/TEMP]`` and the connection closes.
PENDING_LOGIN_LIMIT = 300.0


#: The default verbs: RFC 1939's and STLS/AUTH/APOP/UTF8. Each factory takes a copy.
DEFAULT_COMMANDS = CommandSet.merged(verbs.COMMANDS, auth_verbs.COMMANDS)


def command(verb: str, *states: str, capability: Any = None) -> Callable:
    """Register ``handler(protocol, cmd)`` for ``verb`` in ``states`` with the default verbs, so
    that factories made afterwards answer it. To extend one server only, register on its
    factory's ``commands`` (a :class:`~twisted_pop3ng.server.registry.CommandSet`)."""
    return DEFAULT_COMMANDS.command(verb, *states, capability=capability)


@dataclass
class ServerConfig:
    """Knobs of a server; :mod:`twisted_pop3ng.service.build` fills it from the command line."""

    implementation: str = "twisted-pop3ng %s" % __version__
    #: Seconds of inactivity before login / after login (RFC 1939 §3 asks for >= 10 minutes).
    login_timeout: float = 60.0
    idle_timeout: float = 600.0
    #: Seconds to wait before answering a failed authentication.
    auth_failure_delay: float = 1.0
    #: Bad commands tolerated before and after login before the connection is closed.
    max_bad_commands: int = 20
    extra_capabilities: List[str] = field(default_factory=list)
    #: Plaintext policy, APOP, SASL mechanisms, abuse limits, LOGIN-DELAY/EXPIRE (see policy.py).
    security: policy.SecurityConfig = field(default_factory=policy.SecurityConfig)
    #: Log an event per connection and a summary per session (:mod:`.session_log`); off by
    #: default, as formatting a log line costs about as much as a short session. The summaries
    #: are made of the factory's counters: a factory started without ``stats`` makes one.
    log_sessions: bool = False


def _session_view(name: str) -> Any:
    """A protocol attribute that is the session's ``name`` (read and written through)."""

    def get(protocol: "POP3ServerProtocol") -> Any:
        return getattr(protocol.session, name)

    def set(protocol: "POP3ServerProtocol", value: Any) -> None:
        setattr(protocol.session, name, value)

    return property(get, set, doc="``session.%s``" % name)


class POP3ServerProtocol(SessionIO):
    """One POP3 session: AUTHORIZATION -> TRANSACTION -> UPDATE against an ``IMailbox`` avatar."""

    # Accept bare LF as well as CRLF from clients; a trailing CR is stripped in lineReceived.
    delimiter = b"\n"
    MAX_LENGTH = wire.MAX_ANY_LINE
    log = Logger()

    # The connection's I/O state starts as these class-level defaults and becomes an instance
    # attribute only when it changes: an idle connection stays small.
    #: Why command lines are not read now; an empty default until the first block.
    _blocks: AbstractSet[str] = frozenset()
    _stream: Optional[MessageStream] = None
    _closing = False
    #: Set by connectionLost: nothing may be written or scheduled for this connection any more
    #: (a late callback -- a failed login's delayed answer -- once closed a lost TLS connection
    #: again and its abort timer broke on the dead transport).
    _lost = False
    _reading_paused = False
    _abort_call: Any = None

    def __init__(self) -> None:
        super().__init__()
        #: The POP3 session's own state (state, mailbox, snapshot, deletions, login facts).
        self.session = Session()

    # Views of the session for handlers written against the protocol (and older code); the
    # server itself uses ``self.session``.
    state = _session_view("state")
    messages = _session_view("messages")
    deleted = _session_view("deleted")
    line_hook = _session_view("line_hook")
    apop_timestamp = _session_view("apop_timestamp")
    utf8 = _session_view("utf8")

    @property
    def mailbox(self) -> Optional[Any]:
        return self.session.mailbox

    @mailbox.setter
    def mailbox(self, mailbox: Any) -> None:
        """Attaching a mailbox binds its optional extensions (see :meth:`.Session.attach`)."""
        session = self.session
        if mailbox is None:
            session.logout = session.detach()
        else:
            session.attach(mailbox, session.logout)

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def config(self) -> ServerConfig:
        return self.factory.config

    @property
    def clock(self) -> Any:
        return self.factory.clock

    def connectionMade(self) -> None:
        factory = self.factory
        stats = factory.stats
        if stats is not None:  # (counting is off unless the factory was given a ServerStats)
            session = self.session
            session.tls_listener = tls = policy.is_secure(self)  # TLS from the first byte
            stats.opened(tls)
            if factory.config.log_sessions:
                session.summary = SessionSummary(factory.clock.seconds())
                session_log.connected(self)
        deadline = policy.login_deadline(self)
        if deadline is not None:  # absolute: no input pushes it (F4)
            self._hard_deadline = self.clock.seconds() + deadline
        self.setTimeout(self.config.login_timeout)
        set_no_delay(self.transport)
        self.transport.registerProducer(TransportFlow(self), True)
        if not policy.connection_made(self):  # too many connections from this address
            return
        self.write(wire.response(True, self.greeting()))

    def greeting(self) -> str:
        return policy.greeting(self, "POP3 server ready.")

    def reply(self, ok: bool, text: str = "", code: Optional[str] = None) -> None:
        if not ok:
            stats = self.factory.stats
            if stats is not None:
                stats.errors[code or NO_CODE] += 1
        self.write(wire.response(ok, text, code))

    def reply_lines(self, status: str, lines: List[bytes]) -> None:
        """A multi-line response in one write (one packet for short listings: no Nagle stall)."""
        body = b"".join(line + b"\r\n" for line in lines)
        self.write(wire.response(True, status) + body + wire.TERMINATOR)

    def close(self, text: Optional[str] = None, ok: bool = False, code: Optional[str] = None) -> None:
        if self._lost:
            return
        session = self.session
        if session.ended is None:  # (QUIT, a timeout or a refusal said how before)
            session.ended = "closed"
        if text is not None:
            self.reply(ok, text, code)
        self.setTimeout(None)
        if self.transport is not None:
            # A registered producer holds off the TLS shutdown (TLSMemoryBIOProtocol waits for
            # unregisterProducer), so a QUIT over TLS would never close: unregister first.
            self.transport.unregisterProducer()
            if self._close_at_once():
                self._closing = True
                return
        self.flush_output()
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()
            if self._abort_call is None:
                grace = QUIT_CLOSE_GRACE if ok or session.state == UPDATE else CLOSE_GRACE
                self._abort_call = self.clock.callLater(grace, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if self.transport is not None and not self._lost:
            self.transport.abortConnection()

    def timeoutConnection(self) -> None:
        self.session.ended = "timeout"
        hard = self._hard_deadline
        if self.session.pending_login is not None:  # (connectionLost cancels it)
            self.close("[SYS/TEMP] The login could not be checked in time, closing connection.")
            return
        if hard is not None and self.clock.seconds() >= hard:
            self.close("Login time exceeded, closing connection.")
            return
        self.close("Disconnected for inactivity.")

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.setTimeout(None)
        self._closing = True
        self._lost = True
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        self._stop_stream()
        session = self.session
        pending = session.pending_login
        if pending is not None:  # a hash still queued for a client that left: drop it (F2)
            session.pending_login = None
            pending.cancel()
        if session.state != UPDATE:
            self._do_logout()
        stats = self.factory.stats
        if stats is not None:
            how = session.ended or "drop"
            stats.closed(session.tls_listener, how)
            if session.summary is not None:
                session_log.ended(self, how)  # (before the guard forgets the admitted user)
        policy.connection_lost(self)

    def _do_logout(self) -> Optional[defer.Deferred]:
        """Run the avatar's logout (the mailbox's ``close``: the maildrop unlock); its Deferred
        when it returned one (a database releasing a lock), else None."""
        logout = self.session.detach()
        if logout is None:
            return None
        try:
            result: Any = logout()
        except Exception:
            self.log.failure("logout failed")
            return None
        if defer.Deferred in type(result).__mro__:
            unlocked: defer.Deferred = result
            unlocked.addErrback(lambda failure: log_failure(self.log, "logout failed", failure))
            return unlocked
        return None

    def logout_then_close(self, text: str, ok: bool = False,
                          code: Optional[str] = None) -> Optional[defer.Deferred]:
        """QUIT's last step: the maildrop is unlocked before the final reply goes out, so a
        client that logs in again at once (on this server or another) finds it free. Returns
        the unlock's Deferred when there is one: QUIT returns it, so a command pipelined after
        QUIT waits (and is never answered, the connection closes)."""
        unlocked = self._do_logout()
        if unlocked is None:
            self.close(text, ok=ok, code=code)
            return None
        return unlocked.addCallback(
            lambda _: None if self._closing else self.close(text, ok=ok, code=code))

    # -- command dispatch -------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        if line[-1:] == b"\r":
            line = line[:-1]
        session = self.session
        if session.line_hook is not None:
            self._handle_result(session.line_hook(line), "AUTH")
            return
        factory = self.factory
        stats = factory.stats
        # RFC 5034 §4: an AUTH initial response may exceed the 255-octet command limit (tokens).
        if len(line) + 2 > wire.MAX_COMMAND_LINE and (
                line[:5].upper() != b"AUTH " or len(line) + 2 > wire.MAX_AUTH_LINE):
            if stats is not None:
                stats.command(OTHER, session)
            self.bad_command("Command line too long")
            return
        word, _, rest = line.partition(b" ")
        commands = factory.commands
        handler = commands.known.get(word)
        if handler is not None:
            cmd = _new_command(wire.Command, (handler.verb, rest))
        else:
            try:
                cmd = wire.parse_command(line)
            except wire.WireError as error:
                if stats is not None:
                    stats.command(OTHER, session)
                self.bad_command(str(error))
                return
            handler = commands.handlers.get(cmd.verb)
            if handler is None:
                if stats is not None:
                    stats.command(OTHER, session)
                self.bad_command("Unknown command: %s" % cmd.verb)
                return
            commands.remember(word, handler)
        if stats is not None:  # (what stats.command does, inline: this is the hot path)
            counts = stats.commands
            try:
                counts[handler.verb] += 1
            except KeyError:
                counts[handler.verb] = 1
            summary = session.summary
            if summary is not None:
                summary.commands += 1
        if session.state not in handler.states:
            self.bad_command("%s is not valid in the %s state" % (cmd.verb, session.state))
            return
        try:
            result = handler.method(self, cmd)
        except Exception:
            self._command_failed(Failure(), cmd.verb)
            return
        if result is None:  # done: what _handle_result -> _command_succeeded would do, inline
            session.bad_commands = 0
        else:
            self._handle_result(result, cmd.verb)

    def _handle_result(self, result: Any, verb: str) -> None:
        """A handler's result: a Deferred blocks further command lines until it has finished."""
        # (None first: Deferred is an Awaitable, so isinstance goes through ABCMeta, ~1 µs.)
        if result is None or not isinstance(result, defer.Deferred):
            self._command_succeeded()
            return
        # ``called`` is not enough: a fired Deferred may still wait on an inner one.
        finished: List[bool] = []

        def outcome(value: Any) -> None:
            if isinstance(value, Failure):
                self._command_failed(value, verb)
            else:
                self._command_succeeded()
            finished.append(True)
            self._unblock("command")

        result.addBoth(outcome)
        if not finished:
            self._block("command")

    def _command_succeeded(self) -> None:
        """Bad commands are counted in a row (as Dovecot does): a good one resets the count."""
        self.session.bad_commands = 0

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line far beyond any limit is abuse: say so, then close."""
        self.close("Line too long, closing connection")

    def bad_command(self, text: str) -> None:
        session = self.session
        session.bad_commands += 1
        if session.bad_commands > self.config.max_bad_commands:
            self.close("Too many bad commands, closing connection")
        else:
            self.reply(False, text)

    def _command_failed(self, failure: Failure, verb: str) -> None:
        error = failure.value
        if isinstance(error, (BadCommand, wire.WireError)):
            self.bad_command(str(error.text if isinstance(error, POP3Error) else error))
            return
        code, text, expected = classify(error)
        if not expected:
            log_failure(self.log, "{verb} failed", failure, verb=verb)
        self.reply(False, text, code)

    # -- helpers for handlers ---------------------------------------------------------------------

    def _no_args(self, cmd: wire.Command) -> None:
        if cmd.words():
            raise BadCommand("%s takes no arguments" % cmd.verb)

    def _message(self, word: bytes) -> int:
        """0-based index of a live message from a 1-based message number argument."""
        try:
            number = wire.parse_message_number(word)
        except wire.WireError as error:
            raise BadCommand(str(error))
        session = self.session
        if number > len(session.messages):
            raise NoSuchMessage("There is no message %d" % number)
        if number - 1 in session.deleted:
            raise MessageDeleted("Message %d is deleted" % number)
        return number - 1

    def _one_or_no_message(self, cmd: wire.Command) -> Optional[int]:
        words = cmd.words()
        if len(words) > 1:
            raise BadCommand("Too many arguments")
        return self._message(words[0]) if words else None

    def _live(self) -> List[int]:
        session = self.session
        deleted = session.deleted
        return [i for i in range(len(session.messages)) if i not in deleted]

    def capabilities(self) -> List[str]:
        caps = self.factory.commands.capabilities(self)
        caps += ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        caps += policy.capabilities(self)
        caps += self.config.extra_capabilities
        caps.append("IMPLEMENTATION %s" % self.config.implementation)
        return caps

    def login(self, credentials: Any, mechanism: Optional[str] = None) -> Optional[defer.Deferred]:
        """Authenticate through the portal, lock the maildrop and take the snapshot.

        When the checker and realm answer at once (cheap password schemes, a local maildir; see
        :func:`.cred.login_now`) the rest runs as plain calls, and the command finishes without a
        Deferred of its own. While the portal works (a hash in the pool), the session's timeout
        is suspended: the server's own hashing time is not the client's inactivity (F2, F5); if
        the client leaves meanwhile, the login is cancelled (a queued hash is dropped).
        ``mechanism`` names the method for the audit log (USER, APOP, a SASL mechanism).
        """
        session = self.session
        user = getattr(credentials, "username", None)
        session.attempt = (user, mechanism or (session.attempt[1] if session.attempt else "USER"))
        factory = self.factory
        if factory.stats is not None:
            session.login_started = factory.clock.seconds()
        password = getattr(credentials, "password", None)
        if password is not None and len(password) > MAX_PASSWORD:
            return self._login_failed(Failure(UnauthorizedLogin("password too long")))
        if not _plausible_user_name(user):
            # No account has a NUL or undecodable bytes in its name; some checkers (Twisted's
            # ``unix``: pwd and crypt) raise on them instead of refusing.
            return self._login_failed(Failure(UnauthorizedLogin("impossible user name")))
        # A client whose address has recent failures queues its hash behind everyone else's,
        # and gives its place up to them when the queue is full (see cred.HashPool).
        g = policy.guard(self)
        suspect = bool(g.failures) and g.failure_count(policy.peer_ip(self)) > 0
        priority = cred.hash_priority.set(cred.SUSPECT if suspect else cred.NORMAL)
        try:
            d = cred.login_now(self.factory.portal, credentials, IMailbox)
        except Exception:
            return self._after_login(Failure(), credentials)
        finally:
            cred.hash_priority.reset(priority)
        if type(d) is tuple or not isinstance(d, defer.Deferred):
            return self._after_login(d, credentials)
        outcome: List[Any] = []
        d.addBoth(outcome.append)  # takes the result (a Failure too: nothing left unhandled)
        if outcome:
            return self._after_login(outcome[0], credentials)
        # The server's time (a queue of hashes, a slow database) is not the client's inactivity
        # (F2), but a checker or realm that never answers must not hold the connection for good:
        # it has until the absolute login deadline, and at most PENDING_LOGIN_LIMIT.
        session.pending_login = d
        timeout = self._timeout
        self.setTimeout(PENDING_LOGIN_LIMIT)

        def resumed(_: Any) -> Optional[defer.Deferred]:
            session.pending_login = None
            if not self._closing and self.transport is not None:
                self.setTimeout(timeout)
            return self._after_login(outcome[0], credentials)

        return d.addCallback(resumed)

    def _after_login(self, result: Any, credentials: Any) -> Optional[defer.Deferred]:
        """The portal's result (avatar tuple or Failure): admit, then snapshot; None when done."""
        factory = self.factory
        stats = factory.stats
        if stats is not None:
            stats.login_latency.observe(factory.clock.seconds() - self.session.login_started)
        if self._closing or self.transport is None:
            # The client has gone: no reply, and above all no session slot taken (F5).
            self._login_abandoned(result)
            return None
        if isinstance(result, Failure):
            return self._login_failed(result)
        try:
            pending = self._logged_in(policy.admit(result, self, credentials))
        except Exception:
            return self._login_failed(Failure())
        if pending is not None:
            return pending.addErrback(self._login_failed)
        return None

    def _login_abandoned(self, result: Any) -> None:
        """A login that finished after its connection: undo it, count a failure, log it once."""
        attempt = self.session.attempt
        self.session.attempt = None
        if isinstance(result, Failure):
            if not result.check(defer.CancelledError):
                code, _, _ = classify(result.value)
                if code == "AUTH":
                    policy.failure_delay(self)  # a guess was checked: it counts
            if attempt is not None:
                self._count_login(attempt[1], "disconnected")
                audit.auth_failed(self, attempt[0], attempt[1], "disconnected")
            return None
        if attempt is not None:
            self._count_login(attempt[1], "disconnected")
        try:
            result[2]()  # the realm's logout: unlock the maildrop again
        except Exception:
            self.log.failure("logout failed")
        return None

    def _logged_in(self, result: Any) -> Optional[defer.Deferred]:
        _, mailbox, logout = result
        session = self.session
        attempt, session.attempt = session.attempt, None
        if attempt is not None:
            self._count_login(attempt[1], "ok")
            if self.factory.config.security.log_successful_logins:
                audit.auth_ok(self, session.admitted_user or attempt[0], attempt[1])
        if self._closing or self.transport is None:
            logout()
            user, session.admitted_user = session.admitted_user, None
            if user is not None:
                policy.guard(self).release_user(user)
            return None
        session.attach(mailbox, logout)

        def snapshot(messages: Any) -> None:
            if self._closing or self.transport is None:
                return  # (connectionLost has logged out and released the slot)
            # A MessageTable (read-only columns) is kept as it is; anything else is copied.
            # (MessageTable is a Sequence, an ABC: the MRO test spares isinstance's Python
            # __instancecheck__.)
            if MessageTable in type(messages).__mro__:
                session.messages = messages
            elif getattr(mailbox, "uidls_valid", False):  # (the stock stores: spared a check per message)
                session.messages = list(messages)
            else:
                session.messages = self._checked_uids(list(messages))
            session.deleted = set()
            session.state = TRANSITIONS[(session.state, "login")]
            if self._hard_deadline is not None:
                del self._hard_deadline  # logged in: the login deadline is over
            self.setTimeout(self.config.idle_timeout)
            self.reply(True, "Logged in.")

        def failed(failure: Failure) -> Failure:
            self._do_logout()
            return failure

        try:
            messages = mailbox.list_messages()
        except Exception:
            self._do_logout()
            raise
        if type(messages) is not list and isinstance(messages, defer.Deferred):
            return messages.addCallbacks(snapshot, failed)
        snapshot(messages)
        return None

    def _checked_uids(self, messages: List[Any]) -> List[Any]:
        """A store's listing with every UIDL as RFC 1939 allows (a mailbox whose class says
        ``uidls_valid = True``, as the stock stores' do, is not checked): one that breaks the
        rule (a space, a control character, over 70 characters) would break the clients' UIDL
        parsing, so it is replaced by one made from it (:func:`~twisted_pop3ng.wire.valid_uid`,
        the same each session), and logged."""
        replaced = []
        for index, info in enumerate(messages):
            uid = info.uid
            if type(uid) is not str or not wire.is_valid_uid(uid):
                messages[index] = MessageInfo(wire.valid_uid(uid), info.size)
                replaced.append(uid)
        if replaced:
            self.log.warn("the mailbox store gave {count} message(s) a UIDL RFC 1939 does not allow "
                          "(the first: {uid!r}); each is sent as one made from it",
                          count=len(replaced), uid=replaced[0])
        return messages

    def _login_failed(self, failure: Failure) -> defer.Deferred:
        session = self.session
        code, text, expected = classify(failure.value)
        if not expected:
            log_failure(self.log, "login failed", failure)
        attempt, session.attempt = session.attempt, None
        if attempt is not None:
            reason = ("password" if code == "AUTH" else "busy" if failure.check(cred.HashPoolFull)
                      else (code or "error").lower().replace("/", "-") if expected else "error")
            self._count_login(attempt[1], reason)
            audit.auth_failed(self, attempt[0], attempt[1], reason)
        if self._closing or self.transport is None:
            return defer.succeed(None)
        if code != "AUTH":
            self.reply(False, text, code)
            return defer.succeed(None)
        close = policy.too_many_failures(self)
        d: defer.Deferred[None] = defer.Deferred()
        self.clock.callLater(policy.failure_delay(self), d.callback, None)

        def answer(_: Any) -> None:
            if self._closing:  # gone, or closed meanwhile (the login deadline): nothing to say
                return
            if close:  # Dovecot's rule: a few failures on one connection, then it is closed
                self.close("Authentication failed.", code="AUTH")
            else:
                self.reply(False, "Authentication failed.", "AUTH")

        d.addCallback(answer)
        return d

    def send_message(self, index: int, status: bytes,
                     encoder: Optional[wire.MessageEncoder] = None) -> Optional[defer.Deferred]:
        """Send a message after its status line (``+OK ...`` CRLF): in one piece when small, else
        streamed; the status line goes out only once the message could be read or opened.
        ``encoder`` None: the whole message (RETR), else that encoder's part of it (TOP).

        Small messages come from ``read_whole`` when the mailbox provides
        :class:`~twisted_pop3ng.interfaces.IWholeMessageReader` (one read, no file object, Deferred
        or stream: pipelined RETRs of small messages are the bulk case; bound once per login), else
        from a file whose size ``fstat`` knows (:meth:`_send_whole`).
        """
        session = self.session
        top = encoder is not None
        try:
            read_whole = session.read_whole
            data = read_whole(index, CHUNK_SIZE) if read_whole is not None else None
            if data is not None:
                self._write_message(status, encoder, data)
                return None
            opened = session.mailbox.open_message(index)
        except Exception:
            return defer.fail()
        if encoder is None:
            encoder = wire.MessageEncoder()
        if not isinstance(opened, defer.Deferred) and self._send_whole(opened, status, encoder):
            return None
        d = opened if isinstance(opened, defer.Deferred) else defer.succeed(opened)

        def stream(source: Any) -> defer.Deferred:
            if self._closing:
                source.close()
                return defer.succeed(None)
            transfer = self._stream = MessageStream(self, source, status, encoder)

            def counted(result: Any) -> Any:
                if not isinstance(result, Failure):
                    self._count_sent(top, transfer.sent)
                return result

            if self.paused and "write" in self._blocks:
                transfer.pause()
            transfer.run()
            return transfer.deferred.addBoth(counted).addBoth(self._stream_done)

        return d.addCallback(stream)

    def _write_message(self, status: bytes, encoder: Optional[wire.MessageEncoder],
                       data: bytes) -> None:
        # Status and body as separate pieces of the batch: no copy of the body to join them.
        pieces = wire.encode_whole_pieces(data) if encoder is None else encoder.encode_all(data)
        size = sum(map(len, pieces))
        stats = self.factory.stats
        if stats is not None:
            stats.sent(encoder is not None, size, self.session.summary)
        pieces.insert(0, status)
        self.write_pieces(pieces, size + len(status))

    def _count_sent(self, top: bool, size: int) -> None:
        """A message sent (RETR, or TOP's part of it): ``size`` octets after the status line."""
        stats = self.factory.stats
        if stats is not None:
            stats.sent(top, size, self.session.summary)

    def _count_login(self, mechanism: str, result: str) -> None:
        stats = self.factory.stats
        if stats is not None:
            stats.logins[(mechanism, result)] += 1

    def _send_whole(self, source: Any, status: bytes, encoder: wire.MessageEncoder) -> bool:
        """Send a small stored file in one write, synchronously; False: stream it instead.

        For mailboxes without ``read_whole`` whose files are real files: only files whose size
        ``fstat`` knows qualify; one that changes meanwhile is streamed.
        """
        try:
            size = os.fstat(source.fileno()).st_size
        except Exception:
            return False
        if size >= CHUNK_SIZE:
            return False
        try:
            data = source.read(size + 1)
            if len(data) != size:
                source.seek(0)
                return False
        except BaseException:
            source.close()
            raise
        source.close()
        self._write_message(status, encoder, data)
        return True

    def _stream_done(self, result: Any) -> None:
        self._stream = None
        if isinstance(result, Failure):
            if not self._closing:
                # The status line is out; a partial body cannot be turned into -ERR: drop the
                # connection (nothing is committed) so the client does not take a short message.
                log_failure(self.log, "message transfer failed", result)
                self.close()
        return None


def _plausible_user_name(user: Any) -> bool:
    """Whether ``user`` could name an account: UTF-8 (or str) without NUL; None (a mechanism that
    names the user later) passes."""
    if isinstance(user, bytes):
        if b"\0" in user:
            return False
        try:
            user.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True
    return not (isinstance(user, str) and "\0" in user)


def _register_preauthenticated(portal: Any) -> None:
    """Let the portal accept what SASL has proven (SCRAM, EXTERNAL, OAuth) of users its other
    checkers know (F6), unless it already has a checker of its own for that."""
    checkers = getattr(portal, "checkers", None)  # a portal need not be a cred Portal
    if checkers is not None and cred.IPreauthenticated not in checkers:
        portal.registerChecker(cred.PreauthenticatedChecker(portal))


class POP3ServerFactory(Factory):
    """Builds :class:`POP3ServerProtocol` sessions against a ``twisted.cred`` portal."""

    protocol = POP3ServerProtocol

    def __init__(self, portal: Any, config: Optional[ServerConfig] = None, clock: Any = None,
                 commands: Optional[CommandSet] = None, *,
                 tls: Any = None, token_validator: Any = None,
                 abuse_guard: Optional[policy.AbuseGuard] = None,
                 sasl_secret_key: Optional[bytes] = None,
                 sender: Any = None, connection_info: Any = None,
                 stats: Optional[ServerStats] = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.portal = portal
        #: This server's verbs (a copy: registering on it changes no other server).
        self.commands = (commands if commands is not None else DEFAULT_COMMANDS).copy()
        self.config = config or ServerConfig()
        self.clock = clock
        self.sessions = itertools.count(1)
        self._idle_sweeper: Optional[IdleSweeper] = None
        #: The TLS context factory STLS starts (an ``IOpenSSLServerConnectionCreator`` or
        #: ``ContextFactory``); None: STLS is not offered.
        self.tls = tls
        #: Validates OAUTHBEARER/XOAUTH2 tokens (``validate(token) -> user | None``, see
        #: :mod:`twisted_pop3ng.auth.oauth`); None: those mechanisms are not offered.
        self.token_validator = token_validator
        self._abuse_guard = abuse_guard
        #: Keys the made-up SCRAM salts of unknown users (stable per user) and the salts derived
        #: for ``{PLAIN}`` users. None: the secret store's stable key (an HMAC over the
        #: passwd-file, see ``PasswdFileChecker.salt_key``), never a random one per process, which
        #: told unknown users from stored ones across ``--workers`` and restarts (F7).
        self.sasl_secret_key = sasl_secret_key
        #: How replies reach the transport and how the addresses of a connection are read (see
        #: :class:`~twisted_pop3ng.server.io.StockSender`,
        #: :func:`~twisted_pop3ng.server.io.stock_connection_info`); None: the stock ones, public
        #: Twisted API only (``twistd pop3ng`` passes the fast path's, :mod:`twisted_pop3ng.fastpath`).

        self.sender = sender if sender is not None else STOCK_SENDER
        #: What this server counts (sessions, commands, logins, errors, ...; see
        #: :mod:`twisted_pop3ng.server.stats`), read by ``--metrics``; None: nothing is counted
        #: (a session then pays one test per command). ``config.log_sessions`` makes one.
        self.stats = stats
        self.connection_info = (connection_info if connection_info is not None
                                else stock_connection_info)
        _register_preauthenticated(portal)

    @property
    def abuse_guard(self) -> policy.AbuseGuard:
        """This server's memory of failures, connections and logins (spanning connections).

        Made at the first use unless one was given, so that a ``config.security`` replaced after
        construction (as ``twistd pop3ng`` does) is the one it enforces."""
        guard = self._abuse_guard
        if guard is None:
            config = self.config
            guard = self._abuse_guard = policy.AbuseGuard(
                config.security, config.auth_failure_delay, self.clock)
        return guard

    @abuse_guard.setter
    def abuse_guard(self, guard: Optional[policy.AbuseGuard]) -> None:
        self._abuse_guard = guard

    def idle_sweeper(self) -> IdleSweeper:
        if self._idle_sweeper is None:
            self._idle_sweeper = IdleSweeper(self.clock)
        return self._idle_sweeper

    def startFactory(self) -> None:
        self.idle_sweeper().keep_timer = True
        if self.stats is None and self.config.log_sessions:
            self.stats = ServerStats()  # (the session summaries are made of its counts)

    def stopFactory(self) -> None:
        self.idle_sweeper().stop()
