"""Listeners behind a TCP load balancer that speaks the PROXY protocol (``--listen haproxy:tcp:110``).

The wrapped protocol is connected only once the header has arrived, so everything that looks at
the client address -- the greeting's policy, per-address limits, the "local connection may log
in without TLS" rule, the failure delay, the audit lines -- sees the client the proxy reports,
never the proxy. (Twisted's own ``haproxy:`` endpoint connects the protocol before the header is
read, so a server on the proxy's host would take every client for a local one.)

A connection that does not start with a valid header within :data:`HEADER_TIMEOUT` seconds is
closed without a word: whatever sent it is not the configured proxy.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.python.failure import Failure

from twisted_pop3ng.wire import WireError
from twisted_pop3ng.wire.proxy import ProxyHeader, parse_header

#: Seconds a connection may take to send its PROXY header.
HEADER_TIMEOUT = 10.0

_log = Logger(namespace="pop3ng.proxy")


def _address(pair: Any) -> Any:
    host, port = pair
    kind = IPv6Address if ipaddress.ip_address(host).version == 6 else IPv4Address
    return kind("TCP", host, port)


class ProxyHeaderProtocol(policies.ProtocolWrapper):
    """Reads the PROXY header, then connects the wrapped protocol to itself as its transport,
    answering ``getPeer``/``getHost`` with the addresses from the header."""

    #: The TCP connection below (whatever interfaces it provides).
    transport: Any
    wrappedProtocol: Any

    def __init__(self, factory: "ProxyHeaderFactory", wrappedProtocol: Any) -> None:
        super().__init__(cast(Any, factory), wrappedProtocol)
        self._pending = b""
        self._header: Optional[ProxyHeader] = None
        self._timeout: Any = None

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper.makeConnection would connect the wrapped protocol now: only later.
        from zope.interface import directlyProvides, providedBy

        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._timeout = self.factory.clock.callLater(HEADER_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        self._timeout = None
        _log.info("no PROXY header from {peer} in time: closed", peer=self.transport.getPeer())
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._header is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        self._pending += data
        try:
            header, used = parse_header(self._pending)
        except WireError as error:
            _log.info("bad PROXY header from {peer} ({error}): closed",
                      peer=self.transport.getPeer(), error=str(error))
            self._cancel_timeout()
            self.transport.abortConnection()
            return
        if header is None:
            return
        self._cancel_timeout()
        self._header = header
        rest, self._pending = self._pending[used:], b""
        self.wrappedProtocol.makeConnection(self)
        if rest and self.connected:
            self.wrappedProtocol.dataReceived(rest)

    def _cancel_timeout(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timeout()
        if self._header is not None:
            super().connectionLost(reason)
        else:  # the wrapped protocol was never connected: it learns nothing
            self.factory.unregisterProtocol(self)

    def startTLS(self, contextFactory: Any, *args: Any) -> None:
        """STLS: TLS starts on the connection below; this wrapper then provides what the
        connection now does (``ISSLTransport``), so the session counts as secure."""
        from zope.interface import directlyProvides, providedBy

        self.transport.startTLS(contextFactory, *args)
        directlyProvides(self, providedBy(self.transport))

    def getPeer(self) -> Any:
        if self._header is not None and self._header.source is not None:
            return _address(self._header.source)
        return self.transport.getPeer()

    def getHost(self) -> Any:
        if self._header is not None and self._header.destination is not None:
            return _address(self._header.destination)
        return self.transport.getHost()


class ProxyHeaderFactory(policies.WrappingFactory):
    """Wraps a listener's factory (the POP3 one, or the TLS one around it: the header comes
    before the TLS handshake) so its connections start with a PROXY header."""

    protocol = ProxyHeaderProtocol

    def __init__(self, wrappedFactory: Any, clock: Any = None) -> None:
        super().__init__(wrappedFactory)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock

    def logPrefix(self) -> str:
        inner = self.wrappedFactory
        name = inner.logPrefix() if hasattr(inner, "logPrefix") else type(inner).__name__
        return "%s (PROXY)" % (name,)
