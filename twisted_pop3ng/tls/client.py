"""TLS for the client: whom to trust, how to check the server's name, and the sessions to resume.

Rules of this module: public Twisted/pyOpenSSL APIs only; TLS 1.2 is the minimum; the host name
is always verified (service_identity, RFC 6125/7817).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, List, Optional

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from twisted_pop3ng.tls.pem import pem_blocks

__all__ = ["trust_root", "tls_options", "TLSSessionCache", "ResumingClientTLS"]


def trust_root(cafile: Optional[str]) -> Any:
    """The CA certificates from a PEM file (all of them), or the platform's trust store."""
    if cafile is None:
        return ssl.platformTrust()
    with open(cafile, "rb") as f:
        pems = pem_blocks(f.read())
    if not pems:
        raise ValueError("no PEM certificate in %s" % cafile)
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(p) for p in pems])


def tls_options(hostname: str, cafile: Optional[str] = None, trust: Any = None) -> Any:
    """Client TLS options verifying ``hostname`` (service_identity, RFC 6125/7817), TLS 1.2+."""
    return ssl.optionsForClientTLS(hostname, trustRoot=trust if trust is not None else trust_root(cafile),
                                   extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})


class TLSSessionCache:
    """Per server (key: what identifies it and how it was verified), the client TLS options and
    their newest session, so that the next connection resumes instead of a full handshake
    (OpenSSL resumes a session only with the context that made it, so the options are kept)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._entries: "OrderedDict[Hashable, List[Any]]" = OrderedDict()

    def _entry(self, key: Hashable, make_options: Callable[[], Any]) -> List[Any]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = [make_options(), None]
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry

    def options(self, key: Hashable, make_options: Callable[[], Any]) -> "ResumingClientTLS":
        """Client TLS options for ``key`` (made by ``make_options`` the first time) offering its
        newest session."""
        return ResumingClientTLS(self, key, self._entry(key, make_options)[0])

    def get(self, key: Hashable) -> Optional[SSL.Session]:
        entry = self._entries.get(key)
        return entry[1] if entry is not None else None

    def put(self, key: Hashable, session: SSL.Session) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry[1] = session

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)


@implementer(IOpenSSLClientConnectionCreator)
class ResumingClientTLS:
    """Client TLS options (``inner``, e.g. :func:`tls_options`) offering the session ``cache`` holds
    for ``key``; :meth:`remember` stores the connection's session once the server has spoken.

    The certificate and host name are verified by ``inner`` on every full handshake; a session
    is only kept from a connection that passed them, and only offered to the same ``key``.
    """

    def __init__(self, cache: TLSSessionCache, key: Hashable, inner: Any) -> None:
        self.inner = inner
        self.cache = cache
        self.key = key
        self.connection: Optional[SSL.Connection] = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self.inner.clientConnectionForTLS(tlsProtocol)
        session = self.cache.get(self.key)
        if session is not None:
            connection.set_session(session)
        self.connection = connection
        return connection

    def remember(self) -> None:
        """Keep the connection's session for the next connection. Call it after the first reply
        read over TLS: a TLS 1.3 server sends its ticket after the handshake."""
        if self.connection is not None:
            session = self.connection.get_session()
            if session is not None:
                self.cache.put(self.key, session)
