"""Maildir file names: the base name (before ``:2,flags``) and the UIDL made of it.

Rules of this module: a leaf (standard library, :mod:`twisted_pop3ng.wire.uid` and the core
:mod:`twisted_pop3ng._maildir` only), so the store, the index and the listing can all use it
without importing each other. ``base_name`` lives in :mod:`twisted_pop3ng._maildir`, which
``pop3ng fetch`` shares.
"""

from __future__ import annotations

import hashlib

from twisted_pop3ng._maildir import base_name
from twisted_pop3ng.wire.uid import is_valid_uid

__all__ = ["base_name", "hashed_uid", "uid_for"]


def uid_for(base: str) -> str:
    """The UIDL of a maildir message: its base name where that is a valid UIDL, else a hash of it."""
    if is_valid_uid(base):
        return base
    return hashed_uid(base)


def hashed_uid(base: str) -> str:
    """The digest form of a base name's UIDL: ``h`` and 40 hex digits, always a valid UIDL."""
    return "h" + hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:40]


#: How the line-based files beside a maildir (``pop3ng-index``, ``pop3ng-uidl-map``) write a file
#: name: the characters that would break a line or a field, percent-encoded.
ESCAPES = (("%", "%25"), (" ", "%20"), ("\r", "%0D"), ("\n", "%0A"))


def escape_name(name: str) -> str:
    for raw, quoted in ESCAPES:
        name = name.replace(raw, quoted)
    return name


def unescape_name(name: str) -> str:
    for raw, quoted in reversed(ESCAPES):
        name = name.replace(quoted, raw)
    return name
