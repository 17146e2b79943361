"""systemd readiness (``Type=notify``): ``READY=1`` once every listener listens, ``STOPPING=1`` at shutdown.

The ``sd_notify(3)`` protocol is one datagram of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket
named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace): a few lines of the
standard library, so no dependency. Without ``$NOTIFY_SOCKET`` (not run by systemd) nothing is
sent. Readiness waits for the ``listening`` Deferred of every listening service under the
``twistd`` service tree (see :class:`.build.ListeningService`), so a unit ordered ``After=`` this
one starts only once POP3 connections are accepted.
"""

from __future__ import annotations

import os
import socket
from typing import Any, List, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

_log = Logger()


def notify_socket() -> Optional[str]:
    """The address ``$NOTIFY_SOCKET`` names (``@`` made a leading NUL), or None."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return None
    return "\0" + address[1:] if address[0] == "@" else address


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when there is nobody to tell."""
    address = notify_socket()
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode("utf-8"), address)
        except OSError as error:
            _log.warn("cannot notify systemd at {address!r}: {error}", address=address, error=error)
            return False
    return True


def explain_endpoint_error(description: str, error: Exception) -> Optional[str]:
    """A message for the administrator when Twisted could not make the ``systemd:`` endpoint
    ``description`` (None for other endpoints and errors).

    Twisted's parser raises a bare ``KeyError``/``IndexError`` naming only the socket's name or
    index (``'pop3'``) when systemd passed no such socket. (What was passed cannot be shown: Twisted
    takes ``LISTEN_FDS`` out of the environment when it reads it.)"""
    kind, _, rest = description.partition(":")
    if kind.lower() != "systemd":
        return None
    fields = dict(part.partition("=")[::2] for part in rest.split(":"))
    cause = ("is the service started through its .socket unit(s), and is this twistd the main "
             "process (no wrapper script that forks)?")
    if isinstance(error, KeyError) and "name" in fields:
        return ("systemd passed no socket named %r: give it with FileDescriptorName=%s in the .socket "
                "unit; %s" % (fields["name"], fields["name"], cause))
    if isinstance(error, IndexError) and "index" in fields:
        return "systemd passed no socket number %s (they count from 0): %s" % (fields["index"], cause)
    return None


def _listening(parent: Any) -> List[defer.Deferred]:
    """The ``listening`` Deferreds of the services under ``parent``, at any depth."""
    found: List[defer.Deferred] = []
    for child in parent:
        listening = getattr(child, "listening", None)
        if isinstance(listening, defer.Deferred):
            found.append(listening)
        if isinstance(child, service.MultiService):
            found += _listening(child)
    return found


def notify_when_listening(top: service.MultiService, reactor: Any) -> defer.Deferred:
    """Call when the reactor runs: ``READY=1`` once each listener listens (nothing if one failed:
    twistd is then on its way out, and systemd reports the failed start); ``STOPPING=1`` when the
    reactor shuts down."""
    reactor.addSystemEventTrigger("before", "shutdown", notify, "STOPPING=1")
    # (gatherResults' callbacks pass each result on: the services' own chains are unchanged. A
    # listener that failed later than at once has logged why and holds None.)
    gathered = defer.gatherResults(_listening(top), consumeErrors=True)

    def ready(ports: List[Any]) -> None:
        if any(port is None for port in ports):
            _log.error("a listener failed: not telling systemd READY=1")
            return
        notify("READY=1\nSTATUS=POP3 on %d listening socket%s\nMAINPID=%d"
               % (len(ports), "" if len(ports) == 1 else "s", os.getpid()))

    def not_ready(reason: Any) -> None:
        _log.error("a listener failed: not telling systemd READY=1")

    return gathered.addCallbacks(ready, not_ready)
