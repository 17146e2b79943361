"""Security policy of a server: plaintext-auth rules, APOP greeting, abuse limits, LOGIN-DELAY.

The protocol calls these hooks at fixed points (connection made/lost, USER, login success and
failure); the state they keep (failures per address, connections per address and in all, sessions
per user, last login per user) lives in one :class:`AbuseGuard` per factory
(``factory.abuse_guard``), so it spans connections — a brute-forcer that reconnects for every guess
still meets the growing delay; what one connection was counted for is on its
:class:`~.session.Session`. Defaults follow Dovecot (its limits are the floor).

Rules of this module:

* every limit is bounded arithmetic that cannot raise: the failure count saturates, the delay is
  clamped (an exception here once turned the delay into an immediate ``-ERR [SYS/TEMP]``, F1);
* addresses are counted per *network* (:meth:`AbuseGuard.key`: /32 for IPv4 and /64 for IPv6 by
  default, IPv4-mapped IPv6 as IPv4), so changing the last bits of an address gains nothing;
* tracked memory is bounded (:data:`MAX_TRACKED_ADDRESSES`), oldest forgotten first.
"""

from __future__ import annotations

import ipaddress
import os
import resource
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, cast

from twisted.internet.interfaces import ISSLTransport

from twisted_pop3ng.errors import AuthenticationFailed, LoginDelay, POP3Error
from twisted_pop3ng.server.session import Connection
from twisted_pop3ng.server.states import AUTHORIZATION

#: Dovecot's auth penalty: the delay doubles per failure from an address up to 15 s, forgotten after an hour.
MAX_FAILURE_DELAY = 15.0
FAILURE_MEMORY = 3600.0
#: Addresses remembered at most (oldest forgotten first): bounded memory under a distributed attack.
MAX_TRACKED_ADDRESSES = 100_000
#: The failure count saturates here: 2**63 times any base delay is past every ceiling, and the
#: count stays a small int (it overflowed a float multiplication after 1,024 failures: F1).
MAX_FAILURE_COUNT = 64
#: Dovecot closes a connection after 3 failed authentications (LOGIN_MAX_AUTH_ATTEMPTS).
MAX_AUTH_FAILURES = 3
#: Absolute time from connect to login (input does not extend it; Dovecot's is 3 minutes for
#: "login_timeout"-style limits); the inactivity timeout before login is shorter still.
LOGIN_DEADLINE = 120.0
#: File descriptors kept free beyond ``--max-connections``'s automatic value (listening sockets,
#: maildir files, logs, the thread pool's pipes).
RESERVED_FDS = 64

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
    #: Connections open at once in this process, local ones included; past it a new connection
    #: gets ``-ERR [SYS/TEMP]`` and is closed (0: the file-descriptor limit less RESERVED_FDS).
    max_connections: int = 0
    #: Write an ``auth ok`` line for every successful login too (failures always have theirs).
    #: Off by default: formatting a log line costs a login about as much as the rest of it.
    log_successful_logins: bool = False
    #: Seconds from connect by which a client must have logged in, however active (None: none).
    login_deadline: Optional[float] = LOGIN_DEADLINE
    #: Failed authentications on one connection after which it is closed (0: no limit).
    max_auth_failures: int = MAX_AUTH_FAILURES
    #: Prefix lengths by which client addresses are grouped for the per-address limits and the
    #: failure delay (an IPv6 site usually holds a whole /64, or a /56, /48).
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64



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
        #: Connections open now (all of them, local ones too), against ``max_connections``.
        self.total = 0
        self._connection_limit: Optional[int] = None

    def now(self) -> float:
        return self.clock.seconds() if hasattr(self.clock, "seconds") else time.time()

    def key(self, address: Optional[str]) -> Optional[str]:
        """The network ``address`` is counted under: itself for a full-length prefix (the common
        IPv4 case, without parsing), else ``network/prefix``; IPv4-mapped IPv6 counts as IPv4."""
        if address is None:
            return None
        config = self.config
        if ":" not in address and config.ipv4_prefix >= 32:
            return address
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return address
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None:
            ip = mapped
        prefix = config.ipv4_prefix if ip.version == 4 else config.ipv6_prefix
        if prefix >= ip.max_prefixlen:
            return str(ip)
        return str(ipaddress.ip_network((ip, max(prefix, 0)), strict=False))

    def failure_delay(self, address: Optional[str]) -> float:
        """Record a failed authentication; the delay before answering grows per address.

        Never raises, and is never more than the ceiling: bounded for any number of failures."""
        ceiling = max(self.config.max_failure_delay, self.base_delay, 0.0)
        try:
            key = self.key(address)
            if key is None:
                return max(self.base_delay, 0.0)
            now = self.now()
            count, last = self.failures.pop(key, (0, now))
            if now - last > FAILURE_MEMORY:
                count = 0
            count = min(count + 1, MAX_FAILURE_COUNT)
            self.failures[key] = (count, now)
            while len(self.failures) > MAX_TRACKED_ADDRESSES:
                self.failures.popitem(last=False)
            if self.base_delay <= 0:
                return 0.0
            return min(self.base_delay * 2.0 ** (count - 1), ceiling)
        except Exception:  # a bug here must not turn the delay into no delay
            return ceiling

    def failure_count(self, address: Optional[str]) -> int:
        """Failures remembered for ``address``'s network (0 once forgotten)."""
        key = self.key(address)
        count, last = self.failures.get(key, (0, 0.0)) if key is not None else (0, 0.0)
        return 0 if self.now() - last > FAILURE_MEMORY else count

    def success(self, address: Optional[str]) -> None:
        """A login from ``address`` forgives one failure, not all of them.

        Dovecot forgets every failure of the address on a success; then a guesser who owns one
        account logs into it between guesses at another and never meets more than the base delay.
        Here that interleaving only holds the delay where it was (one success per failure), and
        any faster guessing still makes it grow; a user who mistyped and then got in loses one
        step of delay per login, and all of it after FAILURE_MEMORY."""
        key = self.key(address)
        if key is None:
            return
        entry = self.failures.get(key)
        if entry is not None:
            if entry[0] <= 1:
                del self.failures[key]
            else:
                self.failures[key] = (entry[0] - 1, entry[1])

    def connection_limit(self) -> int:
        """``max_connections`` (0: no limit of its own), never more than the process's
        file-descriptor limit less RESERVED_FDS: the sessions it has must still be able to open
        their messages, lock files and indexes (past it, a RETR would fail with EMFILE)."""
        if self._connection_limit is None:
            try:
                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            except (OSError, ValueError):
                soft = resource.RLIM_INFINITY
            if soft == resource.RLIM_INFINITY or soft <= 0:
                soft = 1 << 20
            self._connection_limit = max(soft - RESERVED_FDS, 1)
        limit = self.config.max_connections
        return min(limit, self._connection_limit) if limit else self._connection_limit

    def open_any(self) -> bool:
        """Count a new connection against the global cap; False when the server is full."""
        if self.total >= self.connection_limit():
            return False
        self.total += 1
        return True

    def close_any(self) -> None:
        if self.total > 0:
            self.total -= 1

    def open_connection(self, address: Optional[str]) -> bool:
        key = self.key(address)
        if key is None:
            return True
        count = self.connections.get(key, 0)
        limit = self.config.max_connections_per_address
        if limit and count >= limit:
            return False
        self.connections[key] = count + 1
        return True

    def close_connection(self, key: Optional[str]) -> None:
        """Release what :meth:`open_connection` counted (``key`` as :meth:`key` gave it)."""
        if key is not None and key in self.connections:
            self.connections[key] -= 1
            if not self.connections[key]:
                del self.connections[key]

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


