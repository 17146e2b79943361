"""The POP3 session states (RFC 1939 §3) and the only transitions between them.

Rules of this module: it is a leaf (imports nothing of ours); the state changes only through
:data:`TRANSITIONS`, a table keyed by (state, event) -- a missing key is a programming error.
"""

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"

#: The only state changes there are: (state, event) -> new state.
TRANSITIONS = {
    (AUTHORIZATION, "login"): TRANSACTION,
    (TRANSACTION, "quit"): UPDATE,
}

__all__ = ["AUTHORIZATION", "TRANSACTION", "UPDATE", "TRANSITIONS"]
