"""``twistd pop3ng``: the command-line options (docs/server.rst lists them) and their checks.

Rules of this module: options are parsed and validated here (``postOptions``), nothing is started;
:mod:`.build` turns parsed options into a factory and listening services.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Dict, Iterable, List

from twisted.cred import strcred
from twisted.python import usage

from twisted_pop3ng._redact import redact_checker
from twisted_pop3ng.service import delivery_options, ops_options
from twisted_pop3ng.service import security_options as tap_security

DEFAULT_LISTEN = "tcp:1100:interface=127.0.0.1"
#: --busy-poll at most (10 ms: past that it is a spinning loop, not a wait).
MAX_BUSY_POLL_US = 10_000
#: --workers at most: each is a process with its own descriptors and memory; far more than the
#: cores only adds context switches.
MAX_WORKERS = 256
DEMO_TLS_LISTEN = "tcp:9950:interface=127.0.0.1"
DEMO_DIR = "pop3ng-demo"


class Options(usage.Options, strcred.AuthOptionMixin):
    synopsis = "[options]"
    longdesc = ("A POP3 server (RFC 1939, 2449) on maildirs. Plain POP3 on --listen "
                "(default %s), POP3S (TLS from the first byte) on --tls-listen." % DEFAULT_LISTEN)
    optFlags = [
        ["demo", None, "Run a self-contained demo under ./%s (user, password, sample mail, "
                       "self-signed certificate, plain and TLS listeners on 127.0.0.1)." % DEMO_DIR],
    ] + (tap_security.OPT_FLAGS + tap_security.abuse_options.OPT_FLAGS + delivery_options.OPT_FLAGS
       + ops_options.OPT_FLAGS)
    optParameters = [
        ["tls-cert", None, None, "PEM certificate chain, leaf first."],
        ["tls-key", None, None, "PEM private key of the certificate (default: in --tls-cert)."],
        ["mailbox", None, None, "Mailbox store: SCHEME:ARGUMENTS, e.g. maildir:/var/mail/{user}/Maildir "
                                "(--help-mailbox lists the schemes)."],
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
    ] + (tap_security.OPT_PARAMETERS + tap_security.abuse_options.OPT_PARAMETERS
         + delivery_options.OPT_PARAMETERS + ops_options.OPT_PARAMETERS)
    supportedInterfaces = None  # any checker twisted.cred knows
    #: Where --help-mailbox writes (strcred's --help-auth writes to ``authOutput``).
    mailbox_output: Any = sys.stdout

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []  # List[str]
        self["tls-listen"] = []  # List[str]
        self["trusted-networks"] = []  # List[network]
        self["lmtp-listen"] = []  # List[str]
        #: The command line these options were parsed from (``twistd pop3ng``'s own arguments):
        #: what ``--workers`` processes are started with.
        self.arguments: List[str] = []

    def parseOptions(self, options: Any = None) -> None:
        # Before any option handler (an --auth checker, say) imports the default reactor.
        from twisted_pop3ng.fastpath.reactor import install_default

        install_default()
        self.arguments = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_help_mailbox(self) -> None:
        """Show the --mailbox schemes available (Twisted plugins) and exit."""
        from twisted_pop3ng.mailbox import SCHEMES
        from twisted_pop3ng.mailbox.plugins import mailbox_store_factories

        self.mailbox_output.write(help_mailbox(mailbox_store_factories(), SCHEMES))
        raise SystemExit(0)

    def opt_auth(self, description: str) -> None:
        """Specify an authentication method for the server (--help-auth lists them), e.g.
        passwd-file:/etc/pop3ng/users (repeatable)."""
        try:
            super().opt_auth(description)
        except usage.UsageError as error:
            # strcred's words ("Unexpected error: ...") named neither the option nor its value.
            message = str(error)
            if message.startswith("Unexpected error: "):
                message = message[len("Unexpected error: "):]
            raise usage.UsageError("--auth %s: %s" % (redact_checker(description), message))

    def opt_listen(self, description: str) -> None:
        """Plain POP3 endpoint (repeatable), e.g. tcp:110 or tcp:1100:interface=127.0.0.1."""
        self["listen"].append(description)

    def opt_trusted_network(self, cidr: str) -> None:
        """Network (CIDR) allowed plaintext authentication without TLS (repeatable)."""
        tap_security.opt_trusted_network(self, cidr)

    def opt_lmtp_listen(self, description: str) -> None:
        """LMTP (RFC 2033) endpoint delivering into the --mailbox store (repeatable), e.g.
        tcp:24:interface=127.0.0.1 or unix:/run/pop3ng/lmtp; the main process only with --workers."""
        delivery_options.opt_lmtp_listen(self, description)

    def opt_tls_listen(self, description: str) -> None:
        """POP3S endpoint, TLS from the first byte (repeatable), e.g. tcp:995."""
        self["tls-listen"].append(description)

    def postOptions(self) -> None:
        _check_numbers(self, self.optParameters)
        if self["demo"]:
            self._demo_defaults()
        if not self["listen"] and not self["tls-listen"]:
            self["listen"].append(DEFAULT_LISTEN)
        from twisted.internet import reactor

        from twisted_pop3ng.service.endpoint_check import check_endpoint

        for option, descriptions in (("--listen", self["listen"]), ("--tls-listen", self["tls-listen"])):
            for desc in descriptions:
                if desc.split(":", 1)[0].lower() == "ssl":
                    raise usage.UsageError("%r: give a tcp: endpoint; TLS comes from --tls-listen with "
                                           "--tls-cert/--tls-key" % desc)
                check_endpoint(reactor, desc, option)
        if self["tls-listen"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-listen needs --tls-cert (and --tls-key)")
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")
        if self["tls-cert"]:
            from twisted_pop3ng.tls.server import ReloadableServerTLS, TLSConfigError

            try:
                self["tls"] = ReloadableServerTLS(self["tls-cert"], self["tls-key"])
            except TLSConfigError as error:
                raise usage.UsageError(str(error))
        else:
            self["tls"] = None
        if not self["mailbox"]:
            raise usage.UsageError("--mailbox is required, e.g. --mailbox maildir:/var/mail/{user}/Maildir")
        from twisted_pop3ng.mailbox import MailboxSpecError, redact_spec, store_from_spec

        shown = redact_spec(self["mailbox"])  # (a DSN may carry a password)
        try:
            self["store"] = store_from_spec(self["mailbox"])
        except MailboxSpecError as error:
            raise usage.UsageError("--mailbox %s: %s; --help-mailbox lists the schemes" % (shown, error))
        except ValueError as error:
            raise usage.UsageError("--mailbox %s: %s" % (shown, error))
        if not self.get("credCheckers"):
            raise usage.UsageError("give at least one --auth, e.g. --auth passwd-file:/etc/pop3ng/users")
        if self["idle-timeout"] < 600:
            sys.stderr.write("warning: --idle-timeout below 600 s violates RFC 1939 section 3\n")
        for checker in self["credCheckers"]:
            _bytes_memory_checker(checker)
        if not 1 <= self["workers"] <= MAX_WORKERS:
            raise usage.UsageError("--workers must be between 1 and %d" % MAX_WORKERS)
        if not 0 <= self["busy-poll"] <= MAX_BUSY_POLL_US:
            raise usage.UsageError("--busy-poll must be between 0 and %d microseconds" % MAX_BUSY_POLL_US)
        tap_security.post_options(self)
        delivery_options.post_options(self)
        ops_options.post_options(self)

    def _demo_defaults(self) -> None:
        from twisted_pop3ng.service import demo

        try:
            info = demo.prepare(os.path.abspath(DEMO_DIR))
        except demo.DemoError as error:
            raise usage.UsageError("--demo: %s" % (error,))
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


def _check_numbers(options: Any, parameters: Iterable[Any]) -> None:
    """Every numeric option is a finite number, 0 or more: none of them means anything negative,
    and float("nan") or "inf" parse as floats but would reach timers and comparisons (a NaN
    timeout, say, fails every "value > 0" test and every "value <= 0" one alike)."""
    for entry in parameters:
        name = entry[0]
        value = options.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise usage.UsageError("--%s must be a finite number, not %s" % (name, value))
        if value < 0:
            raise usage.UsageError("--%s must not be negative, not %s" % (name, value))


def help_mailbox(factories: Dict[str, Any], legacy: Iterable[str] = ()) -> str:
    """The text of ``--help-mailbox``: each plugin's scheme with its help, wrapped, then the
    schemes only the deprecated ``mailbox.SCHEMES`` table (``legacy``) provides."""
    import textwrap

    lines = ["Usage: --mailbox SCHEME:ARGUMENTS", "", "Schemes (Twisted plugins providing "
             "twisted_pop3ng.interfaces.IMailboxStoreFactory):", ""]
    for scheme in sorted(factories):
        lines.append("  %s" % scheme)
        lines.extend(textwrap.wrap(" ".join(str(factories[scheme].help).split()), width=76,
                                   initial_indent="      ", subsequent_indent="      "))
    for scheme in sorted(set(legacy) - set(factories)):
        lines.append("  %s" % scheme)
        lines.append("      (from twisted_pop3ng.mailbox.SCHEMES, which is deprecated)")
    return "\n".join(lines) + "\n"


def _bytes_memory_checker(checker: Any) -> None:
    """twisted's ``memory:`` checker stores str keys on Python 3; credentials carry bytes."""
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {
            (k.encode("utf-8") if isinstance(k, str) else k): (v.encode("utf-8") if isinstance(v, str) else v)
            for k, v in checker.users.items()
        }
