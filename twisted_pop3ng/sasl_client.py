"""Deprecated: this module moved to :mod:`twisted_pop3ng.auth.sasl_client`; import from there."""

import warnings

from twisted_pop3ng.auth.sasl_client import (  # noqa: F401
    SASLError,
    ClientMechanism,
    Plain,
    Login,
    CramMD5,
    Scram,
    XOAuth2,
    OAuthBearer,
    PASSWORD_PREFERENCE,
    TOKEN_PREFERENCE,
    PLAINTEXT,
    choose,
    make,
    tls_server_end_point,
    apop_digest,
)

__all__ = [
    'SASLError', 'ClientMechanism', 'Plain', 'Login', 'CramMD5', 'Scram', 'XOAuth2',
    'OAuthBearer', 'PASSWORD_PREFERENCE', 'TOKEN_PREFERENCE', 'PLAINTEXT', 'choose', 'make',
    'tls_server_end_point', 'apop_digest',
]

warnings.warn("twisted_pop3ng.sasl_client is deprecated: import twisted_pop3ng.auth.sasl_client",
              DeprecationWarning, stacklevel=2)
