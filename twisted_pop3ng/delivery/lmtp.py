"""The LMTP server (RFC 2033): mail from an MTA delivered into an
:class:`~twisted_pop3ng.interfaces.IMailboxDelivery` store.

Rules of this module: one method per verb (``lmtp_VERB``), and :data:`NEEDS` -- the step of the
transaction each verb requires -- is the only sequencing rule; limits are named constants or
:class:`LMTPConfig` fields. Replies carry RFC 3463 enhanced status codes. Reading stops
while a recipient is looked up or the message is being stored, so pipelined commands are answered
in order, and while the replies are not read (the connection is the transport's streaming
producer: a client that pipelines and never reads cannot make the server buffer without end).
A connection being closed is aborted if its last replies cannot be sent in :data:`CLOSE_GRACE`.

After the final dot, every accepted recipient gets its own reply (RFC 2033 §4.2), and ``250`` only
once the store's ``deliver`` returned, so the message is durable. The body is spooled first
(:mod:`.spool`, bounded memory), then stored for each recipient in a thread of a bounded pool, behind
that recipient's trace headers (:mod:`.trace`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from twisted_pop3ng.delivery import outcome
from twisted_pop3ng.delivery.body import DataDecoder
from twisted_pop3ng.delivery.outcome import Outcome
from twisted_pop3ng.delivery.recipients import AddressError, RecipientResolver, parse_path
from twisted_pop3ng.delivery.spool import PrefixedSource, new_spool
from twisted_pop3ng.delivery.trace import Envelope, trace_headers

#: RFC 5321 §4.5.3.1.4 allows 512 octets for a command line and lets extensions add parameters;
#: 1,000 (its text line limit) leaves room for them and still stops a client that sends no CRLF.
MAX_COMMAND_LINE = 1000
#: RFC 5321 §4.5.3.1.8: at least 100 recipients per transaction must be accepted.
DEFAULT_MAX_RECIPIENTS = 100
#: RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for the next command.
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_SIZE = 64 << 20
DEFAULT_MAX_BAD_COMMANDS = 20
#: As Dovecot's LMTP service (process_limit 100, one client each); Postfix opens 20 per destination.
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_THREADS = 8

GREETED, MAIL, RCPT = "greeted", "mail", "rcpt"
#: verb -> the step it needs: LHLO said, MAIL given, or at least one recipient accepted.
NEEDS = {"MAIL": GREETED, "RCPT": MAIL, "DATA": RCPT}
_NOT_YET = {GREETED: "Send LHLO first", MAIL: "Send MAIL first", RCPT: "No valid recipients"}
_MAIL_BODIES = ("7BIT", "8BITMIME")

Copy = Tuple[str, bytes]  # (user, trace headers): one recipient's copy of the message


@dataclass(frozen=True)
class LMTPConfig:
    max_size: int = DEFAULT_MAX_SIZE
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    timeout: float = DEFAULT_TIMEOUT
    max_bad_commands: int = DEFAULT_MAX_BAD_COMMANDS
    #: Connections open at once; past it a new one gets ``421`` and is closed (0: no limit).
    #: Each may hold up to 1 MiB of message in memory, and a descriptor.
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Prepend Return-Path / Delivered-To / Received (:mod:`.trace`); False stores DATA as sent.
    trace_headers: bool = True
    hostname: str = socket.gethostname()
    #: Where bodies over the in-memory size are spooled (None: the system's temporary directory).
    spool_dir: Optional[str] = None


def deliver_copies(store: Any, spool: IO[bytes], copies: Sequence[Copy]) -> List[Tuple[Outcome, Optional[Failure]]]:
    """Store the spooled body once per copy, in turn (in a pool thread): each copy's outcome, and
    the failure to log when it was a surprise."""
    results: List[Tuple[Outcome, Optional[Failure]]] = []
    for user, prefix in copies:
        try:
            results.append((outcome.delivered(store.deliver(user, PrefixedSource(prefix, spool))), None))
        except Exception as error:
            failed = outcome.classify(error)
            results.append((failed, None if failed.expected else Failure()))
    return results


#: Seconds a closing connection has to take its last replies before it is aborted (a client that
#: never reads would otherwise hold it, and its buffered replies, for good).
CLOSE_GRACE = 10.0


class LMTPServer(LineReceiver, TimeoutMixin):
    """One LMTP connection. ``factory`` holds the store, the resolver, the pool and the config."""

    delimiter = b"\n"  # CRLF expected; a bare LF is taken too (the CR is stripped)
    MAX_LENGTH = MAX_COMMAND_LINE
    log = Logger()
    factory: "LMTPFactory"
    transport: Any

    def __init__(self) -> None:
        self._helo = ""
        self._sender: Optional[str] = None
        self._recipients: List[Tuple[str, str]] = []  # (address, user)
        self._bad_commands = 0
        self._decoder: Optional[DataDecoder] = None
        self._spool: Optional[IO[bytes]] = None
        self._spool_error: Optional[OSError] = None
        self._gone = False
        #: Why lines are not read now ("busy": a lookup or a delivery; "output": replies unread).
        self._blocks: set = set()
        self._abort_call: Any = None

    # -- connection -------------------------------------------------------------------------------

    _counted = False

    def connectionMade(self) -> None:
        self.config = self.factory.config
        self.setTimeout(self.config.timeout)
        self.transport.registerProducer(self, True)
        limit = self.config.max_connections
        if limit and self.factory.open_connections >= limit:
            self._close("421 4.3.2 %s Too many connections, try again later" % self.config.hostname)
            return
        self.factory.open_connections += 1
        self._counted = True
        self._reply("220 %s LMTP pop3ng ready" % self.config.hostname)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._counted:
            self._counted = False
            self.factory.open_connections -= 1
        self._gone = True
        self.setTimeout(None)
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if self._decoder is not None:  # cut off inside DATA: nothing is delivered
            self._close_spool()

    def timeoutConnection(self) -> None:
        self._close("421 4.4.2 %s Timeout, closing connection" % self.config.hostname)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._close("500 5.5.2 Line too long (at most %d octets)" % MAX_COMMAND_LINE)

    def _close(self, last: Optional[str] = None) -> None:
        """Say ``last``, close once the replies are sent, abort if they cannot be."""
        if self._gone:
            return
        if last is not None:
            self._reply(last)
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self._abort_call is None:
            self._abort_call = self.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if not self._gone:
            self.transport.abortConnection()

    # -- reading: paused while busy, or while the replies are not read ------------------------------

    def _block(self, why: str) -> None:
        if not self._blocks:
            LineReceiver.pauseProducing(self)
        self._blocks.add(why)

    def _unblock(self, why: str) -> None:
        if why not in self._blocks:
            return
        self._blocks.discard(why)
        if not self._blocks and not self._gone:
            LineReceiver.resumeProducing(self)

    def pauseProducing(self) -> None:  # IPushProducer: the transport's buffer is full
        self._block("output")

    def resumeProducing(self) -> None:  # IPushProducer: it drained
        self._unblock("output")

    def stopProducing(self) -> None:
        self._blocks.clear()

    def _reply(self, line: str) -> None:
        if not self._gone:
            self.transport.write(line.encode("ascii", "replace") + b"\r\n")

    def _bad(self, line: str) -> None:
        """A command refused for its syntax or sequence; too many of them end the connection."""
        self._reply(line)
        self._bad_commands += 1
        if self._bad_commands >= self.config.max_bad_commands:
            self._close("421 4.7.0 %s Too many errors, closing connection" % self.config.hostname)

    # -- commands ---------------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            return self._bad("500 5.5.2 Command line is not ASCII")
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        handler: Optional[Callable[[str], None]] = getattr(self, "lmtp_" + verb, None) \
            if verb.isalpha() and len(verb) <= 8 else None
        if handler is None:
            return self._bad("500 5.5.1 Unknown command")
        needed = NEEDS.get(verb)
        missing = None if needed is None else self._missing(needed)
        if missing is not None:
            return self._bad("503 5.5.1 %s" % _NOT_YET[missing])
        handler(argument.strip())

    def _missing(self, step: str) -> Optional[str]:
        """The first step before ``step`` (itself included) not yet taken, or None."""
        if not self._helo:
            return GREETED
        if step in (MAIL, RCPT) and self._sender is None:
            return MAIL
        if step == RCPT and not self._recipients:
            return RCPT
        return None

    def lmtp_LHLO(self, argument: str) -> None:
        if not argument or " " in argument or not argument.isprintable():
            return self._bad("501 5.5.4 Syntax: LHLO hostname")
        self._helo = argument
        self._reset()
        self.transport.write(("250-%s\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
                              "250 SIZE %d\r\n" % (self.config.hostname, self.config.max_size)).encode("ascii"))

    def lmtp_HELO(self, argument: str) -> None:
        self._bad("500 5.5.1 This is LMTP: say LHLO")

    lmtp_EHLO = lmtp_HELO

    def lmtp_MAIL(self, argument: str) -> None:
        if self._sender is not None:
            return self._bad("503 5.5.1 MAIL already given (RSET first)")
        if not argument.upper().startswith("FROM:"):
            return self._bad("501 5.5.4 Syntax: MAIL FROM:<address>")
        rest = argument[5:].strip()
        try:
            sender = parse_path(rest, null_allowed=True)
        except AddressError as error:
            return self._bad("501 5.1.7 Bad sender address: %s" % error)
        for parameter in _parameters(rest):
            key, _, value = parameter.partition("=")
            key = key.upper()
            if key == "SIZE" and value.isdigit() and len(value) <= 20:
                if int(value) > self.config.max_size:
                    return self._reply("552 5.3.4 Message too big (at most %d octets)" % self.config.max_size)
            elif not (key == "BODY" and value.upper() in _MAIL_BODIES):
                return self._bad("555 5.5.4 Unsupported MAIL parameter %s" % _printable(key[:32]))
        self._sender = sender
        self._reply("250 2.1.0 Ok")

    def lmtp_RCPT(self, argument: str) -> None:
        if not argument.upper().startswith("TO:"):
            return self._bad("501 5.5.4 Syntax: RCPT TO:<address>")
        rest = argument[3:].strip()
        try:
            address = parse_path(rest)
        except AddressError as error:
            return self._bad("501 5.1.3 Bad recipient address: %s" % error)
        if _parameters(rest):
            return self._bad("555 5.5.4 RCPT parameters are not supported")
        if len(self._recipients) >= self.config.max_recipients:
            return self._reply("452 4.5.3 Too many recipients")

        def resolved(user: Optional[str]) -> None:
            if user is None:
                self._reply("550 5.1.1 <%s> No such user here" % address)
            else:
                self._recipients.append((address, user))
                self._reply("250 2.1.5 <%s> Ok" % address)

        def failed(reason: Failure) -> None:
            self.log.failure("looking up LMTP recipient {address}", reason, address=address)
            self._reply("451 4.3.0 <%s> User database unavailable, try again later" % address)

        self._after(self.factory.resolver.resolve(address), resolved, failed)

    def lmtp_DATA(self, argument: str) -> None:
        if argument:
            return self._bad("501 5.5.4 Syntax: DATA")
        try:
            self._spool = new_spool(self.config.spool_dir)
        except OSError as error:
            self.log.error("cannot create an LMTP spool: {error}", error=error)
            return self._reply("451 4.3.0 Cannot spool the message, try again later")
        self._decoder = DataDecoder()
        self._spool_error = None
        self._reply("354 Start mail input; end with <CRLF>.<CRLF>")
        self.setRawMode()

    def lmtp_RSET(self, argument: str) -> None:
        self._reset()
        self._reply("250 2.0.0 Ok")

    def lmtp_NOOP(self, argument: str) -> None:
        self._reply("250 2.0.0 Ok")

    def lmtp_VRFY(self, argument: str) -> None:
        # Not answered (users are not disclosed), as RFC 5321 §3.5.3 allows.
        self._reply("252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery")

    def lmtp_QUIT(self, argument: str) -> None:
        self._close("221 2.0.0 %s Bye" % self.config.hostname)

    def _reset(self) -> None:
        self._sender = None
        self._recipients = []

    def _after(self, result: defer.Deferred, callback: Callable[[Any], None],
               errback: Callable[[Failure], None]) -> None:
        """Run ``callback``/``errback`` on ``result``; reading stops until it fires (at once for a
        synchronous answer, so the common case costs no pause)."""
        fired: List[Any] = []
        result.addCallbacks(callback, errback).addBoth(fired.append)
        if not fired:
            self._block("busy")
            result.addBoth(lambda _: self._unblock("busy"))

    # -- the message ------------------------------------------------------------------------------

    def rawDataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        assert self._decoder is not None
        stored, leftover = self._decoder.feed(data)
        too_big = self._decoder.size > self.config.max_size
        if stored and not too_big:
            self._spool_stored(stored)
        if leftover is not None:
            self._block("busy")  # until every recipient has its reply
            self.setLineMode(leftover)  # (kept in the buffer while paused)
            self._deliver(too_big)

    def _spool_stored(self, stored: bytes) -> None:
        """Keep ``stored`` for delivery (in the reactor thread: a write to memory or to the page
        cache, never synced); after a failure, read on to the final dot and keep nothing."""
        if self._spool_error is None:
            try:
                assert self._spool is not None
                self._spool.write(stored)
            except OSError as error:
                self._spool_error = error

    def _deliver(self, too_big: bool) -> None:
        recipients, spool = self._recipients, self._spool
        assert spool is not None
        self._decoder = None
        if too_big:
            self._finish(recipients, [Outcome(outcome.TOO_BIG)] * len(recipients))
            return
        if self._spool_error is not None:
            self.log.error("LMTP spool: {error}", error=self._spool_error)
            self._finish(recipients, [outcome.classify(self._spool_error)] * len(recipients))
            return
        self.setTimeout(None)  # the store's time is not the client's
        envelope = self._envelope()
        # One copy per mailbox: a second RCPT for a mailbox already named (the same address
        # twice, or another address of the same user) gets the first one's reply, as Dovecot's
        # LMTP does, and the user gets the message once.
        first: Dict[str, str] = {}
        for address, user in recipients:
            first.setdefault(user, address)
        copies = [(user, trace_headers(envelope, address) if envelope else b"") for user, address in first.items()]
        result = deferToThreadPool(self.factory.reactor, self.factory.pool, deliver_copies,
                                   self.factory.store, spool, copies)

        def done(results: List[Tuple[Outcome, Optional[Failure]]]) -> None:
            by_user: Dict[str, Outcome] = {}
            for (user, _), (result, failure) in zip(copies, results):
                by_user[user] = result
                if failure is not None:
                    self.log.failure("LMTP delivery to {user}", failure, user=user)
                elif result.kind != outcome.DELIVERED:
                    self.log.warn("LMTP delivery to {user} failed: {text}", user=user,
                                  text=result.description)
            self._finish(recipients, [by_user[user] for _, user in recipients])

        def failed(reason: Failure) -> None:  # the pool itself failed (stopped): nothing stored
            self.log.failure("LMTP delivery", reason)
            self._finish(recipients, [Outcome(outcome.TEMPORARY)] * len(recipients))

        result.addCallbacks(done, failed)

    def _envelope(self) -> Optional[Envelope]:
        """This transaction's envelope for the trace headers (None: they are off)."""
        if not self.config.trace_headers:
            return None
        peer = self.transport.getPeer()
        return Envelope(self._sender or "", self._helo, getattr(peer, "host", None) or "local",
                        self.config.hostname, os.urandom(6).hex())

    def _finish(self, recipients: Sequence[Tuple[str, str]], results: Sequence[Outcome]) -> None:
        self._close_spool()
        if self._gone:
            return
        self.transport.write(b"".join(result.lmtp_reply(address)
                                      for (address, _), result in zip(recipients, results)))
        self._reset()
        self.setTimeout(self.config.timeout)
        self._unblock("busy")

    def _close_spool(self) -> None:
        spool, self._spool, self._decoder = self._spool, None, None
        if spool is not None:
            spool.close()


