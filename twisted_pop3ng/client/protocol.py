"""The POP3 client protocol (RFC 1939, 2449, 2595, 5034) with a Deferred API.

Rules of this module:

* every command is a :class:`_Pending` in a FIFO; replies are matched to the head of the FIFO, which
  is how the client knows whether a reply is multi-line and how pipelining (RFC 2449 §6.6) works:
  with ``PIPELINING`` advertised, commands are written at once; without it, one at a time;
* ``STLS``, ``AUTH``, ``USER``/``PASS``/``APOP`` and ``QUIT`` are barriers: sent alone, nothing
  after them is sent until they are answered;
* all parsing goes through :mod:`twisted_pop3ng.wire` (status lines, dot-unstuffing, terminator);
* message bodies stream into a consumer (``IConsumer`` with backpressure, or anything with
  ``write``); memory stays bounded whatever the message size;
* every ``-ERR`` becomes a :class:`ServerError` subclass chosen by its response code;
* nothing the server says is trusted (finding F16): listings are bounded per line and in total,
  numbers are ASCII digits within plausible limits, message numbers unique, UIDLs follow RFC 1939
  (:func:`twisted_pop3ng.wire.is_valid_uid`); a violation is a :class:`ProtocolError`;
* commands queued behind ``STLS`` are written only once TLS has started, never in plaintext.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, cast

from twisted.internet import defer, error as ierror
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_pop3ng.auth import sasl_client
from twisted_pop3ng import wire
from twisted_pop3ng.client.login import LoginMixin
from twisted_pop3ng._net import set_no_delay
from twisted_pop3ng.client.errors import (AuthError, CapabilityError, InUseError, LoginDelayError,
                            PermanentError, ProtocolError, ServerError, StlsRequired,
                            TemporaryError, TLSError, TLSVerificationError, UidlUnsupported,
                            error_for, printable)

__all__ = ["POP3Client", "POP3ClientFactory", "AuthError", "CapabilityError",
           "InUseError", "LoginDelayError", "PermanentError", "ProtocolError", "ServerError",
           "TemporaryError", "TLSError", "error_for", "StlsRequired", "UidlUnsupported",
           "TLSVerificationError"]

#: Seconds without any progress on a pending command before the connection is given up.
DEFAULT_TIMEOUT = 60.0
#: A status line longer than this (RFC 2449 allows 512) is a broken server, not a long reply.
MAX_STATUS_LINE = 8192


#: One line of a CAPA, LIST or UIDL listing. RFC 2449 §4 caps response lines at 512 octets; a
#: longer one is a broken or hostile server (finding F16), refused before it can grow.
MAX_LISTING_LINE = 2 * wire.MAX_RESPONSE_LINE
#: All of one CAPA, LIST or UIDL listing: a UIDL line is at most ~84 octets, so this is some
#: 800,000 messages; an endless listing fails here instead of taking the client's memory.
MAX_LISTING_OCTETS = 64 << 20
#: The largest message size (LIST) and total (STAT) believed: beyond, the reply is nonsense.
MAX_MESSAGE_OCTETS = 1 << 40
MAX_TOTAL_OCTETS = 1 << 50


class _LinesSink:
    """Collects a short multi-line body (CAPA, LIST, UIDL) as lines, within bounds: a line longer
    than ``max_line`` or a body longer than ``max_octets`` raises :class:`ProtocolError` (which
    fails the command and drops the connection) as soon as it is seen."""

    def __init__(self, max_line: int = MAX_LISTING_LINE,
                 max_octets: int = MAX_LISTING_OCTETS) -> None:
        self.lines: List[bytes] = []
        self._partial = b""
        self._octets = 0
        self._max_line = max_line
        self._max_octets = max_octets

    def write(self, data: bytes) -> None:
        self._octets += len(data)
        if self._octets > self._max_octets:
            raise ProtocolError("listing longer than %d octets" % self._max_octets)
        lines = (self._partial + data).split(b"\r\n")
        self._partial = lines.pop()
        if len(self._partial) > self._max_line or any(len(line) > self._max_line for line in lines):
            raise ProtocolError("listing line longer than %d octets" % self._max_line)
        self.lines.extend(lines)

    def result(self) -> List[bytes]:
        return self.lines


class _BytesSink:
    """Collects a message body (RETR/TOP without a consumer) in memory."""

    def __init__(self) -> None:
        self.parts: List[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def result(self) -> bytes:
        return b"".join(self.parts)


class _Pending:
    """One command in the FIFO, from queued to answered."""

    __slots__ = ("line", "verb", "deferred", "multiline", "sink", "mechanism", "barrier",
                 "discard_rest", "failure", "is_auth", "registered")

    def __init__(self, line: Optional[bytes], multiline: bool = False, sink: Any = None,
                 barrier: bool = False, mechanism: Any = None, is_auth: bool = False) -> None:
        self.line = line
        words = line.split(b" ", 2)[:2] if line else [b"greeting"]
        self.verb = words[0].decode("ascii", "replace").upper()
        if self.verb == "AUTH" and len(words) == 2:
            self.verb += " " + words[1].decode("ascii", "replace").upper()  # errors name the mechanism
        self.deferred: defer.Deferred = defer.Deferred()
        self.multiline = multiline
        self.sink = sink
        self.barrier = barrier
        self.mechanism = mechanism
        self.is_auth = is_auth
        self.discard_rest = False
        self.registered = False
        self.failure: Optional[BaseException] = None


#: Octets that count as progress for the command timeout even before a reply is complete (a
#: large RETR on a slow link); fewer per timeout is a server holding the client, not a slow one.
PROGRESS_OCTETS = 1024


class _ServerHungUp(Exception):
    """An ``-ERR`` no command asked for: the server's last words before it closes (an idle
    timeout, a shutdown)."""

    def __init__(self, line: bytes) -> None:
        super().__init__(repr(line))
        self.text = printable(line.decode("utf-8", "replace"))


class _ConsumerFailed(Exception):
    """The consumer of a message body raised; carries its exception."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@implementer(IPushProducer)
