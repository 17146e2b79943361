"""Deprecated: this module moved to :mod:`twisted_pop3ng.fetch.delivery`; import from there."""

import warnings

from twisted_pop3ng.fetch.delivery import (  # noqa: F401
    SPOOL_MEMORY,
    DeliveryError,
    MaildirDestination,
    MboxDestination,
    MDADestination,
    open_destination,
)

__all__ = [
    'SPOOL_MEMORY', 'DeliveryError', 'MaildirDestination', 'MboxDestination', 'MDADestination',
    'open_destination',
]

warnings.warn("twisted_pop3ng.delivery is deprecated: import twisted_pop3ng.fetch.delivery",
              DeprecationWarning, stacklevel=2)
