"""Deprecated: this module moved to :mod:`twisted_pop3ng.service.workers`; import from there."""

import warnings

from twisted_pop3ng.service.workers import (  # noqa: F401
    MAX_RESTARTS,
    STOP_TIMEOUT,
    FIRST_FD,
    pop3ng_arguments,
    without_workers,
    WorkerPool,
)

__all__ = [
    'MAX_RESTARTS', 'STOP_TIMEOUT', 'FIRST_FD', 'pop3ng_arguments', 'without_workers',
    'WorkerPool',
]

warnings.warn("twisted_pop3ng.workers is deprecated: import twisted_pop3ng.service.workers",
              DeprecationWarning, stacklevel=2)
