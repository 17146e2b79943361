"""Deprecated: this module moved to :mod:`twisted_pop3ng.mailbox.maildir.index`; import from there."""

import warnings

from twisted_pop3ng.mailbox.maildir.index import (  # noqa: F401
    delivery_order,
    order_key,
    INDEX_NAME,
    INDEX_HEADER,
    SETTLE_NS,
    MAX_CACHED_MESSAGES,
    Signature,
    Snapshot,
    signature,
    load,
    save,
    flush,
    scan,
    forget,
    snapshot,
)

__all__ = [
    'delivery_order', 'order_key', 'INDEX_NAME', 'INDEX_HEADER', 'SETTLE_NS',
    'MAX_CACHED_MESSAGES', 'Signature', 'Snapshot', 'signature', 'load', 'save', 'flush',
    'scan', 'forget', 'snapshot',
]

warnings.warn("twisted_pop3ng.mailbox.maildir_index is deprecated: import twisted_pop3ng.mailbox.maildir.index",
              DeprecationWarning, stacklevel=2)
