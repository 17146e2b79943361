"""SCRAM (RFC 5802, RFC 7677) from the server's side: the client-first and client-final messages
checked, the server-first and server-final made, for keys the caller looked up.

Why not scramp here, as for the client side and the key derivation: scramp's server refuses any
GS2 authorization identity, even one equal to the user name, which is what GNU SASL (mutt,
neomutt) always sends (``n,a=alice,n=alice,...``); RFC 5802 §5.1 leaves it to the server, which
may accept an authzid it can authorize -- here, the user's own name. Since the channel-binding
attribute ``c=`` covers the whole GS2 header and enters the client's proof, a checker that drops
the authzid cannot be put in front of scramp: the exchange is done here, in full.

Rules of this module: no I/O, no Twisted; :class:`ScramError` carries the reason (for the log,
never for the client); every comparison of secrets is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Dict, List, Optional, Tuple

__all__ = ["ScramError", "ServerExchange", "unescape_name"]


class ScramError(Exception):
    """The client's message is malformed, or its proof is wrong."""


def unescape_name(name: str) -> str:
    """A ``saslname`` (RFC 5802 §5.1: ``=2C`` is a comma, ``=3D`` an equals sign; any other
    ``=`` fails the exchange, as the RFC requires)."""
    parts = name.split("=")
    out = [parts[0]]
    for part in parts[1:]:
        if part[:2] == "2C":
            out.append("," + part[2:])
        elif part[:2] == "3D":
            out.append("=" + part[2:])
        else:
            raise ScramError("a saslname with an '=' that is not =2C or =3D")
    return "".join(out)


def _attributes(text: str, what: str) -> List[Tuple[str, str]]:
    """``k=v,k=v`` as pairs, in order; each key one letter."""
    pairs = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ScramError("malformed SCRAM %s message" % what)
        pairs.append((key, value))
    return pairs


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ScramError("the %s is not base64" % what)


class ServerExchange:
    """One exchange. ``bindings``: the channel's binding data by type (empty: none);
    ``binding_required``: the mechanism is a ``-PLUS`` one; ``binding_offered``: the server
    offers the ``-PLUS`` form (a client saying ``y`` then means a downgrade)."""

    def __init__(self, hash_name: str, bindings: Dict[str, bytes], binding_required: bool,
                 binding_offered: bool, server_nonce: Optional[str] = None) -> None:
        #: (``server_nonce``: the RFCs' examples' own, for checking against them; else random.)
        self._server_nonce = server_nonce or base64.b64encode(os.urandom(18)).decode("ascii")
        self.hash_name = hash_name
        self.bindings = bindings
        self.binding_required = binding_required
        self.binding_offered = binding_offered
        self.username = ""
        self._gs2_header = ""
        self._binding_data = b""
        self._client_first_bare = ""
        self._nonce = ""
        self._server_first = ""
        self._stored_key = self._server_key = b""

    def client_first(self, text: str) -> str:
        """Check the client-first message; the user name it gives (unescaped)."""
        flag, sep1, rest = text.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not (sep1 and sep2):
            raise ScramError("malformed SCRAM client-first message")
        if flag == "y":
            if self.binding_offered:
                raise ScramError("the client thinks the server cannot bind to the channel: a downgrade")
        elif flag == "n":
            if self.binding_required:
                raise ScramError("a -PLUS mechanism without channel binding")
        elif flag.startswith("p="):
            name = flag[2:]
            if name not in self.bindings:
                raise ScramError("channel binding %r is not available here" % name[:40])
            self._binding_data = self.bindings[name]
        else:
            raise ScramError("malformed SCRAM GS2 header")
        attributes = _attributes(bare, "client-first")
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
            raise ScramError("malformed SCRAM client-first message")  # ("m=" first is refused too)
        self.username = unescape_name(attributes[0][1])
        if authzid:
            if not authzid.startswith("a=") or unescape_name(authzid[2:]) != self.username:
                raise ScramError("an authorization identity other than the user's own")
        client_nonce = attributes[1][1]
        if not client_nonce or any(not 0x21 <= ord(c) <= 0x7E for c in client_nonce):
            raise ScramError("malformed SCRAM client nonce")
        self._gs2_header = flag + "," + authzid + ","
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        return self.username

    def server_first(self, salt: bytes, iterations: int, stored_key: bytes, server_key: bytes) -> str:
        """The server-first message, for the user's keys (real or made up)."""
        self._stored_key, self._server_key = stored_key, server_key
        self._server_first = "r=%s,s=%s,i=%d" % (self._nonce, base64.b64encode(salt).decode("ascii"),
                                                 iterations)
        return self._server_first

    def client_final(self, text: str) -> str:
        """Check the client-final message and its proof; the server-final message."""
        without_proof, sep, proof_text = text.rpartition(",p=")
        if not sep:
            raise ScramError("malformed SCRAM client-final message")
        attributes = _attributes(without_proof, "client-final")
        if len(attributes) < 2 or attributes[0][0] != "c" or attributes[1][0] != "r":
            raise ScramError("malformed SCRAM client-final message")
        binding = _b64decode(attributes[0][1], "channel binding")
        expected = self._gs2_header.encode("utf-8") + self._binding_data
        if not hmac.compare_digest(binding, expected):
            raise ScramError("the channel bindings do not match")
        if not hmac.compare_digest(attributes[1][1].encode("utf-8"), self._nonce.encode("utf-8")):
            raise ScramError("the nonce does not match")
        proof = _b64decode(proof_text, "proof")
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof)).encode("utf-8")
        signature = hmac.new(self._stored_key, auth_message, self.hash_name).digest()
        if len(proof) != len(signature):
            raise ScramError("the proof has the wrong length")
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.new(self.hash_name, client_key).digest(), self._stored_key):
            raise ScramError("wrong proof")
        verifier = hmac.new(self._server_key, auth_message, self.hash_name).digest()
        return "v=" + base64.b64encode(verifier).decode("ascii")
