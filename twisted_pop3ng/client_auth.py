"""Deprecated: this module moved to :mod:`twisted_pop3ng.client.login`; import from there."""

import warnings

from twisted_pop3ng.client.login import (  # noqa: F401
    LoginMixin,
)

__all__ = [
    'LoginMixin',
]

warnings.warn("twisted_pop3ng.client_auth is deprecated: import twisted_pop3ng.client.login",
              DeprecationWarning, stacklevel=2)
