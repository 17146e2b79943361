"""POP3S send path: Twisted's TLS protocol with the records of one write handed over at once.

Rules of this module: it overrides private methods of ``TLSMemoryBIOProtocol``; the names are
probed in :mod:`._compat`, and without them (or with ``POP3NG_STOCK_TWISTED=1``) :func:`tls_factory`
returns Twisted's own factory.
"""

from __future__ import annotations

from typing import Any, List

from OpenSSL import SSL
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from twisted_pop3ng.fastpath import _compat

#: One TLS record's worth of application data (RFC 8446 §5.1), the step of each ``SSL_write``.
RECORD_SIZE = 2 ** 14


class BatchedTLSProtocol(TLSMemoryBIOProtocol):
    """Twisted's TLS protocol, handing the records of one write to the transport in one piece.

    Twisted writes each 16 KiB record to the transport on its own (a slice copy, an ``SSL_write``,
    a ``bio_read`` and a transport write per record); a 128 KiB batch of replies made eight
    transport writes. Here records are cut from a memoryview and collected, then written once.
    Handshake, reading, shutdown and the renegotiation case are Twisted's own.
    """

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        transport: Any = self.transport
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
                        transport.writeSequence(out)
                        out = []
                    self._tlsShutdownFinished(Failure())
                    return
                try:
                    out.append(connection.bio_read(2 * RECORD_SIZE))
                except SSL.WantReadError:
                    pass
        finally:
            if out:
                transport.writeSequence(out)


class BatchedTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` building :class:`BatchedTLSProtocol` (the ``--tls-listen`` ports)."""

    protocol = BatchedTLSProtocol


def tls_factory(context_factory: Any, wrapped: Any) -> TLSMemoryBIOFactory:
    """The server-side TLS wrapper for ``wrapped``: the batched one, or Twisted's own should a
    future Twisted lack the internals it overrides."""
    if _compat.BATCHED_TLS:
        return BatchedTLSFactory(context_factory, False, wrapped)
    return TLSMemoryBIOFactory(context_factory, False, wrapped)
