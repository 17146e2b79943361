"""Deprecated: this module moved to :mod:`twisted_pop3ng.fetch.state`; import from there."""

import warnings

from twisted_pop3ng.fetch.state import (  # noqa: F401
    VERSION,
    StateError,
    default_path,
    FetchState,
)

__all__ = [
    'VERSION', 'StateError', 'default_path', 'FetchState',
]

warnings.warn("twisted_pop3ng.fetchstate is deprecated: import twisted_pop3ng.fetch.state",
              DeprecationWarning, stacklevel=2)
