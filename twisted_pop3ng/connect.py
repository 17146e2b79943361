"""Deprecated: this module moved to :mod:`twisted_pop3ng.client.connect`; import from there."""

import warnings

from twisted_pop3ng.client.connect import (  # noqa: F401
    POP3URL,
    parse_url,
    trust_root,
    tls_options,
    connect,
)

__all__ = [
    'POP3URL', 'parse_url', 'trust_root', 'tls_options', 'connect',
]

warnings.warn("twisted_pop3ng.connect is deprecated: import twisted_pop3ng.client.connect",
              DeprecationWarning, stacklevel=2)
