"""The trace headers a delivery prepends, in the stored (LF) form.

Like Dovecot's LMTP: ``Return-Path:`` with the envelope sender (RFC 5321 §4.4: added at final
delivery), ``Delivered-To:`` with the recipient address as given in ``RCPT TO`` (what Postfix and
Dovecot add; loops show up in it), and a ``Received:`` line (RFC 5321 §4.4) naming the client.
Only values the protocol already checked reach here (printable, no CR or LF).
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Envelope:
    """What a client told us about one message: the sender (``""`` for the null sender ``<>``),
    its LHLO name and address, and the id the ``Received:`` line carries."""

    sender: str
    helo: str = ""
    client_address: str = ""
    server_name: str = "localhost"
    transaction_id: str = ""


def return_path(sender: str) -> bytes:
    return b"Return-Path: <%s>\n" % sender.encode("utf-8")


def trace_headers(envelope: Envelope, recipient: str, now: Optional[float] = None) -> bytes:
    """``Return-Path``, ``Delivered-To`` and ``Received`` for one recipient of ``envelope``."""
    received = "Received: from %s ([%s])\n\tby %s with LMTP id %s\n\tfor <%s>; %s\n" % (
        # (The LHLO name is cut to a DNS name's 255 octets, so the line stays within RFC 5322's
        # 998: a 994-octet name made it 1,023.)
        envelope.helo[:255] or "unknown", envelope.client_address or "unknown", envelope.server_name,
        envelope.transaction_id or "-", recipient, email.utils.formatdate(now, localtime=True))
    return (return_path(envelope.sender) + b"Delivered-To: %s\n" % recipient.encode("utf-8")
            + received.encode("utf-8"))
