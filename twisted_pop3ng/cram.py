"""Deprecated: this module moved to :mod:`twisted_pop3ng.auth.cram`; import from there."""

import warnings

from twisted_pop3ng.auth.cram import (  # noqa: F401
    State,
    md5_resume,
    cram_context,
    hmac_from_context,
    cram_digest,
)

__all__ = [
    'State', 'md5_resume', 'cram_context', 'hmac_from_context', 'cram_digest',
]

warnings.warn("twisted_pop3ng.cram is deprecated: import twisted_pop3ng.auth.cram",
              DeprecationWarning, stacklevel=2)
