"""Security policy of a server: plaintext-auth rules, APOP greeting, abuse limits, LOGIN-DELAY.

The protocol calls these hooks at fixed points (connection made/lost, USER, login success and
failure); the state they keep (failures per address, connections per address and user, last login
per user) lives in one :class:`AbuseGuard` per factory (``factory.abuse_guard``), so it spans
connections — a brute-forcer that reconnects for every guess still meets the growing delay; what
one connection was counted for is on its :class:`~.session.Session`. Defaults follow Dovecot.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

from twisted.internet.interfaces import ISSLTransport

from twisted_pop3ng.errors import AuthenticationFailed, LoginDelay, POP3Error
from twisted_pop3ng.server.session import Connection
from twisted_pop3ng.server.states import AUTHORIZATION

#: Dovecot's auth penalty: the delay doubles per failure from an address up to 15 s, forgotten after an hour.
MAX_FAILURE_DELAY = 15.0
FAILURE_MEMORY = 3600.0
#: Addresses remembered at most (oldest forgotten first): bounded memory under a distributed attack.
MAX_TRACKED_ADDRESSES = 100_000

Network = Any  # ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class SecurityConfig:
    """Security knobs; ``twistd pop3ng`` fills them from its options. Secure by default."""

    #: Allow USER/PASS and AUTH PLAIN/LOGIN without TLS from any address.
    allow_plaintext_auth: bool = False
    #: Networks from which plaintext authentication is allowed without TLS.
    trusted_networks: Sequence[Network] = ()
    #: Offer APOP (timestamp in the greeting); needs plaintext-equivalent secrets.
    apop: bool = False
    #: SASL mechanisms to offer (None: every one the configuration can support).
    mechanisms: Optional[Sequence[str]] = None
    max_failure_delay: float = MAX_FAILURE_DELAY
    #: Simultaneous connections from one remote address (0: no limit; local connections are not
    #: counted) and sessions of one user.
    max_connections_per_address: int = 50
    max_connections_per_user: int = 10
    #: RFC 2449 LOGIN-DELAY (seconds between logins of a user, enforced) and EXPIRE (days or
    #: "NEVER", advertised only); None: not configured, not advertised.
    login_delay: Optional[int] = None
    expire: Optional[str] = None
    #: Host name for APOP and CRAM-MD5 challenges.
    hostname: str = field(default_factory=socket.gethostname)



def parse_network(text: str) -> Network:
    return ipaddress.ip_network(text.strip(), strict=False)


class AbuseGuard:
    """Per-factory memory of failures, connections and logins."""

    def __init__(self, config: SecurityConfig, base_delay: float, clock: Any) -> None:
        self.config = config
        self.base_delay = base_delay
        self.clock = clock
        self.failures: "OrderedDict[str, Tuple[int, float]]" = OrderedDict()
        self.connections: Dict[str, int] = {}
        self.users: Dict[str, int] = {}
        self.last_login: Dict[str, float] = {}

    def now(self) -> float:
        return self.clock.seconds() if hasattr(self.clock, "seconds") else time.time()

    def failure_delay(self, address: Optional[str]) -> float:
        """Record a failed authentication; the delay before answering grows per address."""
        if address is None:
            return self.base_delay
        now = self.now()
        count, last = self.failures.pop(address, (0, now))
        if now - last > FAILURE_MEMORY:
            count = 0
        count += 1
        self.failures[address] = (count, now)
        while len(self.failures) > MAX_TRACKED_ADDRESSES:
            self.failures.popitem(last=False)
        if self.base_delay <= 0:
            return 0.0
        return min(self.base_delay * 2 ** (count - 1), max(self.config.max_failure_delay, self.base_delay))

    def success(self, address: Optional[str]) -> None:
        if address is not None:
            self.failures.pop(address, None)

    def open_connection(self, address: Optional[str]) -> bool:
        if address is None:
            return True
        count = self.connections.get(address, 0)
        limit = self.config.max_connections_per_address
        if limit and count >= limit:
            return False
        self.connections[address] = count + 1
        return True

    def close_connection(self, address: Optional[str]) -> None:
        if address is not None and address in self.connections:
            self.connections[address] -= 1
            if not self.connections[address]:
                del self.connections[address]

    def admit_user(self, user: str) -> None:
        """Called when a user has proven its identity; raises to refuse the session."""
        limit = self.config.max_connections_per_user
        if limit and self.users.get(user, 0) >= limit:
            raise POP3Error("Maximum number of connections for this user exceeded", code="IN-USE")
        delay = self.config.login_delay
        now = self.now()
        if delay and now - self.last_login.get(user, -1e18) < delay:
            raise LoginDelay("Minimum time between logins is %d seconds, try again later" % delay)
        self.last_login[user] = now
        self.users[user] = self.users.get(user, 0) + 1

    def release_user(self, user: str) -> None:
        if self.users.get(user):
            self.users[user] -= 1
            if not self.users[user]:
                del self.users[user]


# -- hooks called by the protocol -----------------------------------------------------------------


def security(protocol: Connection) -> SecurityConfig:
    return protocol.config.security


def guard(protocol: Connection) -> AbuseGuard:
    """The factory's :class:`AbuseGuard` (a declared ``POP3ServerFactory`` setting)."""
    return protocol.factory.abuse_guard


