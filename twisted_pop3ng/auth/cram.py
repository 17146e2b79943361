"""CRAM-MD5 (RFC 2195) and Dovecot's ``{CRAM-MD5}`` stored form.

Dovecot stores not the password but the two HMAC-MD5 context states after the key blocks
(``K xor opad`` and ``K xor ipad``), 16 bytes each, as 64 hex digits. Python's ``hashlib`` cannot
export or resume an MD5 state, so this module carries the RFC 1321 compression function; it is
checked against ``hashlib.md5`` in the tests and the stored form against ``doveadm pw``.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import List, Tuple

from twisted_pop3ng.auth import digests

_S = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_K = [int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64)]
_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MASK = 0xFFFFFFFF

State = Tuple[int, int, int, int]


def _rotl(x: int, c: int) -> int:
    return ((x << c) | (x >> (32 - c))) & _MASK


def _compress(state: State, block: bytes) -> State:
    """One 64-byte MD5 block (RFC 1321 §3.4)."""
    m = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = (f + a + _K[i] + m[g]) & _MASK
        a, d, c = d, c, b
        b = (b + _rotl(f, _S[i])) & _MASK
    s = state
    return ((s[0] + a) & _MASK, (s[1] + b) & _MASK, (s[2] + c) & _MASK, (s[3] + d) & _MASK)


def md5_resume(state: State, data: bytes, prefix_length: int = 64) -> bytes:
    """MD5 digest of ``prefix || data`` given the state after a ``prefix_length``-byte prefix."""
    length = prefix_length + len(data)
    data = data + b"\x80" + b"\0" * ((55 - length) % 64) + struct.pack("<Q", (length * 8) & (2**64 - 1))
    for i in range(0, len(data), 64):
        state = _compress(state, data[i : i + 64])
    return struct.pack("<4I", *state)


def _key_block(password: bytes) -> bytes:
    if len(password) > 64:
        password = hashlib.md5(password).digest()
    return password.ljust(64, b"\0")


def cram_context(password: bytes) -> str:
    """Dovecot's ``{CRAM-MD5}`` secret: outer then inner HMAC-MD5 state, little-endian, hex."""
    key = _key_block(password)
    outer = _compress(_INIT, bytes(k ^ 0x5C for k in key))
    inner = _compress(_INIT, bytes(k ^ 0x36 for k in key))
    return struct.pack("<8I", *outer, *inner).hex()


def _parse_context(secret: str) -> Tuple[State, State]:
    raw = bytes.fromhex(secret.strip())
    if len(raw) != 32:
        raise ValueError("a {CRAM-MD5} secret is 64 hex digits")
    words: List[int] = list(struct.unpack("<8I", raw))
    return tuple(words[:4]), tuple(words[4:])  # type: ignore[return-value]


def hmac_from_context(secret: str, message: bytes) -> bytes:
    """HMAC-MD5(password, message) from the stored context alone."""
    outer, inner = _parse_context(secret)
    return md5_resume(outer, md5_resume(inner, message))


def cram_digest(password: bytes, challenge: bytes) -> str:
    """The hex digest a CRAM-MD5 client sends for ``challenge``, as text (the rule itself is
    :func:`twisted_pop3ng.auth.digests.cram_digest`)."""
    return digests.cram_digest(password, challenge).decode("ascii")