def addresses(protocol: Connection) -> Tuple[Optional[str], Optional[str]]:
    """(client IP, server IP) of the connection (None where not an IP connection)."""
    return _addresses(protocol)


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
        address = cast(ipaddress.IPv6Address, address).ipv4_mapped
    return address is not None and any(address in net for net in config.trusted_networks)


def check_plaintext(protocol: Connection) -> None:
    if not plaintext_allowed(protocol):
        raise AuthenticationFailed("Plaintext authentication disallowed on non-secure (SSL/TLS) connections.")


def user_capability(protocol: Connection) -> Optional[str]:
    return "USER" if protocol.session.state == AUTHORIZATION and plaintext_allowed(protocol) else None


def connection_made(protocol: Connection) -> bool:
    """False (after a reply) when the server, or the client's network, holds too many connections.

    The global cap counts every connection (descriptors run out whoever holds them). The
    per-address one does not count local connections (client address == server address: the host
    itself, its MUAs, monitoring, benchmarks): it is against remote floods, as Dovecot's is.
    """
    g = guard(protocol)
    session = protocol.session
    if not g.open_any():
        _refuse(protocol, "total", "Server is busy, too many connections, try again later")
        return False
    session.counted_total = True
    if is_local(protocol):
        return True
    key = g.key(peer_ip(protocol))
    if not g.open_connection(key):
        _refuse(protocol, "address", "Too many connections from your address")
        return False
    session.counted_address = key
    return True


def _refuse(protocol: Connection, limit: str, text: str) -> None:
    """Close a connection refused by the ``limit`` ("total" or "address"), counted as such."""
    protocol.session.ended = "refused"
    stats = protocol.factory.stats
    if stats is not None:
        stats.refused[limit] += 1
    protocol.close(text, code="SYS/TEMP")


def connection_lost(protocol: Connection) -> None:
    session = protocol.session
    address, user = session.counted_address, session.admitted_user
    if address is None and user is None and not session.counted_total:
        return
    g = guard(protocol)
    if session.counted_total:
        session.counted_total = False
        g.close_any()
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


def login_deadline(protocol: Connection) -> Optional[float]:
    """Seconds from connect by which the client must be logged in (None: no such deadline)."""
    deadline = security(protocol).login_deadline
    return deadline if deadline and deadline > 0 else None


def too_many_failures(protocol: Connection) -> bool:
    """Count a failed authentication on this connection; True once it must be closed."""
    session = protocol.session
    session.auth_failures += 1
    limit = security(protocol).max_auth_failures
    return bool(limit) and session.auth_failures >= limit


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
