"""Deprecated: this module moved to :mod:`twisted_pop3ng.server.io`; import from there."""

import warnings

from twisted_pop3ng.server.io import (  # noqa: F401
    set_no_delay,
    CHUNK_SIZE,
    FLUSH_SIZE,
    GATHER_MIN,
    MAX_GATHER,
    MAX_QUEUED_INPUT,
    CHUNKS_PER_TURN,
    IdleSweeper,
    TransportFlow,
    MessageStream,
    SessionIO,
)

__all__ = [
    'set_no_delay', 'CHUNK_SIZE', 'FLUSH_SIZE', 'GATHER_MIN', 'MAX_GATHER', 'MAX_QUEUED_INPUT',
    'CHUNKS_PER_TURN', 'IdleSweeper', 'TransportFlow', 'MessageStream', 'SessionIO',
]

warnings.warn("twisted_pop3ng.server_io is deprecated: import twisted_pop3ng.server.io",
              DeprecationWarning, stacklevel=2)
