"""The server's TCP listening port: Twisted's ``tcp.Port`` with a leaner accept loop.

A POP3 session is short (connect, five commands, close), so what Twisted does once per accepted
connection is a visible share of it. ``tcp.Port.doRead`` wraps every round of accepts in a
log-buffering context manager (an attrs object and an observer swap) and a generator. On the
2-core test VM a do-nothing POP3 responder spent about 215 µs of server CPU per session with the
stock port and about 190 µs with this one (see docs/performance.rst, third round).

:class:`LeanPort` accepts in a plain loop and builds the protocol and transport exactly as Twisted
does (same transport class, same address objects, same adaptive number of accepts per round).
Anything but "no more connections waiting" — EMFILE, EPERM from netfilter, ECONNABORTED — is left
to ``tcp.Port.doRead``, which then meets the same error and handles it as always (the EMFILE
recovery with its reserved descriptor, the logging).

:class:`LeanTCPReactor` is how the port gets used: ``endpoints.serverFromString`` is given this
thin stand-in for the reactor, whose ``listenTCP`` makes a :class:`LeanPort`; everything else is
the real reactor's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.logger import Logger

_socket = tcp.socket.socket


class LeanPort(tcp.Port):
    """``tcp.Port`` whose ``doRead`` is a plain accept loop (see the module docstring)."""

    _lean_log = Logger()
    #: The listening socket's family and type, read once.
    _lean_kinds: Any = None

    def startListening(self) -> None:
        super().startListening()
        self._lean_kinds = (self.socket.family, self.socket.type)

    def doRead(self) -> None:
        listening = self.socket
        # socket.accept() without its wrapper: it converts family and type to enums per call
        # (as do the socket's family and type properties: read once, in startListening).
        accept, (family, kind) = listening._accept, self._lean_kinds
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
                if len(addr) == 4:  # IPv6: with the scope id, as tcp.Port does
                    host = tcp.socket.getnameinfo(
                        addr, tcp.socket.NI_NUMERICHOST | tcp.socket.NI_NUMERICSERV)
                    addr = tuple([host[0]] + list(addr[1:]))
                protocol = self.factory.buildProtocol(self._buildAddr(addr))
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


class LeanTCPReactor:
    """The reactor, except that ``listenTCP`` listens with a :class:`LeanPort`."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> LeanPort:
        listening = LeanPort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
