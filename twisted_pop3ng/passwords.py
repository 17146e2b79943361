"""Password schemes of Dovecot's ``{SCHEME}secret`` notation.

Only ``{PLAIN}`` (and its aliases) is verified here so far; hashed schemes are added through
:data:`VERIFIERS`, which maps a scheme name to ``verify(secret: str, password: bytes) -> bool``.
"""

from __future__ import annotations

import hmac
from typing import Callable, Dict, Optional, Tuple


def _verify_plain(secret: str, password: bytes) -> bool:
    return hmac.compare_digest(secret.encode("utf-8"), password)


VERIFIERS: Dict[str, Callable[[str, bytes], bool]] = {
    "PLAIN": _verify_plain,
    "CLEAR": _verify_plain,
    "CLEARTEXT": _verify_plain,
}

#: Dovecot's default scheme for entries without ``{SCHEME}`` in a passwd-file.
DEFAULT_SCHEME = "CRYPT"


class UnknownScheme(ValueError):
    pass


def split_scheme(stored: str, default: str = DEFAULT_SCHEME) -> Tuple[str, str]:
    """``{SHA512-CRYPT}$6$…`` -> ("SHA512-CRYPT", "$6$…")."""
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 1:
            return stored[1:end].upper(), stored[end + 1 :]
    return default, stored


def verify(stored: str, password: bytes, default: str = DEFAULT_SCHEME) -> bool:
    scheme, secret = split_scheme(stored, default)
    verifier: Optional[Callable[[str, bytes], bool]] = VERIFIERS.get(scheme)
    if verifier is None:
        raise UnknownScheme(scheme)
    return verifier(secret, password)
