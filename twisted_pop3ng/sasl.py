"""Deprecated: this module moved to :mod:`twisted_pop3ng.auth.sasl_server`; import from there."""

import warnings

from twisted_pop3ng.auth.sasl_server import (  # noqa: F401
    Challenge,
    Done,
    Step,
    AuthFailed,
    SASLContext,
    Mechanism,
    Plain,
    Login,
    CramMD5Credentials,
    CramMD5,
    Scram,
    ScramSha1,
    ScramSha256,
    ScramSha256Plus,
    External,
    OAuthBearer,
    XOAuth2,
    MECHANISMS,
    BY_NAME,
    PLAINTEXT,
)

__all__ = [
    'Challenge', 'Done', 'Step', 'AuthFailed', 'SASLContext', 'Mechanism', 'Plain', 'Login',
    'CramMD5Credentials', 'CramMD5', 'Scram', 'ScramSha1', 'ScramSha256', 'ScramSha256Plus',
    'External', 'OAuthBearer', 'XOAuth2', 'MECHANISMS', 'BY_NAME', 'PLAINTEXT',
]

warnings.warn("twisted_pop3ng.sasl is deprecated: import twisted_pop3ng.auth.sasl_server",
              DeprecationWarning, stacklevel=2)
