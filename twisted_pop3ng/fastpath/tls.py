"""POP3S send path: Twisted's TLS protocol with the records of one write handed over at once,
straight to the socket when the connection holds nothing unsent.

Rules of this module: it overrides private methods of ``TLSMemoryBIOProtocol``; the names are
probed in :mod:`._compat`, and without them (or with ``POP3NG_STOCK_TWISTED=1``) :func:`tls_factory`
returns Twisted's own factory. The socket is written to through :mod:`.send`'s
:class:`~.send.DirectSender` (its own probe: without it, the transport's ``writeSequence``).
"""

from __future__ import annotations

from typing import Any, List

from OpenSSL import SSL
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from twisted_pop3ng.fastpath import _compat
from twisted_pop3ng.fastpath.send import sender

#: Writes ciphertext to the socket at once when the TCP transport holds nothing (None: the
#: probes say no; then the transport queues it as Twisted does).
_DIRECT = sender()

#: One TLS record's worth of application data (RFC 8446 §5.1), the step of each ``SSL_write``.
RECORD_SIZE = 2 ** 14


class BatchedTLSProtocol(TLSMemoryBIOProtocol):
    """Twisted's TLS protocol, handing the records of one write to the transport in one piece.

    Twisted writes each 16 KiB record to the transport on its own (a slice copy, an ``SSL_write``,
    a ``bio_read`` and a transport write per record); a 128 KiB batch of replies made eight
    transport writes. Here records are cut from a memoryview and collected, then written once.

    And a TCP transport sends only when the reactor next reports the socket writable (an
    ``epoll_ctl`` on, a loop turn, a dispatch, an ``epoll_ctl`` off: per reply, and per
    handshake flight). Here the records go to the socket at once when the transport holds
    nothing, as plain replies do (:class:`~.send.DirectSender`); what the socket does not take is
    queued in the transport, behind nothing, so the order is kept.

    Handshake, reading, shutdown and the renegotiation case are Twisted's own.
    """

    def makeConnection(self, transport: Any) -> None:
        """Twisted's, without its loop of ``directlyProvides`` (one call per interface the TCP
        transport provides, each replacing the last): ``ProtocolWrapper.makeConnection``, which
        follows, declares them all at once, and nothing in between looks at them."""
        if not self._connectWrapped:
            super().makeConnection(transport)
            return
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()

    def _flushSendBIO(self) -> None:
        # Twisted's, writing through _to_transport: the handshake's flights, alerts, close_notify.
        try:
            data = self._tlsConnection.bio_read(2 ** 15)
        except SSL.WantReadError:
            return
        self._to_transport([data])

    def _to_transport(self, out: List[bytes]) -> None:
        if _DIRECT is not None:
            _DIRECT.send(self.transport, out, True)
        else:
            self.transport.writeSequence(out)  # type: ignore[union-attr]

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        view = memoryview(data)
        out: List[bytes] = []
        done = 0
        try:
            while done < len(data):
                try:
                    done += connection.send(view[done:done + RECORD_SIZE])
                except SSL.WantReadError:
                    self._bufferedWrite(data[done:])
                    return
                except SSL.Error:
                    if out:
                        self._to_transport(out)
                        out = []
                    self._tlsShutdownFinished(Failure())
                    return
                try:
                    out.append(connection.bio_read(2 * RECORD_SIZE))
                except SSL.WantReadError:
                    pass
        finally:
            if out:
                self._to_transport(out)


class BatchedTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` building :class:`BatchedTLSProtocol` (the ``--tls-listen`` ports)."""

    protocol = BatchedTLSProtocol


def tls_factory(context_factory: Any, wrapped: Any) -> TLSMemoryBIOFactory:
    """The server-side TLS wrapper for ``wrapped``: the batched one, or Twisted's own should a
    future Twisted lack the internals it overrides."""
    if _compat.BATCHED_TLS:
        return BatchedTLSFactory(context_factory, False, wrapped)
    return TLSMemoryBIOFactory(context_factory, False, wrapped)
