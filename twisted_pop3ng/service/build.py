"""``twistd pop3ng``: the service that parsed options describe -- the factory, the listeners, the
worker processes. The only place that wires the fast path in (:mod:`twisted_pop3ng.fastpath`).
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_pop3ng.service import delivery_options, ops_options, stdlib_logging, systemd
from twisted_pop3ng.service import security_options as tap_security
from twisted_pop3ng.service.options import Options

_log = Logger()


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


class ListeningService(service.Service):
    """Listens on ``endpoint`` with ``factory`` and keeps the ``IListeningPort`` (:attr:`port`).

    What ``strports.service(description, factory, reactor=...)`` builds, minus its two private
    attributes: an endpoint that fails at once raises from ``privilegedStartService`` (so
    :class:`_Listeners` can end twistd with a message), and ``--workers`` reads the port it must
    share from :attr:`port`.
    """

    def __init__(self, endpoint: Any, factory: Any, description: str = "") -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        #: The IListeningPort once listening, else None.
        self.port: Any = None
        #: ``endpoint.listen``'s Deferred (None before listening); fires with :attr:`port`.
        self.listening: Optional[defer.Deferred] = None

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)
        self._listen()

    def startService(self) -> None:
        service.Service.startService(self)
        if self.listening is None:
            self._listen()

    def _listen(self) -> None:
        failed_now: List[Failure] = []
        at_once = [True]

        def listened(port: Any) -> Any:
            self.port = port
            return port

        def failed(reason: Failure) -> None:
            if at_once[0]:
                failed_now.append(reason)
            elif not reason.check(defer.CancelledError):
                _log.failure("cannot listen on {description}", reason,
                             description=self.description)

        self.listening = self.endpoint.listen(self.factory).addCallbacks(listened, failed)
        at_once[0] = False
        if failed_now:
            failed_now[0].raiseException()

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        if self.listening is None:
            return defer.succeed(None)
        self.listening.cancel()  # an endpoint still on its way to listening gives up
        return self.listening.addCallback(
            lambda port: None if port is None else port.stopListening())


#: The ``--listen``/``--tls-listen`` prefix (Twisted's endpoint name) for a listener behind a
#: load balancer that sends the PROXY protocol header.
PROXY_PREFIX = "haproxy:"


def _listener(reactor: Any, description: str, factory: Any, parent: service.MultiService) -> None:
    """Listen on ``description`` (with :func:`with_backlog`) under ``parent``; a ``haproxy:``
    description listens on the endpoint after the prefix, through
    :class:`~twisted_pop3ng.server.proxy.ProxyHeaderFactory` (not Twisted's wrapper, which
    connects the protocol before the header told who the client is)."""
    from twisted.internet import endpoints

    inner = description
    if description.lower().startswith(PROXY_PREFIX):
        from twisted_pop3ng.server.proxy import ProxyHeaderFactory

        inner = description[len(PROXY_PREFIX):]
        factory = ProxyHeaderFactory(factory)
    endpoint = endpoints.serverFromString(reactor, with_backlog(inner))
    ListeningService(endpoint, factory, description).setServiceParent(parent)


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
    from twisted_pop3ng.fastpath import send as fast_send

    config = ServerConfig(
        login_timeout=options["login-timeout"],
        idle_timeout=options["idle-timeout"],
        auth_failure_delay=options["auth-failure-delay"],
        max_bad_commands=options["max-bad-commands"],
        security=tap_security.security_config(options),
    )
    portal = Portal(MailboxRealm(options["store"]), options["credCheckers"])
    # The fast path's strategies (None, so the stock ones, if its probes failed or
    # POP3NG_STOCK_TWISTED=1).
    factory = POP3ServerFactory(portal, config, sender=fast_send.sender(),
                                connection_info=fast_send.connection_info(),
                                **tap_security.factory_arguments(options))
    ops_options.configure_factory(options, factory)  # (each --workers process too)
    tap_security.watch_tls(options, reactor)
    stdlib_logging.install()
    return factory


def configure_reactor(options: Options, reactor: Any) -> None:
    """Apply --busy-poll to pop3ng's reactor (another reactor has no such setting)."""
    from twisted_pop3ng.fastpath.reactor import LeanEPollReactor

    if isinstance(reactor, LeanEPollReactor):
        reactor.busy_poll = options["busy-poll"] / 1e6


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor
    from twisted_pop3ng.fastpath.port import LeanTCPReactor
    from twisted_pop3ng.fastpath.tls import tls_factory

    configure_reactor(options, reactor)
    factory = make_factory(options)
    lean = LeanTCPReactor(reactor)  # tcp: endpoints listen with server_port.LeanPort
    top = _Listeners()
    for desc in options["listen"]:
        _listener(lean, desc, factory, top)
    for desc in options["tls-listen"]:
        _listener(lean, desc, tls_factory(options["tls"], factory), top)
    delivery_options.add_services(options, factory, top)
    ops_options.add_services(options, factory, top)
    if options["workers"] > 1:
        from twisted_pop3ng.service.workers import WorkerPool

        # The workers share the POP3 ports only: LMTP and metrics are served by this process.
        pop3_listeners = [child for child in top if isinstance(child, ListeningService)]
        WorkerPool(options["workers"] - 1, pop3_listeners, options.arguments).setServiceParent(top)
    if systemd.notify_socket() is not None:  # run by systemd (Type=notify): READY=1 once listening
        reactor.callWhenRunning(systemd.notify_when_listening, top, reactor)
    if options.get("demo-info") is not None:
        from twisted_pop3ng.service import demo

        reactor.callWhenRunning(demo.announce, options["demo-info"], options["listen"],
                                options["tls-listen"])
    return top
