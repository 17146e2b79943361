"""Replies straight to the socket, and connection addresses without address objects: the fast
strategies ``twistd pop3ng`` gives :class:`~twisted_pop3ng.server.protocol.POP3ServerFactory`.

Rules of this module: it reads ``tcp.Server`` internals (``dataBuffer``, ``_tempDataLen``, ``TLS``,
``producer``, ``socket``, ``client``, ``server``), probed in :mod:`._compat`; it acts only on a
transport whose exact type is Twisted's ``tcp.Server`` or :class:`~.port.LeanServer`, and leaves
every other transport (TLS, UNIX sockets, test transports, a subclass) to the stock strategies of
:mod:`twisted_pop3ng.server.io`, which it follows to the letter otherwise. Use :func:`sender` and
:func:`connection_info`: None when the probes (or ``POP3NG_STOCK_TWISTED=1``) say no.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet import error
from twisted.python.failure import Failure

from twisted_pop3ng.fastpath import _compat
from twisted_pop3ng.fastpath.port import SERVER_TRANSPORTS
from twisted_pop3ng.server.io import MAX_GATHER, stock_connection_info

#: What the reactor hands ``connectionLost`` after an orderly close (it shares one instance too).
_CONNECTION_DONE = Failure(error.ConnectionDone())
#: "More data follows": the kernel holds a short segment back (for the FIN, in ``close_at_once``).
_MSG_MORE = getattr(socket, "MSG_MORE", 0)


def _plain_and_empty(transport: Any) -> bool:
    """A Twisted TCP server connection without TLS, open, with nothing queued to send: bytes may
    go straight to its socket (order is kept) and it may be closed at once.

    Relies on ``tcp.Server`` internals, hence the exact type check: another subclass or another
    transport takes the ordinary path."""
    return (type(transport) in SERVER_TRANSPORTS and not transport.TLS and transport.connected
            and not transport.disconnecting and not transport.dataBuffer
            and not transport._tempDataLen)


def _unsent(pieces: List[bytes], sent: int) -> List[bytes]:
    """What is left of ``pieces`` after the first ``sent`` octets went out."""
    for i, piece in enumerate(pieces):
        if sent < len(piece):
            return [piece[sent:]] + pieces[i + 1:] if sent else pieces[i:]
        sent -= len(piece)
    return []


def _sent(send: Any, *args: Any) -> int:
    """Octets a non-blocking ``send``/``sendmsg`` call took; 0 on any socket error (the
    transport, handed the rest, meets the error again and reports it)."""
    try:
        return send(*args)
    except OSError:
        return 0


class DirectSender:
    """The sender strategy (see :class:`twisted_pop3ng.server.io.StockSender`) that writes to the
    socket itself when the transport holds nothing.

    A Twisted transport sends only when the reactor next reports the socket writable: per reply an
    ``epoll_ctl`` on, an ``epoll_wait`` turn, a dispatch and an ``epoll_ctl`` off, a large share
    of a short session's CPU (docs/performance.rst). When the transport holds nothing (so order is
    kept) the replies go straight to the socket (not after STLS: TLS then lives inside the
    transport); whatever the socket does not take, and any error, is left to the transport (it
    reports errors on its next write).
    """

    __slots__ = ()

    def send(self, transport: Any, out: List[bytes], gather: bool) -> None:
        if _plain_and_empty(transport):
            if gather and 1 < len(out) <= MAX_GATHER:
                # The pieces as they are (sendmsg gathers them): no join, no copy of the batch.
                out = _unsent(out, _sent(transport.socket.sendmsg, out))
                if not out:
                    return
            else:
                data = out[0] if len(out) == 1 else b"".join(out)
                sent = _sent(transport.socket.send, data)
                if sent == len(data):
                    return
                out = [data[sent:]]
        transport.writeSequence(out)

    def close_at_once(self, transport: Any, pieces: List[bytes]) -> bool:
        """Send ``pieces`` and close a plain TCP connection now, when the socket takes it all.

        ``loseConnection`` closes only when the reactor next reports the socket writable: an
        ``epoll_ctl`` off and on, a turn and a dispatch. With an empty buffer there is nothing to
        wait for, so this does at once what that turn would do (the transport's ``connectionLost``
        with ConnectionDone: the reactor forgets the socket, shutdown and close, then the
        protocol's ``connectionLost``), as ``posixbase._disconnectSelectable`` does.

        The last reply goes with ``MSG_MORE``, so the shutdown's FIN rides in the same segment
        (one loopback packet and one wake-up of the client less per session).
        """
        if not _plain_and_empty(transport) or transport.producer is not None:
            return False
        if pieces:
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            sent = _sent(transport.socket.send, data, _MSG_MORE)
            if sent != len(data):
                # Leave the rest to the transport (its own send pushes the corked part too).
                pieces[:] = [data[sent:]]
                return False
        transport.connectionLost(_CONNECTION_DONE)
        return True


def _bound_host(port: Any) -> Optional[str]:
    """The IPv4 address a listening port is bound to, unless it is the wildcard: then every
    connection it accepts has that server address (asked of the socket once, kept on the port)."""
    host: Any = getattr(port, "_pop3ng_bound_host", False)
    if host is False:
        try:
            bound = port.socket.getsockname()
            host = bound[0] if len(bound) == 2 and bound[0] != "0.0.0.0" else None
        except (AttributeError, OSError):
            host = None
        try:
            port._pop3ng_bound_host = host
        except AttributeError:
            pass  # a port that takes no attributes: asked again next time
    return host


def direct_connection_info(transport: Any) -> Tuple[Optional[str], Optional[str]]:
    """(client IP, server IP) as :func:`~twisted_pop3ng.server.io.stock_connection_info` gives
    them; for an accepted IPv4 connection from the raw address tuples, without building address
    objects (each ``getPeer``/``getHost`` makes one, ``getHost`` costs a system call)."""
    if type(transport) in SERVER_TRANSPORTS and len(transport.client) == 2:
        host = _bound_host(transport.server)
        if host is None:  # a wildcard listener: ask this connection
            host = transport.socket.getsockname()[0]
        return transport.client[0], host
    return stock_connection_info(transport)


def sender() -> Optional[DirectSender]:
    """The direct sender, or None (take the stock one) if the probes found the internals changed."""
    return DirectSender() if _compat.DIRECT_SEND else None


def connection_info() -> Optional[Callable[[Any], Tuple[Optional[str], Optional[str]]]]:
    """The raw-address ``connection_info`` strategy, or None (take the stock one) likewise."""
    return direct_connection_info if _compat.DIRECT_SEND else None
