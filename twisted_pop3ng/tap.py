"""``twistd pop3ng``: command-line options and the service they build (DESIGN.md §3)."""

from __future__ import annotations

import os
import sys
from typing import Any, List

from twisted.application import service, strports
from twisted.cred import strcred
from twisted.python import usage

from . import tap_security

DEFAULT_LISTEN = "tcp:1100:interface=127.0.0.1"
#: --busy-poll at most (10 ms: past that it is a spinning loop, not a wait).
MAX_BUSY_POLL_US = 10_000
DEMO_TLS_LISTEN = "tcp:9950:interface=127.0.0.1"
DEMO_DIR = "pop3ng-demo"


class Options(usage.Options, strcred.AuthOptionMixin):
    synopsis = "[options]"
    longdesc = ("A POP3 server (RFC 1939, 2449) on maildirs. Plain POP3 on --listen "
                "(default %s), POP3S (TLS from the first byte) on --tls-listen." % DEFAULT_LISTEN)
    optFlags = [
        ["demo", None, "Run a self-contained demo under ./%s (user, password, sample mail, "
                       "self-signed certificate, plain and TLS listeners on 127.0.0.1)." % DEMO_DIR],
    ] + tap_security.OPT_FLAGS
    optParameters = [
        ["tls-cert", None, None, "PEM certificate chain, leaf first."],
        ["tls-key", None, None, "PEM private key of the certificate (default: in --tls-cert)."],
        ["mailbox", None, None, "Mailbox store: maildir:TEMPLATE (e.g. maildir:/var/mail/{user}/Maildir)."],
        ["idle-timeout", None, 600.0, "Seconds of inactivity after login before disconnecting "
                                      "(RFC 1939 asks for at least 600).", float],
        ["login-timeout", None, 60.0, "Seconds of inactivity before login.", float],
        ["auth-failure-delay", None, 1.0, "Seconds before answering a failed login.", float],
        ["max-bad-commands", None, 20, "Bad commands tolerated before disconnecting.", int],
        ["workers", None, 1, "Processes serving the listening sockets (the extra ones are spawned and "
                             "share the ports; maildrop locks hold across them).", int],
        ["busy-poll", None, 50.0, "Longest time in microseconds the reactor keeps polling before it "
                                  "sleeps, adapted to the traffic (0: off; pop3ng's own reactor only).",
         float],
    ] + tap_security.OPT_PARAMETERS
    supportedInterfaces = None  # any checker twisted.cred knows

    def __init__(self) -> None:
        super().__init__()
        self["listen"]: List[str] = []
        self["tls-listen"]: List[str] = []
        self["trusted-networks"]: List[Any] = []

    def parseOptions(self, options: Any = None) -> None:
        # Before any option handler (an --auth checker, say) imports the default reactor.
        from .reactor import install_default

        install_default()
        super().parseOptions(options)

    def opt_listen(self, description: str) -> None:
        """Plain POP3 endpoint (repeatable), e.g. tcp:110 or tcp:1100:interface=127.0.0.1."""
        self["listen"].append(description)

    def opt_trusted_network(self, cidr: str) -> None:
        """Network (CIDR) allowed plaintext authentication without TLS (repeatable)."""
        tap_security.opt_trusted_network(self, cidr)

    def opt_tls_listen(self, description: str) -> None:
        """POP3S endpoint, TLS from the first byte (repeatable), e.g. tcp:995."""
        self["tls-listen"].append(description)

    def postOptions(self) -> None:
        if self["demo"]:
            self._demo_defaults()
        if not self["listen"] and not self["tls-listen"]:
            self["listen"].append(DEFAULT_LISTEN)
        from twisted.internet import reactor

        for desc in self["listen"] + self["tls-listen"]:
            if desc.split(":", 1)[0].lower() == "ssl":
                raise usage.UsageError("%r: give a tcp: endpoint; TLS comes from --tls-listen with "
                                       "--tls-cert/--tls-key" % desc)
            try:
                strports.endpoints.serverFromString(reactor, desc)
            except Exception as error:
                raise usage.UsageError("bad endpoint %r: %s" % (desc, error))
        if self["tls-listen"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-listen needs --tls-cert (and --tls-key)")
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")
        if self["tls-cert"]:
            from .tls import ReloadableServerTLS, TLSConfigError

            try:
                self["tls"] = ReloadableServerTLS(self["tls-cert"], self["tls-key"])
            except TLSConfigError as error:
                raise usage.UsageError(str(error))
        else:
            self["tls"] = None
        if not self["mailbox"]:
            raise usage.UsageError("--mailbox is required, e.g. --mailbox maildir:/var/mail/{user}/Maildir")
        from .mailbox import MailboxSpecError, store_from_spec

        try:
            self["store"] = store_from_spec(self["mailbox"])
        except (MailboxSpecError, ValueError) as error:
            raise usage.UsageError("--mailbox %s: %s" % (self["mailbox"], error))
        if not self.get("credCheckers"):
            raise usage.UsageError("give at least one --auth, e.g. --auth passwd-file:/etc/pop3ng/users")
        if self["idle-timeout"] < 600:
            sys.stderr.write("warning: --idle-timeout below 600 s violates RFC 1939 section 3\n")
        for checker in self["credCheckers"]:
            _bytes_memory_checker(checker)
        if self["workers"] < 1:
            raise usage.UsageError("--workers must be at least 1")
        if not 0 <= self["busy-poll"] <= MAX_BUSY_POLL_US:
            raise usage.UsageError("--busy-poll must be between 0 and %d microseconds" % MAX_BUSY_POLL_US)
        tap_security.post_options(self)

    def _demo_defaults(self) -> None:
        from . import demo

        info = demo.prepare(os.path.abspath(DEMO_DIR))
        self["demo-info"] = info
        if not self["listen"]:
            self["listen"].append(DEFAULT_LISTEN)
        if not self["tls-listen"]:
            self["tls-listen"].append(DEMO_TLS_LISTEN)
        if not self["tls-cert"]:
            self["tls-cert"], self["tls-key"] = info.cert, info.key
        if not self["mailbox"]:
            self["mailbox"] = "maildir:" + info.maildir_template
        if not self.get("credCheckers"):
            self.opt_auth("passwd-file:" + info.passwd_file)


def _bytes_memory_checker(checker: Any) -> None:
    """twisted's ``memory:`` checker stores str keys on Python 3; credentials carry bytes."""
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {
            (k.encode("utf-8") if isinstance(k, str) else k): (v.encode("utf-8") if isinstance(v, str) else v)
            for k, v in checker.users.items()
        }


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

    from .realm import MailboxRealm
    from .server import POP3ServerFactory, ServerConfig

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
    from .reactor import LeanEPollReactor

    if isinstance(reactor, LeanEPollReactor):
        reactor.busy_poll = options["busy-poll"] / 1e6


def makeService(options: Options) -> service.MultiService:
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet import endpoints, reactor
    from .server_port import LeanTCPReactor
    from .tls import tls_factory

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
        from .workers import WorkerPool

        WorkerPool(options["workers"] - 1, list(top)).setServiceParent(top)
    if options.get("demo-info") is not None:
        from . import demo

        reactor.callWhenRunning(demo.announce, options["demo-info"], options["listen"],
                                options["tls-listen"])
    return top