def _addresses(protocol: Any) -> Tuple[Optional[str], Optional[str]]:
    """(client IP, server IP) of the connection, asked once per transport of the connection's
    ``connection_info`` strategy (:func:`twisted_pop3ng.server.io.stock_connection_info` unless
    the factory was given another: ``twistd pop3ng`` reads the raw address tuples)."""
    transport = protocol.transport
    if transport is None:
        return None, None
    session = protocol.session
    if session.addresses_of is transport:
        return session.peer, session.host
    peer, host = protocol.factory.connection_info(transport)
    session.addresses_of, session.peer, session.host = transport, peer, host
    return peer, host


def peer_ip(protocol: Connection) -> Optional[str]:
    return _addresses(protocol)[0]


def is_secure(protocol: Connection) -> bool:
    return protocol.transport is not None and ISSLTransport.providedBy(protocol.transport)


def is_local(protocol: Connection) -> bool:
    """Dovecot's rule: the client address equals the server address (or not an IP socket at all)."""
    peer, host = _addresses(protocol)
    return peer is None or host is None or peer == host


def plaintext_allowed(protocol: Connection) -> bool:
    config = security(protocol)
    if config.allow_plaintext_auth or is_secure(protocol) or is_local(protocol):
        return True
    peer = peer_ip(protocol)
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0]) if peer else None
    except ValueError:
        return False
    if address is not None and getattr(address, "ipv4_mapped", None):
        address = address.ipv4_mapped
    return address is not None and any(address in net for net in config.trusted_networks)


def check_plaintext(protocol: Connection) -> None:
    if not plaintext_allowed(protocol):
        raise AuthenticationFailed("Plaintext authentication disallowed on non-secure (SSL/TLS) connections.")


def user_capability(protocol: Connection) -> Optional[str]:
    return "USER" if protocol.session.state == AUTHORIZATION and plaintext_allowed(protocol) else None


def connection_made(protocol: Connection) -> bool:
    """False (after a reply) when the address already holds too many connections.

    Local connections (client address == server address: the host itself, its MUAs, monitoring,
    benchmarks) are not counted: the limit is against remote floods, as Dovecot's are.
    """
    if is_local(protocol):
        return True
    address = peer_ip(protocol)
    if not guard(protocol).open_connection(address):
        protocol.close("Too many connections from your address", code="SYS/TEMP")
        return False
    protocol.session.counted_address = address
    return True


def connection_lost(protocol: Connection) -> None:
    session = protocol.session
    address, user = session.counted_address, session.admitted_user
    if address is None and user is None:
        return
    g = guard(protocol)
    if address is not None:
        session.counted_address = None
        g.close_connection(address)
    if user is not None:
        session.admitted_user = None
        g.release_user(user)


def greeting(protocol: Connection, text: str) -> str:
    config = security(protocol)
    if not config.apop:
        return text
    session = protocol.session
    if session.apop_timestamp is None:
        session.apop_timestamp = "<%d.%s@%s>" % (os.getpid(), os.urandom(6).hex(), config.hostname)
    return "%s %s" % (text, session.apop_timestamp)


def failure_delay(protocol: Connection) -> float:
    return guard(protocol).failure_delay(peer_ip(protocol))


def admit(result: Any, protocol: Connection, credentials: Any) -> Any:
    """After a successful portal login: enforce LOGIN-DELAY and the per-user limit."""
    user = credentials.username
    if isinstance(user, bytes):
        user = user.decode("utf-8", "surrogateescape")
    g = guard(protocol)
    try:
        g.admit_user(user)
    except POP3Error:
        result[2]()  # the realm's logout: unlock the maildrop again
        raise
    g.success(peer_ip(protocol))
    protocol.session.admitted_user = user
    return result


def capabilities(protocol: Connection) -> Sequence[str]:
    """LOGIN-DELAY and EXPIRE, only when configured (RFC 2449 §6.5, §6.7)."""
    config = security(protocol)
    caps = []
    if config.login_delay:
        caps.append("LOGIN-DELAY %d" % config.login_delay)
    if config.expire is not None:
        caps.append("EXPIRE %s" % config.expire)
    return caps