class _BodyProducer:
    """Registered with a consumer while a body streams into it: its pushback pauses the socket."""

    def __init__(self, protocol: "POP3Client") -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:
        self.protocol._set_paused(True)

    def resumeProducing(self) -> None:
        self.protocol._set_paused(False)

    def stopProducing(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.abortConnection()


class POP3Client(LoginMixin, Protocol, TimeoutMixin):
    """A POP3 client session. ``ready`` fires with the greeting text once the server has greeted."""

    #: Bounds of one CAPA, LIST or UIDL listing (a line, the whole); see :class:`_LinesSink`.
    max_listing_line = MAX_LISTING_LINE
    max_listing_octets = MAX_LISTING_OCTETS

    def __init__(self, timeout: Optional[float] = DEFAULT_TIMEOUT, clock: Any = None) -> None:
        self.command_timeout = timeout
        self.clock = clock
        self.capabilities: Dict[str, List[str]] = {}
        self.greeting = ""
        self.tls = False
        self.logged_in = False
        #: The method ``login`` used: a SASL mechanism name, ``USER`` or ``APOP``.
        self.mechanism: Optional[str] = None
        self.ready: defer.Deferred = defer.Deferred()
        self._buffer = b""
        self._queued: Deque[_Pending] = deque()
        self._inflight: Deque[_Pending] = deque()
        self._decoder: Optional[wire.MultiLineDecoder] = None
        self._paused = False
        self._processing = False
        self._closed: Optional[Failure] = None
        self._quitting = False
        self._lost: Optional[defer.Deferred[None]] = defer.Deferred()
        greeting = _Pending(None)
        greeting.deferred.addCallback(self._greeted)
        greeting.deferred.chainDeferred(self.ready)
        self._inflight.append(greeting)

    # -- connection plumbing ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        if self.clock is not None:
            self.callLater = self.clock.callLater  # type: ignore[method-assign]  # TimeoutMixin's documented override
        set_no_delay(self.transport)
        self._arm_timeout()

    _unproductive = 0

    def _arm_timeout(self) -> None:
        self._unproductive = 0
        busy = bool(self._inflight or self._queued)
        self.setTimeout(self.command_timeout if busy else None)

    def timeoutConnection(self) -> None:
        self._closed = Failure(ierror.TimeoutError("no reply from the POP3 server in %s s"
                                                   % self.command_timeout))
        self._fail_all(self._closed)
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.setTimeout(None)
        failure = reason
        tls_error = _tls_error(reason, self.transport) if reason is not None else None
        if tls_error is not None:
            failure = Failure(tls_error)
        elif self._inflight and self._inflight[0].verb == "QUIT":
            # Closed instead of answering QUIT: whether the server entered UPDATE and deleted the
            # marked messages cannot be known, so it is not a clean end (a fetcher that took it
            # for one forgot what it had delivered, and fetched it all again next time).
            failure = Failure(ierror.ConnectionLost(
                "the server closed the connection without answering QUIT: it may not have "
                "deleted the messages marked for deletion"))
        elif reason is not None and reason.check(ierror.ConnectionDone) and self._inflight:
            failure = Failure(ierror.ConnectionLost("server closed the connection during %s"
                                                    % self._inflight[0].verb))
        if self._closed is None:
            self._closed = failure or Failure(ierror.ConnectionDone())
        self._fail_all(self._closed)
        lost, self._lost = self._lost, None
        if lost is not None:
            lost.callback(None)

    def when_closed(self) -> defer.Deferred:
        """A Deferred that fires once the connection is gone."""
        if self._lost is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()

        def fire(result: Any) -> Any:
            d.callback(None)
            return result

        self._lost.addBoth(fire)
        return d

    def _fail_all(self, failure: Failure) -> None:
        pending = list(self._inflight) + list(self._queued)
        self._inflight.clear()
        self._queued.clear()
        self._decoder = None
        for item in pending:
            self._release_consumer(item)
            if not item.deferred.called:
                item.deferred.errback(failure)

    # -- sending ----------------------------------------------------------------------------------

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.capabilities

    def send(self, line: bytes, multiline: bool = False, sink: Any = None, barrier: bool = False,
             mechanism: Any = None, is_auth: bool = False,
             discard_rest: bool = False) -> defer.Deferred:
        """Queue a raw command; fires with its :class:`~twisted_pop3ng.wire.Status` (or sink result)."""
        return self._enqueue(line, dict(multiline=multiline, sink=sink, barrier=barrier,
                                        mechanism=mechanism, is_auth=is_auth), discard_rest)

    def _send_next(self, line: bytes, **kwargs: Any) -> defer.Deferred:
        """:meth:`send`, ahead of everything queued: the next step of an exchange under way
        (``PASS`` after ``USER``), which a command the caller queued meanwhile must not split."""
        return self._enqueue(line, kwargs, kwargs.pop("discard_rest", False), first=True)

    def _enqueue(self, line: bytes, arguments: Dict[str, Any], discard_rest: bool,
                 first: bool = False) -> defer.Deferred:
        if self._closed is not None:
            return defer.fail(self._closed)
        if b"\r" in line or b"\n" in line:
            return defer.fail(ValueError("a command line cannot contain CR or LF"))
        pending = _Pending(line, **arguments)
        pending.discard_rest = discard_rest
        pending.deferred = defer.Deferred(lambda _: self._cancel(pending))
        if first:
            self._queued.appendleft(pending)
        else:
            self._queued.append(pending)
        self._flush()
        return pending.deferred

    def _cancel(self, pending: _Pending) -> None:
        """``Deferred.cancel()`` of a command: a cancelled command has no effect. One not sent
        yet never is; one sent already (a DELE, a RETR half received) cannot be taken back, so
        the connection is aborted: without QUIT the server commits nothing, and no more of a
        body reaches its consumer. The other commands fail with the reason. (QUIT itself, once
        sent, may have been acted on before the abort arrives.)"""
        if any(item is pending for item in self._queued):
            if pending.discard_rest:  # STLS: what was queued behind it must not go out in clear
                behind = list(self._queued)
                stranded = behind[next(k for k, item in enumerate(behind) if item is pending) + 1:]
                self._queued = deque(item for item in behind if item is not pending
                                     and not any(item is s for s in stranded))
                for item in stranded:
                    item.deferred.errback(TLSError("STLS was cancelled: %s was not sent in the clear"
                                                   % item.verb))
            else:
                self._queued = deque(item for item in self._queued if item is not pending)
            self._flush()
            return  # (the Deferred fails with CancelledError)
        if not any(item is pending for item in self._inflight) or self._closed is not None:
            return
        self._inflight = deque(item for item in self._inflight if item is not pending)
        self._release_consumer(pending)
        self._closed = Failure(ierror.ConnectionAborted(
            "%s was cancelled after it was sent: the connection was closed so that it has no "
            "effect" % pending.verb))
        self._fail_all(self._closed)
        if self.transport is not None:
            self.transport.abortConnection()

    def _flush(self) -> None:
        """Write every queued command that the FIFO and pipelining rules let go now."""
        out = []
        while self._queued:
            head = self._queued[0]
            if self._inflight:
                if head.barrier or self._inflight[-1].barrier or not self.pipelining:
                    break
            self._inflight.append(self._queued.popleft())
            out.append(cast(bytes, head.line) + b"\r\n")  # (only the greeting has no line; it is never queued)
            if head.barrier:
                break
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        self._arm_timeout()

    # -- receiving --------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        # Progress is a reply completed (the timer is armed again then) or PROGRESS_OCTETS
        # received: a server dripping a byte a second once held the client past any timeout.
        self._unproductive += len(data)
        if self._unproductive >= PROGRESS_OCTETS:
            self._unproductive = 0
            self.resetTimeout()
        self._process()

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused or self.transport is None:
            return
        self._paused = paused
        if paused:
            self.setTimeout(None)  # our consumer is slow, not the server
            self.transport.pauseProducing()
        else:
            self._arm_timeout()
            self.transport.resumeProducing()
            self._process()

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            self._process_buffer()
        finally:
            self._processing = False

    def _process_buffer(self) -> None:
        buf, pos = self._buffer, 0
        try:
            while pos < len(buf) and not self._paused and self._closed is None:
                if not self._inflight:
                    if self._quitting:
                        pos = len(buf)
                        break
                    if buf.startswith(b"-ERR", pos):
                        raise _ServerHungUp(buf[pos:pos + 200].split(b"\n", 1)[0].rstrip(b"\r"))
                    raise ProtocolError("unexpected data from server: %r" % buf[pos:pos + 80])
                head = self._inflight[0]
                if self._decoder is not None:
                    payload, leftover = self._decoder.feed(buf[pos:] if pos else buf)
                    buf, pos = leftover or b"", 0
                    if payload:
                        try:
                            head.sink.write(payload)
                        except Exception as e:
                            raise _ConsumerFailed(e)
                        if self._closed is not None:
                            break  # (the consumer cancelled the command: the connection is gone)
                    if leftover is None:
                        break
                    self._decoder = None
                    buf, pos = self._callback(head, None, buf, pos)
                    continue
                end = buf.find(b"\n", pos)
                if end == -1:
                    if len(buf) - pos > MAX_STATUS_LINE:
                        raise ProtocolError("status line too long")
                    break
                line = buf[pos:end]
                pos = end + 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                try:
                    status = wire.parse_status(line)
                except wire.WireError as e:
                    raise ProtocolError(str(e))
                if status.continuation:
                    self._challenge(head, status)
                    continue
                if status.ok and head.multiline:
                    self._decoder = wire.MultiLineDecoder()
                    self._attach_consumer(head)
                    continue
                if head.discard_rest:
                    pos = len(buf)  # STLS: nothing after +OK may be read as plaintext (RFC 2595 §4)
                buf, pos = self._callback(head, status, buf, pos)
        except (ProtocolError, _ConsumerFailed, _ServerHungUp) as e:
            # A stream cannot be resumed half-way: drop the connection (the server commits nothing).
            self._buffer = b""
            if isinstance(e, _ServerHungUp):  # its reason is what the next command fails with
                failure = Failure(ierror.ConnectionLost("the server ended the session: %s" % e.text))
            else:
                failure = Failure(e.error if isinstance(e, _ConsumerFailed) else e)
            self._closed = failure
            self._fail_all(failure)
            if self.transport is not None:
                self.transport.abortConnection()
            return
        self._buffer = buf[pos:] if pos else buf

    def _callback(self, head: _Pending, status: Optional[wire.Status], buf: bytes,
                  pos: int) -> Tuple[bytes, int]:
        """Store the unread input, run the command's callbacks, then pick the input up again: a
        callback may have replaced it (STLS) or more may have arrived meanwhile."""
        self._buffer = buf[pos:] if pos else buf
        self._complete(head, status)
        return self._buffer, 0

    def _challenge(self, head: _Pending, status: wire.Status) -> None:
        if head.mechanism is None:
            raise ProtocolError("unexpected continuation line to %s" % head.verb)
        if head.failure is not None:
            # The exchange was cancelled ("*"): RFC 5034 has the server answer -ERR now. One that
            # goes on with challenges would be answered "*" for ever.
            raise ProtocolError("the server sent another challenge after %s was cancelled"
                                % head.verb)
        try:
            challenge = base64.b64decode(status.payload, validate=True) if status.payload else b""
            answer = head.mechanism.respond(challenge)
        except Exception as e:
            # Cancel the exchange (RFC 5034 §4); the server answers -ERR and we report this error.
            head.failure = e if isinstance(e, sasl_client.SASLError) else sasl_client.SASLError(str(e))
            self.transport.write(b"*\r\n")
            return
        self.transport.write(base64.b64encode(answer) + b"\r\n")

    def _attach_consumer(self, head: _Pending) -> None:
        if IConsumer.providedBy(head.sink):
            head.sink.registerProducer(_BodyProducer(self), True)
            head.registered = True

    def _release_consumer(self, item: _Pending) -> None:
        if item.registered:
            item.registered = False
            try:
                item.sink.unregisterProducer()
            except Exception:
                pass
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resumeProducing()

    def _complete(self, head: _Pending, status: Optional[wire.Status]) -> None:
        self._inflight.popleft()
        self._arm_timeout()  # a whole reply is progress
        if status is None:
            self._release_consumer(head)
            result: Any = (head.sink.result() if isinstance(head.sink, (_LinesSink, _BytesSink))
                           else head.sink)
        elif not status.ok:
            if head.failure is not None:
                result = Failure(head.failure)
            else:
                err = error_for(status, head.verb)
                if head.is_auth and not isinstance(err, (InUseError, LoginDelayError, TemporaryError,
                                                          PermanentError, AuthError)):
                    err = AuthError(status.text, status.code or "AUTH", head.verb)
                result = Failure(err)
        elif head.mechanism is not None and not head.mechanism.complete:
            result = Failure(sasl_client.SASLError("server accepted %s without proving itself"
                                                   % head.mechanism.name))
        else:
            result = status
        if head.discard_rest:
            self._complete_stls(head, result)
            return
        if head.is_auth:
            # A login step: its callback may send the next step (PASS after USER, the fallback
            # method), which goes before what the caller queued meanwhile (``_send_next``).
            head.deferred.callback(result)
            self._flush()
            return
        self._flush()
        head.deferred.callback(result)

    def _complete_stls(self, head: _Pending, result: Any) -> None:
        """The answer to STLS. Commands queued behind it (by a caller that did not wait for
        :meth:`starttls`) must never go out in plaintext (finding F15): the callback starts TLS
        first, then they are written, encrypted; if TLS did not start (``-ERR``, an error), they
        fail instead of going out in the clear."""
        behind = list(self._queued)
        head.deferred.callback(result)
        if not self.tls:
            stranded = [item for item in behind if any(item is q for q in self._queued)]
            self._queued = deque(q for q in self._queued if not any(q is s for s in stranded))
            for item in stranded:
                item.deferred.errback(TLSError("TLS did not start after STLS: %s was not sent "
                                               "in the clear" % item.verb))
        self._flush()

    # -- greeting, capabilities, TLS --------------------------------------------------------------

    def _greeted(self, status: wire.Status) -> str:
        self.greeting = status.text
        return status.text

    def capa(self, _next: bool = False) -> defer.Deferred:
        """Read the capabilities (RFC 2449) into ``self.capabilities``; {} if CAPA is refused.
        (``_next``: ahead of what is queued -- the re-read that ends :meth:`login`.)"""
        def parse(lines: List[bytes]) -> Dict[str, List[str]]:
            caps: Dict[str, List[str]] = {}
            for raw in lines:
                words = raw.decode("utf-8", "replace").split()
                if words:
                    caps[words[0].upper()] = words[1:]
            self.capabilities = caps
            return caps

        def refused(failure: Failure) -> Dict[str, List[str]]:
            failure.trap(ServerError)
            self.capabilities = {}
            return {}

        send = self._send_next if _next else self.send
        return send(b"CAPA", multiline=True, sink=self._listing()).addCallbacks(parse, refused)

    def starttls(self, context_factory: Any) -> defer.Deferred:
        """STLS (RFC 2595), then TLS with ``context_factory`` (e.g. ``optionsForClientTLS``).

        Bytes that arrived after the ``+OK`` are thrown away. Fires with the capabilities re-read
        over TLS; a certificate the factory rejects fails the Deferred with :class:`TLSError`.
        """
        if self.tls:
            return defer.fail(CapabilityError("TLS is already active"))
        d = self.send(b"STLS", barrier=True, discard_rest=True)

        def go(_: Any) -> defer.Deferred:
            self._buffer = b""
            self.transport.startTLS(context_factory)
            self.tls = True
            self.capabilities = {}
            return self.capa()

        return d.addCallback(go)

    # -- transaction commands ---------------------------------------------------------------------

    def stat(self) -> defer.Deferred:
        """Fires with ``(message count, total octets)``."""
        def parse(status: wire.Status) -> Tuple[int, int]:
            words = _words(status.text.encode("utf-8", "replace"), 2, "STAT")
            return (_number(words[0], 0, _MAX_COUNT, "STAT"),
                    _number(words[1], 0, MAX_TOTAL_OCTETS, "STAT"))
        return self.send(b"STAT").addCallback(parse)

    def list(self, number: Optional[int] = None) -> defer.Deferred:
        """``LIST``: ``{number: size}`` for all messages, or the size of one."""
        if number is not None:
            return self.send(b"LIST %d" % number).addCallback(_one, number, _scan_line, "LIST")
        return self.send(b"LIST", multiline=True, sink=self._listing()).addCallback(
            _parse_listing, _scan_line, "LIST")

    def uidl(self, number: Optional[int] = None) -> defer.Deferred:
        """``UIDL``: ``{number: uid}`` for all messages, or the uid of one.

        Every UIDL is checked against RFC 1939's rule (1-70 octets in 0x21-0x7E,
        :func:`twisted_pop3ng.wire.is_valid_uid`) and every message number must be new: anything
        else fails with :class:`ProtocolError`. The same UIDL under two numbers (a server bug)
        is passed on as it is: what to do about it is the caller's decision.
        """
        if number is not None:
            return self.send(b"UIDL %d" % number).addCallback(_one, number, _uid_line, "UIDL")
        return self.send(b"UIDL", multiline=True, sink=self._listing()).addCallback(
            _parse_listing, _uid_line, "UIDL")

    def _listing(self) -> _LinesSink:
        return _LinesSink(self.max_listing_line, self.max_listing_octets)

    def retrieve(self, number: int, consumer: Any = None) -> defer.Deferred:
        """``RETR``: stream the message into ``consumer`` (``IConsumer`` or has ``write``) and fire
        with it; without a consumer, fire with the message bytes."""
        return self._body(b"RETR %d" % number, consumer)

    def top(self, number: int, lines: int, consumer: Any = None) -> defer.Deferred:
        """``TOP``: the header and the first ``lines`` body lines, like :meth:`retrieve`."""
        return self._body(b"TOP %d %d" % (number, lines), consumer)

    def _body(self, line: bytes, consumer: Any) -> defer.Deferred:
        return self.send(line, multiline=True, sink=consumer if consumer is not None else _BytesSink())

    def delete(self, number: int) -> defer.Deferred:
        return self.send(b"DELE %d" % number)

    def reset(self) -> defer.Deferred:
        return self.send(b"RSET")

    def noop(self) -> defer.Deferred:
        return self.send(b"NOOP")

    def quit(self) -> defer.Deferred:
        """``QUIT``: the server commits deletions (UPDATE state); fires once it answered ``+OK``,
        fails with ``ConnectionLost`` when it closed the connection without an answer (the
        deletions may not have been made)."""
        self._quitting = True
        d = self.send(b"QUIT", barrier=True)

        def done(result: Any) -> Any:
            if self._closed is None:
                self._closed = Failure(ierror.ConnectionDone("the session ended with QUIT"))
            if self.transport is not None:
                self.transport.loseConnection()
            return result
        return d.addCallback(done)


#: The most messages a count or a message number may name (wire.MAX_NUMBER_DIGITS digits).
_MAX_COUNT = 10 ** wire.MAX_NUMBER_DIGITS - 1
#: ASCII digits only: int() would also take "+1", " 1", "1_0" and other scripts' digits.
_DIGITS = re.compile(rb"[0-9]{1,20}\Z")


def _bad(what: str, raw: bytes) -> Any:
    # repr() escapes control characters: the text is safe to print on a terminal.
    raise ProtocolError("malformed %s reply from the server: %r" % (what, raw[:80]))


def _words(raw: bytes, count: int, what: str) -> List[bytes]:
    """The first ``count`` words of a reply, split on spaces (RFC 1939 says one; a run is
    tolerated, a tab or any other character is part of a word and fails its check); later words
    are extra information a server may add, and ignored."""
    words = [word for word in raw.split(b" ", count + 8) if word]
    if len(words) < count:
        _bad(what, raw)
    return words[:count]


def _number(word: bytes, low: int, high: int, what: str) -> int:
    if not _DIGITS.match(word):
        _bad(what, word)
    value = int(word)
    if not low <= value <= high:
        raise ProtocolError("implausible number in the %s reply from the server: %d" % (what, value))
    return value


def _scan_line(raw: bytes, what: str) -> Tuple[int, int]:
    """``N SIZE [extra]`` (a LIST line, or the LIST N reply)."""
    number, size = _words(raw, 2, what)
    return _number(number, 1, _MAX_COUNT, what), _number(size, 0, MAX_MESSAGE_OCTETS, what)


def _uid_line(raw: bytes, what: str) -> Tuple[int, str]:
    """``N UID`` (a UIDL line, or the UIDL N reply); the UIDL must follow RFC 1939's rule. A
    further word is not extra information here (RFC 1939 allows that in LIST only): it would be a
    UIDL with a space, and taking its first word would make two messages one."""
    number, uid = _words(raw, 2, what)
    if len([word for word in raw.split(b" ") if word]) > 2:
        raise ProtocolError("invalid UIDL from the server (RFC 1939: no spaces): %r" % raw[:80])
    text = uid.decode("ascii", "replace")
    if not wire.is_valid_uid(text):
        raise ProtocolError("invalid UIDL from the server (RFC 1939: 1-%d characters in "
                            "0x21-0x7E): %r" % (wire.MAX_UID_LENGTH, uid[:80]))
    return _number(number, 1, _MAX_COUNT, what), text


def _one(status: wire.Status, number: int, parse_line: Callable[[bytes, str], Tuple[int, Any]],
         what: str) -> Any:
    """The value of a one-message ``LIST N`` / ``UIDL N`` reply, which must be about message N."""
    got, value = parse_line(status.text.encode("utf-8", "replace"), what)
    if got != number:
        raise ProtocolError("the server answered %s %d about message %d" % (what, number, got))
    return value


def _parse_listing(lines: List[bytes], parse_line: Callable[[bytes, str], Tuple[int, Any]],
                   what: str) -> Dict[int, Any]:
    result: Dict[int, Any] = {}
    for raw in lines:
        number, value = parse_line(raw, what)
        if number in result:
            raise ProtocolError("message %d listed twice in the %s reply from the server"
                                % (number, what))
        result[number] = value
    return result


def _tls_error(reason: Failure, transport: Any) -> Optional[TLSError]:
    """The :class:`TLSError` a connection lost to TLS stands for, else None.

    A certificate that was refused is a :class:`TLSVerificationError`, told by type:
    service_identity's ``VerificationError`` (wrong host name), or an OpenSSL error on a
    connection whose chain verification failed (``get_verify_result``).
    """
    from OpenSSL import SSL

    try:
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover
        pass
    else:
        if reason.check(VerificationError):
            return TLSVerificationError("the server certificate does not match the host name: %s"
                                        % reason.value)
    if not reason.check(SSL.Error):
        return None
    if _chain_refused(transport, reason.value):
        return TLSVerificationError("the server certificate is not trusted (certificate verify failed)")
    return TLSError("TLS handshake failed: %s" % reason.value)


#: OpenSSL's reason code of a handshake that failed chain verification (SSL_R_CERTIFICATE_VERIFY_FAILED).
_VERIFY_FAILED_REASON = "certificate verify failed"


def _chain_refused(transport: Any, error: Exception) -> bool:
    """Whether OpenSSL refused the server's certificate chain: the connection's verification
    result when it can be had, else the reason field of OpenSSL's error queue."""
    try:
        return transport.getHandle().get_verify_result() != 0
    except Exception:
        pass
    queue = error.args[0] if error.args and isinstance(error.args[0], list) else []
    return any(len(entry) == 3 and entry[2] == _VERIFY_FAILED_REASON for entry in queue)


class POP3ClientFactory(Factory):
    """Builds :class:`POP3Client` protocols with a command timeout (for endpoints' ``connect``)."""

    protocol = POP3Client

    def __init__(self, timeout: Optional[float] = DEFAULT_TIMEOUT, clock: Any = None) -> None:
        self.timeout = timeout
        self.clock = clock

    def buildProtocol(self, addr: Any) -> POP3Client:
        proto = self.protocol(timeout=self.timeout, clock=self.clock)
        proto.factory = self
        return proto
