"""The two MD5 challenge-response digests of POP3, for the client and the server alike.

Rules of this module: standard library only; every APOP (RFC 1939 §7) and CRAM-MD5 (RFC 2195)
digest in the package is computed here, so the side that sends one and the side that checks it
cannot disagree. Both return lower-case hex as ``bytes``: what goes on the wire.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["apop_digest", "cram_digest"]


def apop_digest(timestamp: bytes, secret: bytes) -> bytes:
    """RFC 1939 §7: MD5 of the greeting's timestamp (with its angle brackets) then the secret."""
    return hashlib.md5(timestamp + secret).hexdigest().encode("ascii")


def cram_digest(secret: bytes, challenge: bytes) -> bytes:
    """RFC 2195: HMAC-MD5 keyed with the secret over the server's challenge."""
    return hmac.new(secret, challenge, hashlib.md5).hexdigest().encode("ascii")
