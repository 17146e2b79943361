"""Deprecated: this module moved to :mod:`twisted_pop3ng.server.auth_verbs`; import from there."""

import warnings

from twisted_pop3ng.server.auth_verbs import (  # noqa: F401
    COMMANDS,
    channel_bindings,
    client_identities,
    do_STLS,
    available_mechanisms,
    do_AUTH,
    APOPCredentials,
    do_APOP,
    do_UTF8,
)

__all__ = [
    'COMMANDS', 'channel_bindings', 'client_identities', 'do_STLS', 'available_mechanisms',
    'do_AUTH', 'APOPCredentials', 'do_APOP', 'do_UTF8',
]

warnings.warn("twisted_pop3ng.server_auth is deprecated: import twisted_pop3ng.server.auth_verbs",
              DeprecationWarning, stacklevel=2)
