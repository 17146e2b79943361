"""Socket options shared by the server and the client.

Rules of this module: public Twisted transport methods only.
"""

from __future__ import annotations

from typing import Any


def set_no_delay(transport: Any) -> None:
    """Turn Nagle off where the transport can (TCP): replies are whole, and a small one must not
    wait for the ACK of the previous one. Shared by the server and the client."""
    no_delay = getattr(transport, "setTcpNoDelay", None)
    if no_delay is not None:
        try:
            no_delay(True)
        except Exception:  # not a socket after all (a test transport, a closed one)
            pass
