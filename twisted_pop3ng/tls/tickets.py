"""TLS session-ticket keys: derived from one secret, rotated on a schedule, the old ones accepted
for a grace period.

Every process holding the same secret (the ``--workers`` master hands it to its workers) derives
the same key for the same period of time, so they rotate together without talking to each other
and a ticket issued by one process is accepted by every other.

Rules of this module: standard library only; nothing here touches OpenSSL (installing the keys into
a context is :mod:`twisted_pop3ng.fastpath.tls_tickets`' job).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

__all__ = ["TicketKey", "TicketKeys", "DEFAULT_ROTATION", "DEFAULT_GRACE"]

#: A new ticket key every 4 hours ...
DEFAULT_ROTATION = 4 * 3600.0
#: ... and a ticket sealed with the previous one is still accepted 4 hours after it retired.
DEFAULT_GRACE = 4 * 3600.0
#: Key name, HMAC-SHA256 key and AES-256 key sizes of OpenSSL's ticket format.
NAME_SIZE, HMAC_SIZE, AES_SIZE = 16, 32, 32


@dataclass(frozen=True)
class TicketKey:
    """The keys of one rotation period: ``name`` travels in the ticket and picks the key back."""

    period: int
    name: bytes
    hmac_key: bytes
    aes_key: bytes


class TicketKeys:
    """Ticket keys for period ``floor(now / rotation)``: the current one seals new tickets; a
    retired one still opens tickets until ``grace`` seconds after its period ended."""

    def __init__(self, secret: Optional[bytes] = None, rotation: float = DEFAULT_ROTATION,
                 grace: float = DEFAULT_GRACE, clock: Callable[[], float] = time.time) -> None:
        if rotation <= 0 or grace < 0:
            raise ValueError("ticket key rotation must be positive and the grace period not negative")
        self.secret = secret if secret is not None else os.urandom(32)
        if len(self.secret) < 32:
            raise ValueError("the ticket key secret must be at least 32 bytes")
        self.rotation = float(rotation)
        self.grace = float(grace)
        self.clock = clock
        self._cache: Dict[int, TicketKey] = {}

    def _derive(self, period: int) -> TicketKey:
        key = self._cache.get(period)
        if key is None:
            def part(label: bytes, size: int) -> bytes:
                message = b"pop3ng ticket key\0" + label + b"\0" + period.to_bytes(8, "big", signed=True)
                return hmac.new(self.secret, message, hashlib.sha256).digest()[:size]

            key = TicketKey(period, part(b"name", NAME_SIZE), part(b"hmac", HMAC_SIZE), part(b"aes", AES_SIZE))
            if len(self._cache) > 64:  # old periods are never asked for again
                self._cache.clear()
            self._cache[period] = key
        return key

    def _period(self, now: float) -> int:
        return int(now // self.rotation)

    def current(self) -> TicketKey:
        """The key that seals tickets now."""
        return self._derive(self._period(self.clock()))

    def accepted(self) -> List[TicketKey]:
        """The keys that open tickets now: the current one, then each retired one in its grace."""
        now = self.clock()
        period = self._period(now)
        keys = [self._derive(period)]
        older = period - 1
        while (older + 1) * self.rotation + self.grace > now:
            keys.append(self._derive(older))
            older -= 1
        return keys

    def lookup(self, name: bytes) -> Optional[Tuple[TicketKey, bool]]:
        """The accepted key called ``name`` and whether it is the current one (else the ticket
        should be renewed), or None: the ticket is unknown or expired (a full handshake follows)."""
        for index, key in enumerate(self.accepted()):
            if hmac.compare_digest(key.name, name):
                return key, index == 0
        return None

    def lifetime(self) -> int:
        """The longest a ticket can be accepted, in seconds (what the server advertises)."""
        return max(1, int(self.rotation + self.grace))

    def export(self) -> Dict[str, object]:
        """What a ``--workers`` process needs to derive the same keys (JSON-friendly; secret!)."""
        return {"secret": self.secret.hex(), "rotation": self.rotation, "grace": self.grace}

    @classmethod
    def from_export(cls, data: Dict[str, object]) -> "TicketKeys":
        return cls(bytes.fromhex(str(data["secret"])), float(data["rotation"]),  # type: ignore[arg-type]
                   float(data["grace"]))  # type: ignore[arg-type]
