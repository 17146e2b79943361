"""Deprecated: this module moved to :mod:`twisted_pop3ng.mailbox.maildir.listing`; import from there."""

import warnings

from twisted_pop3ng.mailbox.maildir.listing import (  # noqa: F401
    UIDS,
    MAX_INFOS,
    listing,
    gc_paused,
    permuted,
    order_key,
    padded,
    padded_octets,
    delivery_order,
    delivery_positions,
    base_names,
    split_bases,
    strip_infos,
    valid_uids,
    uids_of,
    Rows,
    message_rows,
    standard_rows,
    known_sizes,
    prefixed,
    FAST_INFOS,
    unsized_infos,
    sized_infos,
)

__all__ = [
    'UIDS', 'MAX_INFOS', 'listing', 'gc_paused', 'permuted', 'order_key', 'padded',
    'padded_octets', 'delivery_order', 'delivery_positions', 'base_names', 'split_bases',
    'strip_infos', 'valid_uids', 'uids_of', 'Rows', 'message_rows', 'standard_rows',
    'known_sizes', 'prefixed', 'FAST_INFOS', 'unsized_infos', 'sized_infos',
]

warnings.warn("twisted_pop3ng.mailbox.maildir_listing is deprecated: import twisted_pop3ng.mailbox.maildir.listing",
              DeprecationWarning, stacklevel=2)
