"""The authentication audit log: one line per login attempt, for fail2ban and monitoring.

Rules of this module:

* the text of each line is a stable contract (a fail2ban filter matches ``auth failed: .* rip=<HOST>``),
  exactly::

      auth failed: user=NAME mechanism=MECH rip=CLIENT-IP lip=SERVER-IP tls=yes|no reason=WORD
      auth ok: user=NAME mechanism=MECH rip=CLIENT-IP lip=SERVER-IP tls=yes|no

  and the same values are structured fields of the ``twisted.logger`` event (``user``,
  ``mechanism``, ``rip``, ``lip``, ``tls``, ``reason``, ``audit`` = ``"auth failed"`` or
  ``"auth ok"``, and ``event`` = ``"auth.failed"`` or ``"auth.ok"``), under the namespace
  :data:`NAMESPACE`;
* nothing secret is ever logged: no password, token, response or challenge, only the name;
* the name is the client's choice, so it is made harmless before it is logged
  (:func:`sanitize`): no whitespace, control characters or backslashes (they become ``\\xNN``
  escapes, so a name can neither start a forged line nor forge a ``rip=`` field), and at most
  :data:`MAX_NAME` characters;
* an address that is not an IP one (a UNIX socket, a test transport) is logged as ``-``.

``reason`` is one short word: ``password`` (wrong credentials, unknown user alike: the log must not
become an oracle the reply is not), ``limit`` (per-user limit or LOGIN-DELAY), ``busy`` (the
password hashing queue is full), ``disconnected`` (the client left before the check finished),
``error`` (a server failure, logged with its traceback separately).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from twisted_pop3ng.server import policy

NAMESPACE = "pop3ng.auth"
#: Characters of a user name logged at most (longer ones end in "...").
MAX_NAME = 64
FAILED_FORMAT = ("auth failed: user={user} mechanism={mechanism} rip={rip} lip={lip} tls={tls} "
                 "reason={reason}")
OK_FORMAT = "auth ok: user={user} mechanism={mechanism} rip={rip} lip={lip} tls={tls}"
#: The ``event`` field of each (the name of the event in structured logs, see twisted_pop3ng.logs).
FAILED_EVENT = "auth.failed"
OK_EVENT = "auth.ok"

log = Logger(namespace=NAMESPACE)


def sanitize(name: Any) -> str:
    """A user name as it may appear in a log line (see the module's rules)."""
    if name is None:
        return ""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "surrogateescape")
    name = str(name)
    truncated = len(name) > MAX_NAME
    out = []
    for ch in name[:MAX_NAME]:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append("\\x%02x" % (code - 0xDC00))
        elif ch == "\\" or ch.isspace() or not ch.isprintable():
            out.append("\\x%02x" % code if code < 0x100 else "\\u%04x" % code)
        else:
            out.append(ch)
    return "".join(out) + ("..." if truncated else "")


def _fields(protocol: Any, user: Any, mechanism: Optional[str]) -> dict:
    try:
        rip, lip = policy.addresses(protocol)
    except Exception:
        rip = lip = None
    try:
        tls = "yes" if policy.is_secure(protocol) else "no"
    except Exception:
        tls = "no"
    return {"user": sanitize(user), "mechanism": sanitize(mechanism or "-"), "rip": rip or "-",
            "lip": lip or "-", "tls": tls}


def auth_failed(protocol: Any, user: Any, mechanism: Optional[str], reason: str) -> None:
    """Log one failed authentication (never raises: logging must not fail a login)."""
    try:
        log.info(FAILED_FORMAT, event=FAILED_EVENT, audit="auth failed", reason=reason,
                 **_fields(protocol, user, mechanism))
    except Exception:
        pass


def auth_ok(protocol: Any, user: Any, mechanism: Optional[str]) -> None:
    """Log one successful authentication (never raises)."""
    try:
        log.info(OK_FORMAT, event=OK_EVENT, audit="auth ok", **_fields(protocol, user, mechanism))
    except Exception:
        pass


def text(event: dict) -> str:
    """The stable text of an audit event (what the log file shows after the prefix)."""
    return (FAILED_FORMAT if event.get("audit") == "auth failed" else OK_FORMAT).format(**event)
