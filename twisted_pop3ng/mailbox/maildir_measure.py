"""Deprecated: this module moved to :mod:`twisted_pop3ng.mailbox.maildir.measure`; import from there."""

import warnings

from twisted_pop3ng.mailbox.maildir.measure import (  # noqa: F401
    VANISHED,
    UNREADABLE,
    SMALL_READ,
    FORK_MIN,
    CHUNK,
    IO_BOUND_WAITS,
    PREFETCH,
    FILE_FLAGS,
    NOATIME,
    DIR_FLAGS,
    measure,
    Measurement,
)

__all__ = [
    'VANISHED', 'UNREADABLE', 'SMALL_READ', 'FORK_MIN', 'CHUNK', 'IO_BOUND_WAITS', 'PREFETCH',
    'FILE_FLAGS', 'NOATIME', 'DIR_FLAGS', 'measure', 'Measurement',
]

warnings.warn("twisted_pop3ng.mailbox.maildir_measure is deprecated: import twisted_pop3ng.mailbox.maildir.measure",
              DeprecationWarning, stacklevel=2)
