"""Facts about SASL mechanism names that the client and the server share.

Rules of this module: data only, no imports; a fact about a mechanism that both sides act on is
written here once.
"""

__all__ = ["PLAINTEXT"]

#: Mechanisms that send the password itself: subject to the plaintext policy on both sides (the
#: server offers them only where plaintext is allowed, the client sends them only over TLS unless
#: told otherwise).
PLAINTEXT = frozenset({"PLAIN", "LOGIN"})
