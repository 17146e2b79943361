"""``pop3ng fetch``: move (or copy) mail from a POP3 server into a Maildir, an mbox or an MDA,
exactly once.

Rules of this package: it is an application of :mod:`twisted_pop3ng.client` and imports nothing of
the server, the mailbox stores or the fast path (an import-linter contract holds this);
:mod:`.run` is the exactly-once fetch, :mod:`.state` the UIDL state file (and its journal),
:mod:`.delivery` the durable destinations, :mod:`.forward` SMTP/LMTP forwarding, :mod:`.cli` the
command line, :mod:`.exits` the exit codes. The config file and its many accounts:
:mod:`.config` (reading and checking), :mod:`.example`, :mod:`.credentials` and :mod:`.oauth`
(secrets), :mod:`.accounts` (running them), :mod:`.multi` (``--config`` on the command line),
:mod:`.daemon` (``--daemon``), :mod:`.progress` (the bar, summaries, ``--json``).
"""

from twisted_pop3ng.fetch.cli import (EXIT_AUTH, EXIT_CONNECTION, EXIT_DELIVERY, EXIT_ERROR,
                                      EXIT_OK, EXIT_TLS, EXIT_TRY_LATER, EXIT_USAGE, classify_exit,
                                      main)
from twisted_pop3ng.fetch.run import FetchBusy, FetchOptions, FetchResult, fetch

__all__ = ["fetch", "FetchOptions", "FetchResult", "FetchBusy", "classify_exit", "main",
           "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_AUTH", "EXIT_TLS", "EXIT_CONNECTION",
           "EXIT_DELIVERY", "EXIT_TRY_LATER"]
