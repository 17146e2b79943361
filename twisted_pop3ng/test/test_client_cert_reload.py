"""``--tls-client-ca``'s reload is all or nothing: a CA file that cannot be read leaves the served
certificate as it was (it used to be swapped already, while the log said the old one was kept)."""

from __future__ import annotations

import os

import trustme
from twisted.trial import unittest

from twisted_pop3ng.service.security_options import ClientCertTLS
from twisted_pop3ng.tls.server import ReloadableServerTLS


def _served_subject(tls: ClientCertTLS) -> str:
    from OpenSSL import SSL

    connection = SSL.Connection(tls.getContext(), None)
    return connection.get_certificate().to_cryptography().subject.rfc4514_string()


class ReloadTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.cert, self.key = os.path.join(self.root, "cert.pem"), os.path.join(self.root, "key.pem")
        self.ca_file = os.path.join(self.root, "client-ca.pem")
        self.issue("old.example")
        trustme.CA().cert_pem.write_to_path(self.ca_file)
        self.tls = ClientCertTLS(ReloadableServerTLS(self.cert, self.key), self.ca_file)

    def issue(self, name: str) -> None:
        leaf = trustme.CA().issue_cert(name, common_name=name)
        leaf.cert_chain_pems[0].write_to_path(self.cert)
        leaf.private_key_pem.write_to_path(self.key)

    def test_a_broken_ca_file_changes_nothing(self) -> None:
        self.assertIn("old.example", _served_subject(self.tls))
        self.issue("new.example")
        with open(self.ca_file, "w") as f:
            f.write("not a certificate\n")
        with self.assertRaises(Exception):
            self.tls.reload()
        self.assertIn("old.example", _served_subject(self.tls))

    def test_a_good_reload_takes_both(self) -> None:
        self.issue("new.example")
        self.tls.reload()
        self.assertIn("new.example", _served_subject(self.tls))