def _printable(text: str) -> str:
    """``text`` with control characters shown as ``?`` (it goes back to the client in a reply)."""
    return "".join(c if " " <= c < "\x7f" else "?" for c in text)


def _parameters(rest: str) -> List[str]:
    """The ESMTP parameters after a ``<path>`` (RFC 5321 §4.1.2)."""
    end = rest.find(">")
    tail = rest[end + 1:] if end != -1 else rest.partition(" ")[2]
    return tail.split()


class LMTPFactory(protocol.Factory):
    """LMTP connections delivering into ``store`` (an ``IMailboxDelivery``) for the recipients
    ``resolver`` knows, in the threads of ``pool``."""

    protocol = LMTPServer  # type: ignore[assignment]

    def __init__(self, store: Any, resolver: RecipientResolver, pool: ThreadPool,
                 config: Optional[LMTPConfig] = None, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.store = store
        self.resolver = resolver
        self.pool = pool
        self.config = config or LMTPConfig()
        self.reactor = reactor
        #: Connections open now (for :attr:`LMTPConfig.max_connections`).
        self.open_connections = 0


class ThreadPoolService(service.Service):
    """Runs ``pool`` while the service runs; stopping waits for the deliveries under way, so a
    message being stored at shutdown is stored (its client may then not hear the ``250``, and
    sends it again: a duplicate, never a loss)."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        service.Service.startService(self)
        self.pool.start()

    def stopService(self) -> None:
        service.Service.stopService(self)
        self.pool.stop()
