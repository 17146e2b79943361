"""The session's transport plumbing, apart from the POP3 state machine in :mod:`.server`.

What lives here, and why it is separate: how command lines come in and replies go out, fast and
with bounded memory, whatever the commands mean.

* input is split into lines without copying the rest of the buffer per line, and is no longer read
  from the socket while enough of it waits behind a pending command (:class:`SessionIO`);
* the replies of a batch of lines leave together, through the connection's *sender* strategy:
  :class:`StockSender` (``transport.writeSequence``, public API only) unless the factory was
  given another (``twistd pop3ng`` gives :class:`twisted_pop3ng.fastpath.send.DirectSender`,
  which writes straight to the socket on plain TCP when the transport holds nothing); the
  transport's full buffer pauses line processing (a push producer registered for the
  connection's whole life, :class:`TransportFlow`);
* a stored message too large for one read is streamed chunk by chunk under that backpressure
  (:class:`MessageStream`);
* inactivity timeouts cost a float per session and one timer per factory (:class:`IdleSweeper`);
* the input buffer is this module's own (not ``LineReceiver``'s private ``_buffer``): what
  :meth:`SessionIO.clearLineBuffer` drops after STLS (the CVE-2011-0411 defence) is exactly what
  :meth:`SessionIO._split_lines` has not processed.

Rules of this module: public Twisted API only; anything relying on transport internals is a
strategy injected through ``POP3ServerFactory(sender=..., connection_info=...)``.

:class:`SessionIO` is a mixin for :class:`~twisted_pop3ng.server.POP3ServerProtocol`: it relies on
that class's ``factory`` (``clock``, ``idle_sweeper()``), ``transport``, ``paused``, ``_closing``
and ``_stream`` attributes, and calls back its ``lineReceived`` and ``lineLengthExceeded``.
"""

from __future__ import annotations

from typing import AbstractSet, Any, List, Optional, Set, Tuple

from twisted.internet import defer, interfaces as iinternet
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_pop3ng import wire
from twisted_pop3ng._net import set_no_delay  # noqa: F401  (re-exported)

#: Bytes read from a stored message per step; large enough that a 10 KB message is one read.
CHUNK_SIZE = 256 * 1024
#: Replies collected in one batch of input lines are written once they reach this size (Twisted
#: sends at most 128 KiB per ``send``; the transport pauses us past its 64 KiB buffer).
FLUSH_SIZE = 128 * 1024
#: A batch this large is handed to the sender with ``gather=True``: a sender writing to the socket
#: itself may pass it piece by piece (``sendmsg``) instead of joining it first (a short one, such
#: as a UIDL listing's three pieces, is cheaper to join than to gather).
GATHER_MIN = 32 * 1024
#: Pieces a gathering sender hands to one ``sendmsg`` at most (Linux takes up to IOV_MAX, 1024);
#: a longer batch of tiny pieces is joined instead.
MAX_GATHER = 512
#: Input queued while commands wait, beyond which the socket is no longer read.
MAX_QUEUED_INPUT = 64 * 1024
#: Chunks written in one reactor turn before yielding, when the transport never pushes back.
CHUNKS_PER_TURN = 16
#: ``SessionIO._batch`` once ``clearLineBuffer`` took the rest of the batch being split.
_CLEARED = object()


class StockSender:
    """How a session's replies reach the transport: Twisted's public API only.

    The sender strategy's contract (what ``POP3ServerFactory(sender=...)`` takes):

    * ``send(transport, pieces, gather)``: deliver the byte strings ``pieces`` in order after
      everything sent before; ``gather`` says the batch is large (>= :data:`GATHER_MIN`). The
      list is the sender's to keep or change.
    * ``close_at_once(transport, pieces)``: either deliver ``pieces`` and close the connection
      now (the transport's ``connectionLost`` has run when it returns True), or do nothing
      visible and return False, with ``pieces`` changed in place to what is still to be sent
      (the session then flushes it and calls ``loseConnection``).
    """

    __slots__ = ()

    def send(self, transport: Any, pieces: List[bytes], gather: bool) -> None:
        transport.writeSequence(pieces)

    def close_at_once(self, transport: Any, pieces: List[bytes]) -> bool:
        return False


STOCK_SENDER = StockSender()


def _ip(address: Any) -> Optional[str]:
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else None


