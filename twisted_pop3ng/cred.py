"""Deprecated: this module moved to :mod:`twisted_pop3ng.auth.checkers`; import from there."""

import warnings

from twisted_pop3ng.auth.checkers import (  # noqa: F401
    HASH_THREADS,
    CHEAP_SCHEMES,
    LATER,
    login_now,
    hash_in_thread,
    ISecretStore,
    IPreauthenticated,
    Preauthenticated,
    PreauthenticatedChecker,
    PasswdEntry,
    parse_passwd_file,
    PasswdFileChecker,
    PasswdFileCheckerFactory,
)

__all__ = [
    'HASH_THREADS', 'CHEAP_SCHEMES', 'LATER', 'login_now', 'hash_in_thread', 'ISecretStore',
    'IPreauthenticated', 'Preauthenticated', 'PreauthenticatedChecker', 'PasswdEntry',
    'parse_passwd_file', 'PasswdFileChecker', 'PasswdFileCheckerFactory',
]

warnings.warn("twisted_pop3ng.cred is deprecated: import twisted_pop3ng.auth.checkers",
              DeprecationWarning, stacklevel=2)
