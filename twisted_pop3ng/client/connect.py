"""``connect()``: from a ``pop3://`` / ``pop3s://`` URL (or an endpoint) to a logged-in :class:`POP3Client`.

* ``pop3://USER@HOST[:PORT]`` (default port 110): STLS is required and the certificate verified
  (RFC 2595, RFC 7817); ``allow_plaintext=True`` uses STLS when offered and goes without otherwise.
* ``pop3s://USER@HOST[:PORT]`` (default port 995): TLS from the first byte (RFC 8314).
* an ``IStreamClientEndpoint``: connect as given; ``hostname`` enables STLS with verification.

With a URL, the TLS session of the last connection to the same server (and CA file) is offered
again (``tls_sessions``): the next connection resumes it instead of a full handshake.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

from twisted_pop3ng.client.errors import StlsRequired
from twisted_pop3ng.client.protocol import DEFAULT_TIMEOUT, POP3Client, POP3ClientFactory
# Re-exported: their home is twisted_pop3ng.tls.client; this is where they were first documented.
from twisted_pop3ng.tls.client import ResumingClientTLS, TLSSessionCache, tls_options, trust_root

__all__ = ["POP3URL", "parse_url", "connect", "tls_options", "trust_root", "TLSSessionCache",
           "DEFAULT_TLS_SESSIONS"]

#: The sessions :func:`connect` resumes by default: one per server for the whole process, so that
#: each poll of ``pop3ng fetch --daemon`` resumes the previous poll's session.
DEFAULT_TLS_SESSIONS = TLSSessionCache()


@dataclass(frozen=True)
class POP3URL:
    """A parsed ``pop3://`` or ``pop3s://`` URL."""

    scheme: str
    host: str
    port: int
    username: Optional[str]

    @property
    def implicit_tls(self) -> bool:
        return self.scheme == "pop3s"

    def __str__(self) -> str:
        user = "%s@" % self.username if self.username else ""
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s://%s%s:%d" % (self.scheme, user, host, self.port)


def parse_url(url: str) -> POP3URL:
    """Parse ``pop3[s]://[USER@]HOST[:PORT][/]``; a password in the URL is refused (it would leak)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("pop3", "pop3s"):
        raise ValueError("URL must start with pop3:// or pop3s://: %r" % url)
    if parts.password is not None:
        raise ValueError("put the password in --password-file or POP3NG_PASSWORD, not in the URL")
    if not parts.hostname:
        raise ValueError("URL has no host: %r" % url)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("unexpected path or query in URL: %r" % url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("bad port in URL: %r" % url)
    if port == 0:  # (once taken as "no port": the default port was dialled instead)
        raise ValueError("bad port in URL: %r" % url)
    if port is None:
        port = 995 if scheme == "pop3s" else 110
    username = unquote(parts.username) if parts.username else None
    return POP3URL(scheme, parts.hostname, port, username)


async def _connect(reactor: Any, target: Any, username: Optional[str], password: Optional[str],
                   token: Optional[str], cafile: Optional[str], allow_plaintext: bool,
                   timeout: Optional[float], connect_timeout: float, hostname: Optional[str],
                   mechanism: Optional[str], login: bool, apop: bool,
                   allow_plain_fallback: bool, tls_sessions: Optional[TLSSessionCache]) -> POP3Client:
    factory = POP3ClientFactory(timeout=timeout, clock=reactor)
    implicit = False
    resuming: Optional[ResumingClientTLS] = None

    def client_tls(host: str) -> Any:
        nonlocal resuming
        if tls_sessions is None or url is None:
            return tls_options(host, cafile)
        # Keyed by everything the verification depends on: a session verified for one name or
        # trust store is never offered to another (a changed CA file makes a new key).
        trust = None
        if cafile is not None:
            status = os.stat(cafile)
            trust = (cafile, status.st_ino, status.st_size, status.st_mtime_ns)
        resuming = tls_sessions.options((url.scheme, url.host, url.port, trust),
                                        lambda: tls_options(host, cafile))
        return resuming

    url: Optional[POP3URL] = None
    if isinstance(target, str):
        url = parse_url(target)
        username = username or url.username
        hostname = url.host
        endpoint: Any = HostnameEndpoint(reactor, url.host, url.port, timeout=connect_timeout)
        if url.implicit_tls:
            implicit = True
            endpoint = wrapClientTLS(client_tls(url.host), endpoint)
    else:
        endpoint = target
    client: POP3Client = await endpoint.connect(factory)
    try:
        client.tls = implicit
        await client.ready
        await client.capa()
        if not implicit and hostname is not None:
            if "STLS" in client.capabilities:
                await client.starttls(client_tls(hostname))  # (CAPA re-read over TLS)
            elif not allow_plaintext:
                raise StlsRequired("the server does not offer STLS; use pop3s:// or allow plaintext")
        if resuming is not None:
            resuming.remember()
        if login:
            if username is None:
                raise ValueError("no user name given")
            await client.login(username, password, token=token, mechanism=mechanism,
                               allow_plaintext=allow_plaintext, apop=apop,
                               allow_plain_fallback=allow_plain_fallback)
    except BaseException:
        if client.transport is not None:
            client.transport.abortConnection()
        raise
    return client


def connect(reactor: Any, endpoint_or_url: Any, username: Optional[str] = None,
            password: Optional[str] = None, *, token: Optional[str] = None,
            cafile: Optional[str] = None, allow_plaintext: bool = False,
            timeout: Optional[float] = DEFAULT_TIMEOUT, connect_timeout: float = 30.0,
            hostname: Optional[str] = None, mechanism: Optional[str] = None,
            login: bool = True, apop: bool = False,
            allow_plain_fallback: bool = False,
            tls_sessions: Optional[TLSSessionCache] = DEFAULT_TLS_SESSIONS) -> defer.Deferred:
    """Connect, secure (STLS or implicit TLS) and log in; fires with the :class:`POP3Client`.

    ``endpoint_or_url`` is a ``pop3://``/``pop3s://`` URL or a client endpoint (then ``hostname``
    asks for STLS with that name verified). The password never appears in the URL.
    ``allow_plain_fallback``: see :meth:`POP3Client.login` (off by default).
    ``tls_sessions``: where TLS sessions are kept and resumed from (None: always a full handshake).
    """
    return defer.ensureDeferred(_connect(reactor, endpoint_or_url, username, password, token, cafile,
                                         allow_plaintext, timeout, connect_timeout, hostname,
                                         mechanism, login, apop, allow_plain_fallback,
                                         tls_sessions))
