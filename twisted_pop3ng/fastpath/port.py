"""The server's TCP listening port: Twisted's ``tcp.Port`` with a leaner accept loop.

A POP3 session is short (connect, five commands, close), so what Twisted does once per accepted
connection is a visible share of it. ``tcp.Port.doRead`` wraps every round of accepts in a
log-buffering context manager (an attrs object and an observer swap) and a generator, which a
plain loop avoids (measured in docs/performance.rst).

:class:`LeanPort` accepts in a plain loop and builds the protocol and transport exactly as Twisted
does (same transport class, same address objects, same adaptive number of accepts per round).
Anything but "no more connections waiting" — EMFILE, EPERM from netfilter, ECONNABORTED — is left
to ``tcp.Port.doRead``, which then meets the same error and handles it as always (the EMFILE
recovery with its reserved descriptor, the logging).

:class:`LeanTCPReactor` is how the port gets used: ``endpoints.serverFromString`` is given this
thin stand-in for the reactor, whose ``listenTCP`` makes a :class:`LeanPort`; everything else is
the real reactor's.

:class:`LeanServer` is the transport a :class:`LeanPort` gives its connections: ``tcp.Server`` with
less done per connection and per read (see the class).

Rules of this module: the private names it relies on are probed in :mod:`._compat`;
:class:`LeanTCPReactor` listens with Twisted's own ``tcp.Port`` (and a :class:`LeanPort` gives its
connections Twisted's own ``tcp.Server``) when a probe says they changed.
"""

from __future__ import annotations

import socket
import struct
from errno import EWOULDBLOCK
from typing import Any, Optional

from twisted.internet import address, main, tcp
from twisted.internet.error import ConnectionAborted
from twisted.logger import Logger

from twisted_pop3ng.fastpath import _compat

_socket = socket.socket
#: SO_LINGER on, zero seconds: close() then resets the connection (tcp._SocketCloser's abort).
_LINGER_RESET = struct.pack("ii", 1, 0)


class LeanServer(tcp.Server):
    """``tcp.Server``, the transport of an accepted connection, minus per-session extras.

    * The log prefix and the ``repr`` string are made when first asked for, not formatted for
      every connection in ``__init__`` (two formatted strings and a class-name lookup; the log
      prefix is read only when a legacy ``log.msg`` runs inside a dispatch, which the lean reactor
      does not even ask for).
    * ``doRead`` hands received bytes to the protocol itself (``_dataReceived`` is one call
      less per read); the lean reactor calls it straight from its poll loop for a plain read event.
    * ``connectionLost`` does in one method what four classes of Twisted's do (see there).

    Everything else (writing, TLS, producers, loseConnection and abortConnection) is
    ``tcp.Server``'s own.
    """

    _lean_logstr: Optional[str] = None
    _lean_repstr: Optional[str] = None

    def __init__(self, sock: Any, protocol: Any, client: Any, server: Any, sessionno: int,
                 reactor: Any) -> None:
        # What tcp.Server.__init__ (with Connection's and FileDescriptor's) does, in order.
        self.reactor = reactor
        self._tempDataBuffer = []
        self._tempDataLen = 0
        self.socket = sock
        sock.setblocking(False)
        self.fileno = sock.fileno
        self.protocol = protocol
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        self._lean_protocol_class = type(protocol)
        self.startReading()
        self.connected = 1

    def _lean_name(self) -> str:
        protocol = self.__dict__.get("protocol")  # gone after connectionLost
        if protocol is not None:
            return self._getLogPrefix(protocol)
        return self._lean_protocol_class.__name__

    @property
    def logstr(self) -> str:
        if self._lean_logstr is None:
            self._lean_logstr = "%s,%s,%s" % (self._lean_name(), self.sessionno, self.hostname)
        return self._lean_logstr

    @logstr.setter
    def logstr(self, value: str) -> None:
        self._lean_logstr = value

    @property
    def repstr(self) -> str:
        if self._lean_repstr is None:
            port = self.server._realPortNumber if self.server is not None else None
            self._lean_repstr = "<%s #%s on %s>" % (self._lean_protocol_class.__name__,
                                                     self.sessionno, port)
        return self._lean_repstr

    @repstr.setter
    def repstr(self, value: str) -> None:
        self._lean_repstr = value

    def connectionLost(self, reason: Any) -> None:
        """``tcp.Connection.connectionLost`` with FileDescriptor's part and ``_closeSocket``
        inline, and the descriptor taken out of a lean reactor in one step (stopReading and
        stopWriting are four calls each, and ``reason.check`` builds the MRO's names)."""
        if not hasattr(self, "socket"):
            return  # called twice (see tcp.Connection.connectionLost)
        self.disconnected = 1
        self.connected = 0
        if self.producer is not None:
            self.producer.stopProducing()
            self.producer = None
        forget = getattr(self.reactor, "lean_forget", None)
        if forget is not None:
            forget(self)
        else:
            self.stopReading()
            self.stopWriting()
        skt = self.socket
        try:
            # (shutdown first, as tcp.Connection does: a reply corked with MSG_MORE leaves with
            # the FIN even when unread input makes the close a reset)
            if not issubclass(reason.type, ConnectionAborted):
                skt.shutdown(2)
            else:  # abortConnection: SO_LINGER (1, 0), so close resets the connection
                skt.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
        try:
            skt.close()
        except OSError:
            pass
        protocol = self.protocol
        del self.protocol
        del self.socket
        del self.fileno
        protocol.connectionLost(reason)

    def setTcpNoDelay(self, enabled: bool) -> None:
        # Already on when accepted from a listening socket that has it (see LeanPort).
        if not (enabled and getattr(self.server, "_lean_no_delay", False)):
            tcp.Server.setTcpNoDelay(self, enabled)

    def doRead(self) -> Any:
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as se:
            if se.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None


