"""Deprecated: this module moved to :mod:`twisted_pop3ng.server.realm`; import from there."""

import warnings

from twisted_pop3ng.server.realm import (  # noqa: F401
    MailboxRealm,
)

__all__ = [
    'MailboxRealm',
]

warnings.warn("twisted_pop3ng.realm is deprecated: import twisted_pop3ng.server.realm",
              DeprecationWarning, stacklevel=2)
