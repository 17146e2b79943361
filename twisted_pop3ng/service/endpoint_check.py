"""An endpoint option's value checked before anything listens, with a message an administrator
can act on (``--listen``, ``--tls-listen``, ``--lmtp-listen``, ``--metrics``).

Twisted's parser accepts ``tcp:99999`` (the port is only refused by ``bind``, after the other
listeners have started) and answers ``tcp:abc`` with ``int()``'s words; a ``systemd:`` endpoint
without its socket gets a bare ``KeyError`` (:func:`.systemd.explain_endpoint_error`).

Rules of this module: it parses and reports; it never listens.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.python import usage

from twisted_pop3ng.service.systemd import explain_endpoint_error

#: Endpoint types whose first argument (or ``port=``) is a TCP port.
_TCP_KINDS = ("tcp", "tcp6", "ssl")


def _fields(rest: str) -> List[str]:
    """The colon-separated fields of an endpoint description (``\\:`` escapes a colon, as in an
    IPv6 ``interface=``)."""
    fields, current, escaped = [], [], False
    for char in rest:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def tcp_port_problem(description: str) -> Optional[str]:
    """What is wrong with a TCP endpoint's port, or None (also for other kinds of endpoint)."""
    kind, sep, rest = description.partition(":")
    if kind.strip().lower() not in _TCP_KINDS or not sep:
        return None
    fields = _fields(rest)
    named = [f.partition("=")[2] for f in fields if f.partition("=")[0].strip() == "port"]
    positional = [f for f in fields if "=" not in f]
    port = named[0] if named else (positional[0] if positional else None)
    if port is None:
        return "no port: give one, e.g. %s:110" % kind
    port = port.strip()
    if not port.isdigit() or int(port) > 65535:
        return "the port must be a number from 0 to 65535, not %r" % (port,)
    return None


def check_endpoint(reactor: Any, description: str, option: str) -> Any:
    """The server endpoint ``description`` names, or a ``UsageError`` naming ``option``."""
    from twisted.internet import endpoints

    problem = tcp_port_problem(description)
    if problem is not None:
        raise usage.UsageError("%s %r: %s" % (option, description, problem))
    try:
        return endpoints.serverFromString(reactor, description)
    except Exception as error:
        raise usage.UsageError("%s: bad endpoint %r: %s"
                               % (option, description, explain_endpoint_error(description, error) or error))