def stock_connection_info(transport: Any) -> Tuple[Optional[str], Optional[str]]:
    """(client IP, server IP) of a connection, from ``getPeer``/``getHost`` (None where the
    address is not an IP one). The ``connection_info`` strategy's contract: this signature."""
    return _ip(transport.getPeer()), _ip(transport.getHost())


class IdleSweeper:
    """One timer for all of a factory's sessions instead of a DelayedCall each.

    A DelayedCall costs ~0.5 KB per connection and a heap update on every command line; here a
    session keeps a deadline (a float) and one call, scheduled for the earliest deadline (at most
    every ``MIN_INTERVAL`` seconds), closes the sessions whose deadline has passed.
    """

    MIN_INTERVAL = 1.0

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.sessions: Set[Any] = set()
        self._call: Any = None
        #: While the factory is started (a port serves it), the timer stays when the last session
        #: leaves: it fires once, finds nobody, and is not rescheduled. Without that, a
        #: DelayedCall was made and cancelled again for nearly every short session.
        self.keep_timer = False

    def add(self, protocol: Any) -> None:
        self.sessions.add(protocol)
        self._schedule(protocol._deadline)

    def discard(self, protocol: Any) -> None:
        self.sessions.discard(protocol)
        if not self.sessions and not self.keep_timer:
            self.cancel()

    def stop(self) -> None:
        """The factory stopped: no timer outlives the last session from now on (an embedding
        application's tests check that none is left)."""
        self.keep_timer = False
        if not self.sessions:
            self.cancel()

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _schedule(self, when: float) -> None:
        now = self.clock.seconds()
        if self._call is not None:
            if self._call.getTime() <= when:
                return
            self._call.cancel()
        self._call = self.clock.callLater(max(when - now, 0), self._sweep)

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        due = [p for p in self.sessions if p._deadline is not None and p._deadline <= now]
        for protocol in due:
            self.sessions.discard(protocol)
            protocol._deadline = protocol._timeout = None
            protocol.timeoutConnection()
        deadlines = [p._deadline for p in self.sessions if p._deadline is not None]
        if deadlines:
            self._schedule(max(min(deadlines), now + self.MIN_INTERVAL))


@implementer(iinternet.IPushProducer)
class TransportFlow:
    """Registered with the transport for the whole connection: its write buffer pushes back here."""

    __slots__ = ("protocol",)  # one per connection: no instance dict

    def __init__(self, protocol: "SessionIO") -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:
        self.protocol._write_paused(True)

    def resumeProducing(self) -> None:
        self.protocol._write_paused(False)

    def stopProducing(self) -> None:
        # The connection is going away (the client left mid-transfer): not a server failure to log.
        self.protocol._closing = True
        self.protocol._stop_stream()


class MessageStream:
    """Copies one stored message to the transport through the encoder, honouring backpressure."""

    def __init__(self, protocol: "SessionIO", source: Any, status: bytes,
                 encoder: wire.MessageEncoder) -> None:
        self.protocol = protocol
        self.source = source
        self.encoder = encoder
        self.deferred: defer.Deferred = defer.Deferred()
        self._head: Optional[bytes] = status
        #: Octets of the message sent so far (after the status line).
        self.sent = -len(status)
        self._paused = False
        self._finished = False
        self._scheduled = None

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._schedule()

    def stop(self) -> None:
        if not self._finished:
            self._finish(Failure(ConnectionError("connection lost during transfer")))

    def run(self) -> None:
        self._scheduled = None
        turns = 0
        while not (self._paused or self._finished):
            try:
                chunk = self.source.read(CHUNK_SIZE)
            except Exception:
                self._finish(Failure())
                return
            out = self.encoder.feed(chunk) if chunk else b""
            last = not chunk or self.encoder.done
            if last:
                out += self.encoder.finish()
            if self._head is not None:
                out, self._head = self._head + out, None
            if out:
                self.protocol.write(out)
                self.sent += len(out)
            self.protocol.resetTimeout()
            if last:
                self._finish(None)
                return
            turns += 1
            if turns >= CHUNKS_PER_TURN:
                self._schedule()
                return

    def _schedule(self) -> None:
        if self._scheduled is None and not (self._paused or self._finished):
            self._scheduled = self.protocol.clock.callLater(0, self.run)

    def _finish(self, failure: Optional[Failure]) -> None:
        self._finished = True
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        try:
            self.source.close()
        except Exception:
            pass
        if failure is None:
            self.deferred.callback(None)
        else:
            self.deferred.errback(failure)


