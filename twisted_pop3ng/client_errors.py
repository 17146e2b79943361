"""Deprecated: this module moved to :mod:`twisted_pop3ng.client.errors`; import from there."""

import warnings

from twisted_pop3ng.client.errors import (  # noqa: F401
    ServerError,
    InUseError,
    LoginDelayError,
    AuthError,
    TemporaryError,
    PermanentError,
    ProtocolError,
    TLSError,
    CapabilityError,
    error_for,
)

__all__ = [
    'ServerError', 'InUseError', 'LoginDelayError', 'AuthError', 'TemporaryError',
    'PermanentError', 'ProtocolError', 'TLSError', 'CapabilityError', 'error_for',
]

warnings.warn("twisted_pop3ng.client_errors is deprecated: import twisted_pop3ng.client.errors",
              DeprecationWarning, stacklevel=2)
