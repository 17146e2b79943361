"""Deprecated: this module moved to :mod:`twisted_pop3ng.auth.oauth`; import from there."""

import warnings

from twisted_pop3ng.auth.oauth import (  # noqa: F401
    ITokenValidator,
    issue_token,
    HMACTokenValidator,
)

__all__ = [
    'ITokenValidator', 'issue_token', 'HMACTokenValidator',
]

warnings.warn("twisted_pop3ng.oauth is deprecated: import twisted_pop3ng.auth.oauth",
              DeprecationWarning, stacklevel=2)
