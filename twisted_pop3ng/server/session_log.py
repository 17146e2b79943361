"""The session log: an event when a connection opens and one summary event when it ends.

Rules of this module:

* both events are opt-in (``ServerConfig.log_sessions``, ``twistd pop3ng --log-sessions``): a
  log observer formatting a line costs about as much as a whole short session (see
  docs/operations.rst), so a server that does not want them pays nothing but a flag test;
* they are ``twisted.logger`` events under :data:`NAMESPACE` with an ``event`` field naming them
  (:data:`CONNECT`, :data:`END`) and every value a structured field too; the text is for people,
  the fields for machines (``twisted_pop3ng.logs.json_observer``);
* nothing secret is logged, and the user name is the sanitized one of :mod:`.audit`;
* logging never fails a session: an error here is swallowed.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from twisted_pop3ng.server import audit, policy

NAMESPACE = "pop3ng.session"
CONNECT = "session.connect"
END = "session.end"
CONNECT_FORMAT = "connection: rip={rip} lip={lip} listener={listener}"
END_FORMAT = ("session: user={user} rip={rip} listener={listener} tls={tls} commands={commands} "
              "retrieved={retrieved} bytes={bytes} deleted={deleted} duration={duration} end={end}")

log = Logger(namespace=NAMESPACE)


def _addresses(protocol: Any) -> Any:
    try:
        rip, lip = policy.addresses(protocol)
    except Exception:
        rip = lip = None
    return rip or "-", lip or "-"


def connected(protocol: Any) -> None:
    """Log the connection of ``protocol`` (never raises)."""
    try:
        rip, lip = _addresses(protocol)
        log.info(CONNECT_FORMAT, event=CONNECT, rip=rip, lip=lip,
                 listener="tls" if protocol.session.tls_listener else "plain")
    except Exception:
        pass


def ended(protocol: Any, how: str) -> None:
    """Log the summary of ``protocol``'s session, which ended ``how`` (never raises)."""
    try:
        session = protocol.session
        summary = session.summary
        rip, lip = _addresses(protocol)
        tls = "stls" if summary.stls else "yes" if session.tls_listener else "no"
        log.info(END_FORMAT, event=END, user=audit.sanitize(session.admitted_user), rip=rip,
                 lip=lip, listener="tls" if session.tls_listener else "plain", tls=tls,
                 commands=summary.commands, retrieved=summary.retrieved, bytes=summary.bytes,
                 deleted=summary.deleted,
                 duration=round(max(protocol.clock.seconds() - summary.started, 0.0), 3), end=how)
    except Exception:
        pass