class SessionIO(Protocol):
    """Line input, batched output and backpressure for one session (see the module docstring).

    Its line input keeps ``LineReceiver``'s API (``paused``, ``MAX_LENGTH``, ``lineReceived``,
    ``lineLengthExceeded``, ``clearLineBuffer``, the producer methods) over a buffer of its own.
    """

    #: Lines end at LF (a CR before it is the line handler's to strip); longer ones are refused.
    delimiter = b"\n"
    MAX_LENGTH = 16384
    #: True while no command line may be processed (see ``_block``); input then queues.
    paused = False
    # Provided by the protocol class (see the module docstring); declared for type checkers.
    transport: Any
    factory: Any
    clock: Any  # (a property there: ``factory.clock``)
    _closing: bool
    _stream: Any
    _blocks: AbstractSet[str]
    _reading_paused: bool
    #: Received input not yet split into lines (queued while ``paused``, or a partial line).
    _input = b""
    #: While :meth:`_split_lines` runs (None otherwise): ``[the batch being split, where its
    #: unprocessed part starts]``, or _CLEARED once :meth:`clearLineBuffer` took that part.
    _batch: Any = None

    def lineReceived(self, line: bytes) -> None:
        raise NotImplementedError

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line longer than ``MAX_LENGTH`` (``line`` is the rest of the input from its start)."""
        self.transport.loseConnection()

    # LineReceiver's producer methods, for an application that registers the session itself.
    def pauseProducing(self) -> None:
        self.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self.transport.resumeProducing()
        self.dataReceived(b"")

    def stopProducing(self) -> None:
        self.paused = True
        self.transport.stopProducing()

    #: Inactivity allowed now (None: no timeout) and the clock time at which it runs out.
    _timeout: Optional[float] = None
    _deadline: Optional[float] = None
    #: A clock time that no activity pushes the deadline past (the absolute login deadline, F4);
    #: None: none. Set and cleared by the protocol.
    _hard_deadline: Optional[float] = None

    def setTimeout(self, period: Optional[float]) -> None:
        """Start, change or (None) cancel the inactivity timeout; see :class:`IdleSweeper`."""
        if period is None and self._timeout is None:
            return  # no timeout to cancel: not with the sweeper (it drops whom it times out)
        self._timeout = period
        sweeper = self.factory.idle_sweeper()
        if period is None:
            self._deadline = None
            sweeper.discard(self)
        else:
            deadline = self.factory.clock.seconds() + period
            hard = self._hard_deadline
            self._deadline = deadline if hard is None or deadline < hard else hard
            sweeper.add(self)

    def resetTimeout(self) -> None:
        """Activity: push the deadline out (a float store, no timer juggling per line), never
        past :attr:`_hard_deadline`."""
        if self._timeout is not None:
            deadline = self.factory.clock.seconds() + self._timeout
            hard = self._hard_deadline
            self._deadline = deadline if hard is None or deadline < hard else hard

    #: While a batch of received lines is processed, replies collect here and leave together
    #: (one ``send``, or one TLS write, for a pipelined burst).
    _out: Optional[List[bytes]] = None
    _out_size = 0

    def write(self, data: bytes) -> None:
        if self.transport is None or self._closing:
            return
        out = self._out
        if out is None:
            self._send([data])
            return
        out.append(data)
        self._out_size += len(data)
        if self._out_size >= FLUSH_SIZE:
            # Hand it over now: past the transport's buffer size this pauses us (backpressure).
            self.flush_output()

    def write_pieces(self, pieces: List[bytes], size: Optional[int] = None) -> None:
        """``write`` each of ``pieces`` in order (one message's status, body and terminator);
        ``size``: their total length, when the caller knows it."""
        if self.transport is None or self._closing:
            return
        if size is None:
            size = sum(map(len, pieces))
        out = self._out
        if out is None:
            self._send(pieces, size >= GATHER_MIN)
            return
        out += pieces
        self._out_size += size
        if self._out_size >= FLUSH_SIZE:
            self.flush_output()

    def flush_output(self) -> None:
        """Send what the current batch collected (before STLS, closing, or a full batch)."""
        out = self._out
        if out:
            size, self._out, self._out_size = self._out_size, [], 0
            transport = self.transport
            if transport is not None:  # what _send does, without a call more per batch
                self.factory.sender.send(transport, out, size >= GATHER_MIN)

    def _send(self, out: List[bytes], gather: bool = False) -> None:
        """Hand ``out`` to the connection's sender (see :class:`StockSender`)."""
        transport = self.transport
        if transport is not None:
            self.factory.sender.send(transport, out, gather)

    def _close_at_once(self) -> bool:
        """Send what the batch collected and close the connection now, if the sender can (see
        :class:`StockSender`); False (nothing closed, the batch still to flush) otherwise."""
        transport = self.transport
        if transport is None:
            return False
        out = self._out
        pieces = out or []
        if out:
            # Emptied first: the session's connectionLost (run by a successful close) sees no batch.
            self._out, self._out_size = [], 0
        if self.factory.sender.close_at_once(transport, pieces):
            return True
        if pieces:
            self._out, self._out_size = pieces, sum(map(len, pieces))
        return False

    def _block(self, reason: str) -> None:
        """Stop processing command lines until every reason is gone."""
        self.paused = True
        if self._blocks:
            self._blocks.add(reason)  # type: ignore[attr-defined]
        else:
            self._blocks = {reason}

    def _unblock(self, reason: str) -> None:
        if reason not in self._blocks:
            return
        self._blocks.discard(reason)  # type: ignore[attr-defined]
        if self._blocks or self._closing or self.transport is None:
            return
        self.paused = False
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()
        self.dataReceived(b"")

    def dataReceived(self, data: bytes) -> None:
        if self._out is None:
            self._out = []
            try:
                self._receive(data)
            finally:
                self.flush_output()
                self._out = None
        else:  # resumed from inside a batch (a Deferred that fired at once): same batch
            self._receive(data)

    def _receive(self, data: bytes) -> None:
        self._split_lines(data)
        # While commands wait (async login, a transfer, a client that does not read its replies),
        # stop reading the socket once enough input is queued: memory stays bounded.
        if self.paused and not self._reading_paused and len(self._input) > MAX_QUEUED_INPUT:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _write_paused(self, paused: bool) -> None:
        if paused:
            self._block("write")
            if self._stream is not None:
                self._stream.pause()
        else:
            if self._stream is not None:
                self._stream.resume()
            self._unblock("write")

    def _stop_stream(self) -> None:
        if self._stream is not None:
            self._stream.stop()


    def _split_lines(self, data: bytes) -> None:
        """``LineReceiver.dataReceived`` without its copy of the whole buffer per line.

        Same contract: lines go to :meth:`lineReceived` until ``paused``; input that arrives
        meanwhile (re-entrantly) is queued; :meth:`clearLineBuffer` (STLS) drops the rest; a line or
        a pending partial line beyond ``MAX_LENGTH`` goes to :meth:`lineLengthExceeded`.
        """
        if self._batch is not None:  # re-entered from a line's handler: queue the input
            self._input += data
            return
        # Activity: once per batch of lines (input arrived, or waiting lines resume), not per line.
        self.resetTimeout()
        buffer = self._input + data if self._input else data
        self._input = b""
        # The batch and where its unprocessed part starts, for clearLineBuffer: kept up to date
        # per line in a list made per batch (an attribute store per line cost far more).
        self._batch = batch = [buffer, 0]
        try:
            start = 0
            find = buffer.find
            while not self.paused:
                end = find(b"\n", start)
                if end == -1:
                    if len(buffer) - start > self.MAX_LENGTH:
                        self._input, rest, start, buffer = b"", buffer[start:], 0, b""
                        self._batch = _CLEARED  # handed over whole: nothing left to clear
                        self.lineLengthExceeded(rest)
                        return
                    break
                line = buffer[start:end]
                start = end + 1
                if len(line) > self.MAX_LENGTH:
                    self._input, start, buffer = b"", 0, b""
                    self._batch = _CLEARED  # the rest is dropped with the line
                    self.lineLengthExceeded(line)
                    return
                batch[1] = start
                self.lineReceived(line)
                if self._batch is not batch:  # clearLineBuffer took the rest of the batch
                    start, buffer = 0, b""
                    break
                if self._closing or self.transport is None or self.transport.disconnecting:
                    break  # (closed at once by the line: the transport is not "disconnecting")
            if start < len(buffer):
                self._input = buffer[start:] + self._input if start else buffer + self._input
        finally:
            self._batch = None

    def clearLineBuffer(self) -> bytes:
        """Drop and return the input not yet processed: the rest of the batch being split and
        whatever is queued (STLS: what was pipelined in plaintext must not run in TLS)."""
        batch = self._batch
        rest = self._input
        if batch is not None and batch is not _CLEARED:
            rest = batch[0][batch[1]:] + rest
            self._batch = _CLEARED
        self._input = b""
        return rest
