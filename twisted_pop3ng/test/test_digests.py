"""APOP and CRAM-MD5 digests: the RFC examples, computed by the one rule both sides use."""

from __future__ import annotations

from twisted.trial import unittest

from twisted_pop3ng.auth import digests, sasl_client
from twisted_pop3ng.auth.sasl_server import CramMD5Credentials
from twisted_pop3ng.server.auth_verbs import APOPCredentials

#: RFC 1939 §7: the greeting's timestamp, the shared secret and the digest mrose sends.
APOP_TIMESTAMP = b"<1896.697170952@dbc.mtview.ca.us>"
APOP_SECRET = b"tanstaaf"
APOP_DIGEST = b"c4c9334bac560ecc979e58001b3e22fb"
#: RFC 2195 §2: the server's challenge, tim's secret and the digest in his answer.
CRAM_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
CRAM_SECRET = b"tanstaaftanstaaf"
CRAM_DIGEST = b"b913a602c7eda7a495b4e6e7334d3890"


class RFCVectorTests(unittest.TestCase):
    def test_apop_rfc1939_example(self) -> None:
        self.assertEqual(digests.apop_digest(APOP_TIMESTAMP, APOP_SECRET), APOP_DIGEST)

    def test_cram_md5_rfc2195_example(self) -> None:
        self.assertEqual(digests.cram_digest(CRAM_SECRET, CRAM_CHALLENGE), CRAM_DIGEST)


class BothSidesTests(unittest.TestCase):
    """The client sends, and the server accepts, exactly the RFC's digests."""

    def test_client_apop(self) -> None:
        self.assertEqual(sasl_client.apop_digest(APOP_TIMESTAMP, "tanstaaf"), APOP_DIGEST)

    def test_server_accepts_the_rfc_apop_digest_only(self) -> None:
        good = APOPCredentials(b"mrose", APOP_TIMESTAMP, APOP_DIGEST.upper())
        self.assertTrue(good.checkPassword(APOP_SECRET))
        self.assertFalse(good.checkPassword(b"tanstaaF"))

    def test_client_cram_md5_answer(self) -> None:
        mechanism = sasl_client.make("CRAM-MD5", "tim", "tanstaaftanstaaf")
        self.assertEqual(mechanism.respond(CRAM_CHALLENGE), b"tim " + CRAM_DIGEST)

    def test_server_accepts_the_rfc_cram_md5_answer_only(self) -> None:
        credentials = CramMD5Credentials(b"tim", CRAM_CHALLENGE, CRAM_DIGEST)
        self.assertTrue(credentials.checkPassword(CRAM_SECRET))
        self.assertFalse(credentials.checkPassword(b"tanstaaf"))
