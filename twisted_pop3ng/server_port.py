"""Deprecated: this module moved to :mod:`twisted_pop3ng.fastpath.port`; import from there."""

import warnings

from twisted_pop3ng.fastpath.port import (  # noqa: F401
    LeanServer,
    SERVER_TRANSPORTS,
    LeanPort,
    LeanTCPReactor,
)

__all__ = [
    'LeanServer', 'SERVER_TRANSPORTS', 'LeanPort', 'LeanTCPReactor',
]

warnings.warn("twisted_pop3ng.server_port is deprecated: import twisted_pop3ng.fastpath.port",
              DeprecationWarning, stacklevel=2)
