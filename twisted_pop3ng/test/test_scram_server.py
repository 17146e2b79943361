"""The server side of SCRAM against the RFCs' own examples (RFC 7677 §3 for SCRAM-SHA-256, RFC
5802 §5 for SCRAM-SHA-1), the keys derived from the password by :mod:`twisted_pop3ng.auth.passwords`;
and what it refuses: another user's authorization identity, a changed GS2 header, a wrong proof,
a downgrade from channel binding."""

from __future__ import annotations

import base64

from twisted.trial import unittest

from twisted_pop3ng.auth import passwords
from twisted_pop3ng.auth.scram_server import ScramError, ServerExchange

#: (hash, client-first, server nonce part, salt, server-first, client-final, server-final)
RFC_EXAMPLES = [
    ("sha256", "n,,n=user,r=rOprNGfwEbeRWgbNEkqO", "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
     "W22ZaJ0SNY7soEsUEjb6gQ==",
     "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
     "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
     "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
     "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
    ("sha1", "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL", "3rfcNHYJY1ZVvWVs7j", "QSXCR+Q6sek8bf92",
     "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
     "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
     "v=rmF9pqV8S7suAoZWja4dJRkFsKQ="),
]


def keys(hash_name: str, salt: str) -> passwords.ScramKeys:
    return passwords.scram_keys(b"pencil", hash_name, base64.b64decode(salt), 4096)


class RFCExampleTests(unittest.TestCase):
    def test_the_rfc_exchanges(self) -> None:
        for hash_name, first, nonce, salt, server_first, final, server_final in RFC_EXAMPLES:
            exchange = ServerExchange(hash_name, {}, False, False, server_nonce=nonce)
            self.assertEqual(exchange.client_first(first), "user")
            k = keys(hash_name, salt)
            self.assertEqual(exchange.server_first(k.salt, k.iterations, k.stored_key, k.server_key),
                             server_first)
            self.assertEqual(exchange.client_final(final), server_final)

    def test_a_wrong_proof_or_nonce_or_binding(self) -> None:
        hash_name, first, nonce, salt, _, final, _ = RFC_EXAMPLES[0]
        k = keys(hash_name, salt)
        for bad in (final.replace("p=dH", "p=dG"), final.replace("r=rOpr", "r=xOpr"),
                    final.replace("c=biws", "c=eSws"), final.split(",p=")[0]):
            exchange = ServerExchange(hash_name, {}, False, False, server_nonce=nonce)
            exchange.client_first(first)
            exchange.server_first(k.salt, k.iterations, k.stored_key, k.server_key)
            self.assertRaises(ScramError, exchange.client_final, bad)


class AuthorizationIdentityTests(unittest.TestCase):
    def test_only_the_users_own_name(self) -> None:
        exchange = ServerExchange("sha256", {}, False, False)
        self.assertEqual(exchange.client_first("n,a=user,n=user,r=abc"), "user")
        for other in ("n,a=admin,n=user,r=abc", "n,x=user,n=user,r=abc"):
            self.assertRaises(ScramError, ServerExchange("sha256", {}, False, False).client_first, other)


class SaslnameTests(unittest.TestCase):
    def test_escapes(self) -> None:
        from twisted_pop3ng.auth.scram_server import unescape_name

        self.assertEqual(unescape_name("a=2Cb=3Dc"), "a,b=c")
        for bad in ("al=ice", "a=2c", "a="):  # (RFC 5802 §5.1: the server MUST fail these)
            self.assertRaises(ScramError, unescape_name, bad)


class ChannelBindingTests(unittest.TestCase):
    def test_downgrade_and_missing_binding(self) -> None:
        bindings = {"tls-exporter": b"x" * 32}
        # the server offers -PLUS: a client that says it saw none ("y") was downgraded
        self.assertRaises(ScramError, ServerExchange("sha256", bindings, False, True).client_first,
                          "y,,n=user,r=abc")
        # -PLUS without binding, and a binding this connection does not have
        self.assertRaises(ScramError, ServerExchange("sha256", bindings, True, True).client_first,
                          "n,,n=user,r=abc")
        self.assertRaises(ScramError, ServerExchange("sha256", bindings, True, True).client_first,
                          "p=tls-unique,,n=user,r=abc")
        self.assertEqual(ServerExchange("sha256", bindings, True, True).client_first(
            "p=tls-exporter,,n=user,r=abc"), "user")
        self.assertRaises(ScramError, ServerExchange("sha256", {}, False, False).client_first,
                          "n,,m=ext,n=user,r=abc")  # (a mandatory extension: refused)