#: The transports of an accepted TCP connection: Twisted's, and the lean port's subclass of it
#: (for exact type checks where ``tcp.Server`` internals are relied on).
SERVER_TRANSPORTS = frozenset((tcp.Server, LeanServer))


class LeanPort(tcp.Port):
    """``tcp.Port`` whose ``doRead`` is a plain accept loop (see the module docstring)."""

    _lean_log = Logger()
    #: The accepted connections' transport (tcp.Server when _compat.LEAN_SERVER is off).
    transport: Any = LeanServer
    #: The listening socket's family and type, read once.
    _lean_kinds: Any = None
    #: Whether accepted connections come with TCP_NODELAY on: Linux hands it down from the
    #: listening socket, which has it (see startListening). None until the first connection
    #: has shown it; then the protocol's setTcpNoDelay(True) costs no system call.
    _lean_no_delay: Optional[bool] = False

    def startListening(self) -> None:
        super().startListening()
        self._lean_kinds = (self.socket.family, self.socket.type)
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        else:
            self._lean_no_delay = None

    def _lean_probe_no_delay(self, skt: Any) -> None:
        try:
            self._lean_no_delay = bool(skt.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        except OSError:
            self._lean_no_delay = False

    def doRead(self) -> None:
        listening = self.socket
        # socket.accept() without its wrapper: it converts family and type to enums per call
        # (as do the socket's family and type properties: read once, in startListening).
        accept, (family, kind) = listening._accept, self._lean_kinds  # type: ignore[union-attr]
        accepted = 0
        try:
            for _ in range(self.numberAccepts):
                try:
                    fd, addr = accept()
                except BlockingIOError:
                    break
                except OSError:
                    tcp.Port.doRead(self)  # the stock path meets the error and handles it
                    return
                skt = _socket(family, kind, 0, fd)
                accepted += 1
                if self._lean_no_delay is None:
                    self._lean_probe_no_delay(skt)
                if len(addr) == 4:  # IPv6: with the scope id, as tcp.Port does
                    host = socket.getnameinfo(
                        addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                    addr = tuple([host[0]] + list(addr[1:]))
                protocol = self.factory.buildProtocol(self._buildAddr(addr))  # type: ignore[union-attr]
                if protocol is None:
                    skt.close()
                    continue
                session = self.sessionno
                self.sessionno = session + 1
                transport = self.transport(skt, protocol, addr, self, session, self.reactor)
                protocol.makeConnection(transport)
        except Exception:
            self._lean_log.failure("accepting a connection failed")
        # tcp.Port's adaptation: a full round suggests more are waiting next time.
        if accepted == self.numberAccepts:
            self.numberAccepts += 20
        else:
            self.numberAccepts = max(1, accepted)


def _lean_transport(listening: LeanPort) -> LeanPort:
    """``listening``, whose connections get Twisted's own ``tcp.Server`` should the constructor
    chain LeanServer unrolls have changed (see :mod:`._compat`)."""
    if not _compat.LEAN_SERVER:
        listening.transport = tcp.Server
    return listening


class LeanTCPReactor:
    """The reactor, except that ``listenTCP`` listens with a :class:`LeanPort` (Twisted's own
    ``tcp.Port`` when :mod:`._compat` found its accept internals changed or missing)."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if not _compat.LEAN_PORT:
            return self._reactor.listenTCP(port, factory, backlog, interface)
        listening = _lean_transport(LeanPort(port, factory, backlog, interface, self._reactor))
        listening.startListening()
        return listening

    def adoptStreamPort(self, fd: int, family: Any, factory: Any) -> Any:
        """``reactor.adoptStreamPort`` (a ``--workers`` process taking over a listening socket),
        with a :class:`LeanPort` for TCP; Twisted's own port where the private constructor it
        uses is missing or the socket is not TCP."""
        if not (_compat.LEAN_PORT and _compat.ADOPT_LEAN_PORT) or family not in (
                socket.AF_INET, socket.AF_INET6):
            return self._reactor.adoptStreamPort(fd, family, factory)
        listening = _lean_transport(LeanPort._fromListeningDescriptor(
            self._reactor, fd, family, factory))
        listening.startListening()
        return listening

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
