"""The abuse-limit half of ``twistd pop3ng``: options that bound what unauthenticated clients cost.

Rules of this module: :data:`OPT_PARAMETERS` joins ``Options.optParameters``
(:mod:`twisted_pop3ng.service.options`); each value is checked by its coercer as it is parsed (a bad
value is a usage error naming the option, never a traceback); :func:`fill` copies them into the
:class:`~twisted_pop3ng.server.policy.SecurityConfig` that
:func:`~twisted_pop3ng.service.security_options.security_config` builds, and sizes the process's
password-hashing queue. Defaults are Dovecot's limits or stricter.

========================  ========  =================================================================
option                    default   meaning
========================  ========  =================================================================
--max-connections N       0         connections open at once, local ones too (0: the descriptor
                                    limit less 64); past it ``-ERR [SYS/TEMP]`` and close
--login-deadline S        120       seconds from connect to login, however active (0: none)
--max-auth-failures N     3         failed logins on one connection, then it is closed (0: no limit)
--ipv4-prefix N           32        IPv4 addresses are counted per /N (per-address limit, delay)
--ipv6-prefix N           64        IPv6 addresses are counted per /N
--max-hash-queue N        32        password hashes waiting for a thread; past it ``-ERR [SYS/TEMP]``
========================  ========  =================================================================
"""

from __future__ import annotations

from typing import Any, Callable, List

from twisted_pop3ng.auth import checkers
from twisted_pop3ng.server import policy


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a non-negative number of seconds")
    return value


def _prefix(bits: int) -> Callable[[str], int]:
    def coerce(text: str) -> int:
        value = int(text)
        if not 0 <= value <= bits:
            raise ValueError("must be a prefix length between 0 and %d" % bits)
        return value

    coerce.coerceDoc = "A prefix length, 0-%d." % bits  # type: ignore[attr-defined]
    return coerce


_count.coerceDoc = "A count, 0 or more."  # type: ignore[attr-defined]
_seconds.coerceDoc = "Seconds, 0 or more."  # type: ignore[attr-defined]

OPT_FLAGS: List[List[Any]] = [
    ["log-logins", None, "Log every successful login too, one 'auth ok:' line (user, mechanism, "
                         "addresses, TLS); failed logins always get their 'auth failed:' line."],
]

OPT_PARAMETERS: List[List[Any]] = [
    ["max-connections", None, 0,
     "Connections open at once, local ones included; past it a new one gets -ERR [SYS/TEMP] and is "
     "closed (0, and never more than: the file-descriptor limit less %d)." % policy.RESERVED_FDS, _count],
    ["login-deadline", None, policy.LOGIN_DEADLINE,
     "Seconds from connect by which a client must have logged in, however active; no command "
     "extends it (0: none).", _seconds],
    ["max-auth-failures", None, policy.MAX_AUTH_FAILURES,
     "Failed logins on one connection after which it is closed (0: no limit).", _count],
    ["ipv4-prefix", None, 32, "Prefix length by which IPv4 clients are counted for the per-address "
                              "limit and the failure delay.", _prefix(32)],
    ["ipv6-prefix", None, 64, "Prefix length by which IPv6 clients are counted (a site usually "
                              "holds a whole /64).", _prefix(128)],
    ["max-hash-queue", None, checkers.MAX_HASH_QUEUE,
     "Password hashes that may wait for a thread; past it a login gets -ERR [SYS/TEMP] at once.",
     _count],
]


def _get(options: Any, name: str) -> Any:
    for entry in OPT_PARAMETERS:
        if entry[0] == name:
            value = options.get(name, entry[2]) if hasattr(options, "get") else entry[2]
            return entry[2] if value is None else value
    raise KeyError(name)


def fill(config: policy.SecurityConfig, options: Any) -> policy.SecurityConfig:
    """Copy the abuse limits into ``config`` and size the hash queue (per process)."""
    config.max_connections = int(_get(options, "max-connections"))
    deadline = float(_get(options, "login-deadline"))
    config.login_deadline = deadline if deadline > 0 else None
    config.max_auth_failures = int(_get(options, "max-auth-failures"))
    config.ipv4_prefix = int(_get(options, "ipv4-prefix"))
    config.ipv6_prefix = int(_get(options, "ipv6-prefix"))
    config.log_successful_logins = bool(options.get("log-logins")) if hasattr(options, "get") else False
    checkers.HASH_POOL.configure(backlog=int(_get(options, "max-hash-queue")))
    return config
