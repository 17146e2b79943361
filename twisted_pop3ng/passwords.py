"""Deprecated: this module moved to :mod:`twisted_pop3ng.auth.passwords`; import from there."""

import warnings

from twisted_pop3ng.auth.passwords import (  # noqa: F401
    DEFAULT_SCHEME,
    DEFAULT_GENERATE,
    SCRAM_ITERATIONS,
    PBKDF2_ROUNDS,
    PLAINTEXT_SCHEMES,
    UnknownScheme,
    split_scheme,
    saslprep,
    ScramKeys,
    scram_keys,
    parse_scram,
    VERIFIERS,
    verify,
    GENERATORS,
    generate,
    main,
)

__all__ = [
    'DEFAULT_SCHEME', 'DEFAULT_GENERATE', 'SCRAM_ITERATIONS', 'PBKDF2_ROUNDS',
    'PLAINTEXT_SCHEMES', 'UnknownScheme', 'split_scheme', 'saslprep', 'ScramKeys', 'scram_keys',
    'parse_scram', 'VERIFIERS', 'verify', 'GENERATORS', 'generate', 'main',
]

warnings.warn("twisted_pop3ng.passwords is deprecated: import twisted_pop3ng.auth.passwords",
              DeprecationWarning, stacklevel=2)
