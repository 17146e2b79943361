"""Splitting PEM text into its blocks.

Rules of this module: standard library only; the one PEM splitter of the package (server
certificate chains, client trust anchors).
"""

from __future__ import annotations

from typing import List

__all__ = ["pem_blocks"]


def pem_blocks(data: bytes, kind: bytes = b"CERTIFICATE") -> List[bytes]:
    """Each ``-----BEGIN kind----- … -----END kind-----`` block of ``data``, in order, with a
    trailing newline; text between blocks (comments, other kinds) is left out."""
    begin, end = b"-----BEGIN " + kind + b"-----", b"-----END " + kind + b"-----"
    blocks: List[bytes] = []
    pos = 0
    while True:
        start = data.find(begin, pos)
        if start == -1:
            return blocks
        stop = data.find(end, start)
        if stop == -1:
            return blocks
        blocks.append(data[start : stop + len(end)] + b"\n")
        pos = stop + len(end)
