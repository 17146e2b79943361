"""``twistd pop3ng``'s delivery options: declared here, checked in :func:`post_options`, started by
:func:`add_services` (called by :mod:`.build`).

``--lmtp-listen ENDPOINT`` (repeatable) runs the LMTP listener (:mod:`twisted_pop3ng.delivery.lmtp`)
into the ``--mailbox`` store, for the users the ``--auth`` checkers know (docs/delivery.rst).
"""

from __future__ import annotations

import os
from typing import Any, List

from twisted.python import usage

from twisted_pop3ng.delivery import lmtp

OPT_FLAGS: List[List[Any]] = []
OPT_PARAMETERS: List[List[Any]] = [
    ["lmtp-max-size", None, lmtp.DEFAULT_MAX_SIZE, "Largest message LMTP accepts, in octets.", int],
    ["lmtp-max-recipients", None, lmtp.DEFAULT_MAX_RECIPIENTS, "Recipients per LMTP transaction.", int],
    ["lmtp-timeout", None, lmtp.DEFAULT_TIMEOUT, "Seconds an LMTP client may stay silent.", float],
    ["lmtp-max-connections", None, lmtp.DEFAULT_MAX_CONNECTIONS,
     "LMTP connections open at once; past it a new one gets 421 (0: no limit).", int],
    ["lmtp-threads", None, lmtp.DEFAULT_THREADS, "Threads storing LMTP deliveries (at most this many "
                                                 "messages are written at once).", int],
    ["lmtp-trace-headers", None, "yes", "yes: add Return-Path, Delivered-To and Received to delivered "
                                        "mail; no: store the DATA byte for byte."],
    ["lmtp-spool-dir", None, None, "Directory for message bodies over 1 MiB while they are delivered "
                                   "(default: the system's temporary directory)."],
]


def opt_lmtp_listen(options: Any, description: str) -> None:
    """LMTP (RFC 2033) endpoint delivering into the --mailbox store, e.g. tcp:24:interface=127.0.0.1
    or unix:/run/pop3ng/lmtp (repeatable)."""
    options["lmtp-listen"].append(description)


def post_options(options: Any) -> None:
    """Check and convert this module's options (raise ``usage.UsageError``)."""
    if not options["lmtp-listen"]:
        given = sorted({a.split("=", 1)[0] for a in getattr(options, "arguments", [])
                        if a.startswith("--lmtp-")})
        if given:  # (they were ignored: an admin who forgot --lmtp-listen got no listener)
            raise usage.UsageError("%s: only with --lmtp-listen ENDPOINT (no LMTP listener was asked "
                                   "for)" % ", ".join(given))
        return
    from twisted.internet import reactor

    from twisted_pop3ng.delivery.recipients import RecipientResolver
    from twisted_pop3ng.service.endpoint_check import check_endpoint
    from twisted_pop3ng.interfaces import IMailboxDelivery

    for description in options["lmtp-listen"]:
        check_endpoint(reactor, description, "--lmtp-listen")
    if not IMailboxDelivery.providedBy(options["store"]):
        raise usage.UsageError("--lmtp-listen: the --mailbox store %s cannot take deliveries"
                               % (options["mailbox"],))
    try:
        options["lmtp-resolver"] = RecipientResolver.from_checkers(options["credCheckers"])
    except ValueError as error:
        raise usage.UsageError("--lmtp-listen: %s" % (error,))
    trace = str(options["lmtp-trace-headers"]).lower()
    if trace not in ("yes", "no"):
        raise usage.UsageError("--lmtp-trace-headers must be yes or no")
    for name, least in (("lmtp-max-size", 1), ("lmtp-max-recipients", 1), ("lmtp-threads", 1)):
        if options[name] < least:
            raise usage.UsageError("--%s must be at least %d" % (name, least))
    if options["lmtp-timeout"] <= 0:
        raise usage.UsageError("--lmtp-timeout must be positive")
    spool = options["lmtp-spool-dir"]
    if spool is not None and not (os.path.isdir(spool) and os.access(spool, os.W_OK | os.X_OK)):
        # (checked now: else every message over 1 MiB got a 451 from the first delivery on)
        raise usage.UsageError("--lmtp-spool-dir %s: not a directory this server can write in"
                               % (spool,))
    options["lmtp-config"] = lmtp.LMTPConfig(
        max_size=options["lmtp-max-size"], max_recipients=options["lmtp-max-recipients"],
        timeout=options["lmtp-timeout"], trace_headers=trace == "yes",
        max_connections=options["lmtp-max-connections"],
        spool_dir=options["lmtp-spool-dir"])


def add_services(options: Any, factory: Any, parent: Any) -> None:
    """Start this module's services under ``parent`` (a MultiService) for the POP3 ``factory``."""
    if not options.get("lmtp-listen"):
        return
    from twisted.application import strports
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(minthreads=0, maxthreads=options["lmtp-threads"], name="pop3ng-lmtp")
    # Added first, so stopped last: the listeners close before the deliveries under way finish.
    lmtp.ThreadPoolService(pool).setServiceParent(parent)
    lmtp_factory = lmtp.LMTPFactory(options["store"], options["lmtp-resolver"], pool,
                                    options["lmtp-config"])
    for description in options["lmtp-listen"]:
        listener = strports.service(description, lmtp_factory)  # raises at once if it cannot listen
        listener.description = "LMTP " + description  # type: ignore[attr-defined]  # (named by twistd's "cannot listen" message)
        listener.setServiceParent(parent)
