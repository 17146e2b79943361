"""Mail delivery into any store that provides
:class:`~twisted_pop3ng.interfaces.IMailboxDelivery`: the LMTP listener (:mod:`.lmtp`, RFC 2033)
and the local delivery agent ``pop3ng deliver`` (:mod:`.lda`).

The modules, from the bytes in to the store:

* :mod:`.body` -- a DATA body (dot-stuffed CRLF lines) to the stored form (LF lines), sans-I/O;
* :mod:`.spool` -- where a DATA body waits until every recipient has it, and the per-recipient
  source (trace headers + spooled body) handed to the store;
* :mod:`.trace` -- the ``Return-Path`` / ``Delivered-To`` / ``Received`` headers;
* :mod:`.recipients` -- ``RCPT TO`` address to maildrop user, by the ``--auth`` user database;
* :mod:`.outcome` -- what a store's exception means: the LMTP reply and the sysexits code;
* :mod:`.lmtp` -- the protocol and its factory; :mod:`.lda` -- ``pop3ng deliver``.

Until the 2026 storage release ``twisted_pop3ng.delivery`` was the module that is now
:mod:`twisted_pop3ng.fetch.delivery` (``pop3ng fetch``'s destinations); its names are still found
here, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

#: The names of the old ``twisted_pop3ng.delivery`` module, now in :mod:`twisted_pop3ng.fetch.delivery`.
_MOVED_NAMES = frozenset({"SPOOL_MEMORY", "DeliveryError", "MaildirDestination", "MboxDestination",
                          "MDADestination", "open_destination"})
_MOVED_TO = "twisted_pop3ng.fetch.delivery"


def __getattr__(name: str) -> Any:
    # Looked up by name when asked for, never imported here: the fetcher is a layer above this
    # package (setup.cfg's import contracts), and importing this package must stay cheap.
    if name in _MOVED_NAMES:
        warnings.warn("twisted_pop3ng.delivery.%s is deprecated: import it from %s"
                      % (name, _MOVED_TO), DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED_TO), name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
