"""``twistd pop3ng``: the service that parsed options describe -- the factory, the listeners, the
worker processes. The only place that wires the fast path in (:mod:`twisted_pop3ng.fastpath`).
"""

from __future__ import annotations

from typing import Any

from twisted.application import service

from twisted_pop3ng.service import security_options as tap_security
from twisted_pop3ng.service.options import Options


class _Listeners(service.MultiService):
    """A port that cannot be bound (in use, no such address, out of range) ends twistd with a clear
    message and a non-zero exit, instead of a logged traceback and a server without that port."""

    def privilegedStartService(self) -> None:
        from twisted.internet.error import CannotListenError

        service.Service.privilegedStartService(self)
        for listener in self:
            try:
                listener.privilegedStartService()
            except (CannotListenError, OverflowError, OSError) as error:
                raise SystemExit("twistd pop3ng: cannot listen on %s: %s"
                                 % (getattr(listener, "description", "?"), error))


def _listener(listener: Any, description: str, parent: service.MultiService) -> None:
    listener._raiseSynchronously = True  # fail in privilegedStartService, not in a log line
    listener.description = description
    listener.setServiceParent(parent)


#: Listen backlog when a tcp: endpoint names none. Twisted's default (50) makes a burst of
#: connections wait for SYN-ACK retransmissions (1 s, 3 s, ...) once 50 are pending accept.
DEFAULT_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """``description`` with ``backlog=DEFAULT_BACKLOG`` added to a tcp/tcp6 endpoint without one."""
    kind = description.split(":", 1)[0].lower()
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return "%s:backlog=%d" % (description, DEFAULT_BACKLOG)
    return description


def make_factory(options: Options) -> Any:
    """The POP3 server factory the options describe (also used by each ``--workers`` process)."""
    from twisted.cred.portal import Portal
    from twisted.internet import reactor

    from twisted_pop3ng.server.realm import MailboxRealm
    from twisted_pop3ng.server.protocol import POP3ServerFactory, ServerConfig

    config = ServerConfig(
        login_timeout=options["login-timeout"],
        idle_timeout=options["idle-timeout"],
        auth_failure_delay=options["auth-failure-delay"],
        max_bad_commands=options["max-bad-commands"],
    )
    portal = Portal(MailboxRealm(options["store"]), options["credCheckers"])
    factory = POP3ServerFactory(portal, config)
    factory.tls = options["tls"]
    tap_security.configure(options, factory, reactor)
    return factory


def configure_reactor(options: Options, reactor: Any) -> None:
    """Apply --busy-poll to pop3ng's reactor (another reactor has no such setting)."""
    from twisted_pop3ng.fastpath.reactor import LeanEPollReactor

    if isinstance(reactor, LeanEPollReactor):
        reactor.busy_poll = options["busy-poll"] / 1e6


def makeService(options: Options) -> service.MultiService:
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet import endpoints, reactor
    from twisted_pop3ng.fastpath.port import LeanTCPReactor
    from twisted_pop3ng.fastpath.tls import tls_factory

    configure_reactor(options, reactor)
    factory = make_factory(options)
    lean = LeanTCPReactor(reactor)  # tcp: endpoints listen with server_port.LeanPort
    top = _Listeners()
    for desc in options["listen"]:
        endpoint = endpoints.serverFromString(lean, with_backlog(desc))
        _listener(StreamServerEndpointService(endpoint, factory), desc, top)
    for desc in options["tls-listen"]:
        endpoint = endpoints.serverFromString(lean, with_backlog(desc))
        _listener(StreamServerEndpointService(endpoint, tls_factory(options["tls"], factory)), desc, top)
    if options["workers"] > 1:
        from twisted_pop3ng.service.workers import WorkerPool

        WorkerPool(options["workers"] - 1, list(top)).setServiceParent(top)
    if options.get("demo-info") is not None:
        from twisted_pop3ng.service import demo

        reactor.callWhenRunning(demo.announce, options["demo-info"], options["listen"],
                                options["tls-listen"])
    return top
