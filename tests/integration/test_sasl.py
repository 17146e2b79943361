"""AUTH (RFC 5034) end to end against ``twistd pop3ng``: every mechanism, with independent clients."""

from __future__ import annotations

import atexit
import hashlib
import hmac
import os
import shutil
import subprocess
import tempfile

import trustme
from OpenSSL import SSL
from twisted.trial import unittest

from tests.integration.support import reachable_directory, start_server
from tests.integration.sasl_clients import (
    OpenSSLSocket,
    ScramClient,
    b64,
    challenge,
    connect_from,
    scram_login,
    tls_session,
)
from twisted_pop3ng.auth.oauth import issue_token

PASSWORD = "secret pass"
KEY = b"k" * 32


def doveadm(scheme: str, password: str) -> str:
    return subprocess.run(["doveadm", "pw", "-s", scheme, "-p", password], check=True,
                          capture_output=True, text=True).stdout.strip()


class SASLTests(unittest.TestCase):
    """One server for the class; each test uses its own source address, so failure delays do not mix."""

    server = None

    def setUp(self) -> None:
        # trial has no setUpClass: one server per test process, stopped at exit.
        if SASLTests.server is None:
            self._start(SASLTests)

    @staticmethod
    def _start(cls) -> None:
        # One server for the whole class (and process), stopped at exit: so is its directory
        # (with the client's private key) removed then -- after the server stops (atexit is LIFO).
        cls.root = tempfile.mkdtemp(prefix="pop3ng-sasl-")
        atexit.register(shutil.rmtree, cls.root, True)
        key_file = os.path.join(cls.root, "oauth.key")
        with open(key_file, "wb") as f:
            f.write(KEY)
        ca = cls.client_ca_issuer = trustme.CA()
        cls.client_ca = os.path.join(cls.root, "client-ca.pem")
        ca.cert_pem.write_to_path(cls.client_ca)
        client = ca.issue_cert("carol@example.org", common_name="carol")
        cls.client_cert = os.path.join(cls.root, "client.pem")
        cls.client_key = os.path.join(cls.root, "client.key")
        client.cert_chain_pems[0].write_to_path(cls.client_cert)
        client.private_key_pem.write_to_path(cls.client_key)
        cls.server = start_server(cls.root, {}, extra_args=[
            "--auth-failure-delay", "0.05", "--max-auth-failure-delay", "0.1",
            "--oauth-hmac-key", key_file, "--tls-client-ca", cls.client_ca])
        with open(os.path.join(cls.root, "users"), "w") as f:
            f.write("alice:{PLAIN}%s\n" % PASSWORD)
            f.write("bob:%s\n" % doveadm("SCRAM-SHA-256", PASSWORD))
            f.write("carl:%s\n" % doveadm("CRAM-MD5", PASSWORD))
            f.write("dave:%s\n" % doveadm("SCRAM-SHA-1", PASSWORD))
            f.write("jörg:{PLAIN}pässword\n")
            # Certificate-only: "*" is no password, but EXTERNAL needs the user to exist (F6);
            # "AUTH EXTERNAL =" takes the certificate's first name, its email SAN.
            f.write("carol@example.org:*\n")
        for user in ("alice", "bob", "carl", "dave", "carol"):
            os.makedirs(cls.server.maildir(user), exist_ok=True)

        atexit.register(cls.server.stop)

    def session(self, source: str = "127.0.0.1", tls: bool = True):
        s = connect_from(self.server, source, tls=tls)
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))
        return s

    def assertLoggedIn(self, line: bytes, session) -> None:
        self.assertEqual(line, b"+OK Logged in.\r\n")
        self.assertTrue(session.command(b"STAT").startswith(b"+OK"))
        # QUIT releases the maildrop lock before the next test logs in as the same user.
        self.assertTrue(session.command(b"QUIT").startswith(b"+OK"))
        self.assertTrue(session.closed())

    # -- wire rules -------------------------------------------------------------------------------

    def test_bare_auth_lists_mechanisms_and_capa_has_sasl(self) -> None:
        s = self.session()
        s.send(b"AUTH\r\n")
        self.assertTrue(s.line().startswith(b"+OK"))
        mechs = s.body().split(b"\r\n")[:-2]
        for name in (b"PLAIN", b"LOGIN", b"CRAM-MD5", b"SCRAM-SHA-1", b"SCRAM-SHA-256",
                     b"SCRAM-SHA-256-PLUS", b"OAUTHBEARER", b"XOAUTH2"):
            self.assertIn(name, mechs)
        self.assertNotIn(b"EXTERNAL", mechs)  # no client certificate on this connection
        s.send(b"CAPA\r\n")
        s.line()
        self.assertIn(b"\r\nSASL " + b" ".join(mechs) + b"\r\n", b"\r\n" + s.body())

    def test_plain_initial_response_and_continuation(self) -> None:
        s = self.session()
        self.assertLoggedIn(s.command(b"AUTH PLAIN " + b64(b"\0alice\0" + PASSWORD.encode())), s)
        s = self.session()
        self.assertEqual(s.command(b"AUTH plain"), b"+ \r\n")
        self.assertLoggedIn(s.command(b64(b"alice\0alice\0" + PASSWORD.encode())), s)

    def test_empty_initial_response_cancel_and_bad_base64(self) -> None:
        s = self.session("127.0.1.1")
        self.assertEqual(s.command(b"AUTH PLAIN ="), b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(s.command(b"AUTH PLAIN"), b"+ \r\n")
        self.assertEqual(s.command(b"*"), b"-ERR Authentication cancelled.\r\n")
        self.assertTrue(s.command(b"AUTH PLAIN !!notbase64").startswith(b"-ERR"))
        self.assertEqual(s.command(b"AUTH LOGIN"), b"+ " + b64(b"Username:") + b"\r\n")
        self.assertTrue(s.command(b"@@@").startswith(b"-ERR"))
        self.assertTrue(s.command(b"AUTH NOSUCH").startswith(b"-ERR"))
        self.assertLoggedIn(s.command(b"AUTH PLAIN " + b64(b"\0alice\0" + PASSWORD.encode())), s)

    def test_wrong_password_and_proxy_authorisation_refused(self) -> None:
        s = self.session("127.0.1.2")
        self.assertEqual(s.command(b"AUTH PLAIN " + b64(b"\0alice\0wrong")),
                         b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(s.command(b"AUTH PLAIN " + b64(b"bob\0alice\0" + PASSWORD.encode())),
                         b"-ERR [AUTH] Authentication failed.\r\n")

    def test_long_continuation_line(self) -> None:
        s = self.session("127.0.1.3")
        self.assertEqual(s.command(b"AUTH XOAUTH2"), b"+ \r\n")
        junk = b64(b"user=alice\x01auth=Bearer " + b"x" * 11000 + b"\x01\x01")
        self.assertGreater(len(junk), 14000)
        error = challenge(s.command(junk))
        self.assertIn(b"invalid_token", error)
        self.assertEqual(s.command(b""), b"-ERR [AUTH] Authentication failed.\r\n")

    # -- mechanisms -------------------------------------------------------------------------------

    def test_login(self) -> None:
        s = self.session()
        self.assertEqual(challenge(s.command(b"AUTH LOGIN")), b"Username:")
        self.assertEqual(challenge(s.command(b64(b"alice"))), b"Password:")
        self.assertLoggedIn(s.command(b64(PASSWORD.encode())), s)

    def test_cram_md5_plain_and_dovecot_context(self) -> None:
        for user in (b"alice", b"carl"):
            s = self.session()
            nonce = challenge(s.command(b"AUTH CRAM-MD5"))
            self.assertRegex(nonce, rb"^<\d+\.\d+@.+>$")
            digest = hmac.new(PASSWORD.encode(), nonce, hashlib.md5).hexdigest().encode()
            self.assertLoggedIn(s.command(b64(user + b" " + digest)), s)
        s = self.session("127.0.1.4")
        nonce = challenge(s.command(b"AUTH CRAM-MD5"))
        digest = hmac.new(b"wrong", nonce, hashlib.md5).hexdigest().encode()
        self.assertEqual(s.command(b64(b"alice " + digest)), b"-ERR [AUTH] Authentication failed.\r\n")

    def test_scram_from_plain_and_stored_keys(self) -> None:
        for mechanism, user in (("SCRAM-SHA-256", "alice"), ("SCRAM-SHA-256", "bob"),
                                ("SCRAM-SHA-1", "alice"), ("SCRAM-SHA-1", "dave")):
            s = self.session(tls=False)
            self.assertLoggedIn(scram_login(s, ScramClient(mechanism, user, PASSWORD), mechanism), s)

    def test_gnu_sasl_with_its_authorization_identity(self) -> None:
        """GNU SASL -- what mutt and neomutt use -- sends the user's own name as authorization
        identity (``n,a=alice,n=alice,...``): accepted, as Dovecot accepts it (it was refused: mutt
        fell back to USER/PASS after a logged "wrong password"); another user's name is not."""
        for mechanism, user, authzid, ok in (("SCRAM-SHA-256", "alice", "alice", True),
                                             ("SCRAM-SHA-256", "bob", "bob", True),
                                             ("SCRAM-SHA-1", "alice", "alice", True),
                                             ("SCRAM-SHA-256", "alice", "", True),
                                             ("SCRAM-SHA-256", "alice", "bob", False)):
            s = self.session(tls=False)
            args = ["gsasl", "--client", "-m", mechanism, "-a", user, "-p", PASSWORD, "--quiet", "--no-cb"]
            gsasl = subprocess.Popen(args + (["-z", authzid] if authzid else []), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.addCleanup(lambda g=gsasl: g.poll() is None and g.kill())
            self.assertEqual(gsasl.stdout.readline().strip(), mechanism.encode())
            reply = s.command(b"AUTH " + mechanism.encode() + b" " + gsasl.stdout.readline().strip())
            while reply.startswith(b"+ "):
                gsasl.stdin.write(reply[2:].strip() + b"\n")
                gsasl.stdin.flush()
                reply = s.command(gsasl.stdout.readline().strip())
            gsasl.stdin.close()
            gsasl.wait()
            for pipe in (gsasl.stdout, gsasl.stderr):
                pipe.close()
            if ok:
                self.assertLoggedIn(reply, s)
            else:
                self.assertEqual(reply, b"-ERR [AUTH] Authentication failed.\r\n")

    def test_scram_continuation_without_initial_response(self) -> None:
        s = self.session(tls=False)
        client = ScramClient("SCRAM-SHA-256", "alice", PASSWORD)
        self.assertEqual(s.command(b"AUTH SCRAM-SHA-256"), b"+ \r\n")
        first = s.command(b64(client.first()))
        final = s.command(b64(client.final(challenge(first))))
        self.assertTrue(client.check_server_final(challenge(final)))
        self.assertLoggedIn(s.command(b""), s)

    def test_scram_wrong_password_and_unknown_user_look_alike(self) -> None:
        replies = []
        for source, user in (("127.0.1.5", "alice"), ("127.0.1.6", "nobody")):
            s = self.session(source, tls=False)
            client = ScramClient("SCRAM-SHA-256", user, "wrong")
            first = challenge(s.command(b"AUTH SCRAM-SHA-256 " + b64(client.first())))
            self.assertIn(b",i=4096", first)
            replies.append(s.command(b64(client.final(first))))
        self.assertEqual(replies, [b"-ERR [AUTH] Authentication failed.\r\n"] * 2)

    def test_client_detects_wrong_server_signature(self) -> None:
        """Our client checks v=: a server that knew only a wrong key would be caught."""
        s = self.session(tls=False)
        client = ScramClient("SCRAM-SHA-256", "alice", PASSWORD)
        first = challenge(s.command(b"AUTH SCRAM-SHA-256 " + b64(client.first())))
        final = challenge(s.command(b64(client.final(first))))
        self.assertTrue(client.check_server_final(final))
        self.assertFalse(client.check_server_final(b"v=" + b64(b"\0" * 32)))
        self.assertEqual(s.command(b"*"), b"-ERR Authentication cancelled.\r\n")

    def test_scram_plus_tls13_exporter(self) -> None:
        s, tls = tls_session(self.server)
        self.addCleanup(s.close)
        binding = tls.channel_binding()
        self.assertEqual(binding[0], "tls-exporter")
        client = ScramClient("SCRAM-SHA-256-PLUS", "alice", PASSWORD, binding)
        self.assertLoggedIn(scram_login(s, client, "SCRAM-SHA-256-PLUS"), s)

    def test_scram_plus_tls12_server_end_point(self) -> None:
        s, tls = tls_session(self.server, max_version=SSL.TLS1_2_VERSION)
        self.addCleanup(s.close)
        binding = tls.channel_binding()
        self.assertEqual(binding[0], "tls-server-end-point")
        client = ScramClient("SCRAM-SHA-256-PLUS", "bob", PASSWORD, binding)
        self.assertLoggedIn(scram_login(s, client, "SCRAM-SHA-256-PLUS"), s)

    def test_scram_plus_tls13_server_end_point_with_scramp_client(self) -> None:
        """scramp (like many clients) binds with tls-server-end-point even on TLS 1.3: accepted too."""
        import scramp

        s = self.session()
        self.assertEqual(s.sock.version(), "TLSv1.3")
        client = scramp.ScramClient(["SCRAM-SHA-256-PLUS"], "alice", PASSWORD,
                                    channel_binding=("tls-server-end-point", s.sock))
        first = s.command(b"AUTH SCRAM-SHA-256-PLUS " + b64(client.get_client_first().encode()))
        client.set_server_first(challenge(first).decode())
        final = s.command(b64(client.get_client_final().encode()))
        client.set_server_final(challenge(final).decode())  # raises if the server signature is wrong
        self.assertLoggedIn(s.command(b""), s)

    def test_scram_plus_after_stls(self) -> None:
        import socket

        from tests.integration.support import Session

        sock = socket.create_connection(("127.0.0.1", self.server.port), 10)
        plain = Session(sock)
        plain.line()
        self.assertTrue(plain.command(b"STLS").startswith(b"+OK"))
        tls = OpenSSLSocket(sock, self.server.certs["ca"])
        s = Session(tls)  # type: ignore[arg-type]
        self.addCleanup(s.close)
        client = ScramClient("SCRAM-SHA-256-PLUS", "alice", PASSWORD, tls.channel_binding())
        self.assertLoggedIn(scram_login(s, client, "SCRAM-SHA-256-PLUS"), s)

    def test_scram_plus_wrong_binding_and_downgrade_refused(self) -> None:
        s, tls = tls_session(self.server)
        self.addCleanup(s.close)
        client = ScramClient("SCRAM-SHA-256-PLUS", "alice", PASSWORD, ("tls-exporter", b"\0" * 32))
        self.assertEqual(scram_login(s, client, "SCRAM-SHA-256-PLUS"),
                         b"-ERR [AUTH] Authentication failed.\r\n")
        # "y": the client believes the server has no channel binding; it does, so this is a downgrade.
        client = ScramClient("SCRAM-SHA-256", "alice", PASSWORD, tls.channel_binding())
        self.assertEqual(scram_login(s, client, "SCRAM-SHA-256"), b"-ERR [AUTH] Authentication failed.\r\n")

    def test_utf8_user_and_password(self) -> None:
        s = self.session()
        os.makedirs(self.server.maildir("jörg"), exist_ok=True)
        self.assertEqual(s.command(b"UTF8"), b"+OK UTF8 enabled\r\n")
        self.assertLoggedIn(s.command(b"AUTH PLAIN " + b64("\0jörg\0pässword".encode())), s)
        s = self.session(tls=False)
        client = ScramClient("SCRAM-SHA-256", "jörg", "pässword")
        self.assertLoggedIn(scram_login(s, client, "SCRAM-SHA-256"), s)
        # PLAIN with an unprepared password: U+00A0 (no-break space) is SASLprep'ed to a space.
        s = self.session()
        self.assertLoggedIn(s.command(b"AUTH PLAIN " + b64("\0alice\0secret\u00a0pass".encode())), s)

    def test_oauthbearer_and_xoauth2(self) -> None:
        token = issue_token(KEY, "alice").encode()
        s = self.session()
        message = b"n,a=alice,\x01host=localhost\x01port=110\x01auth=Bearer " + token + b"\x01\x01"
        self.assertLoggedIn(s.command(b"AUTH OAUTHBEARER " + b64(message)), s)
        s = self.session()
        self.assertLoggedIn(s.command(b"AUTH XOAUTH2 " + b64(b"user=alice\x01auth=Bearer " + token + b"\x01\x01")), s)
        s = self.session("127.0.1.7")
        forged = issue_token(b"x" * 32, "alice").encode()
        error = challenge(s.command(b"AUTH OAUTHBEARER " + b64(b"n,,\x01auth=Bearer " + forged + b"\x01\x01")))
        self.assertIn(b'"status": "invalid_token"', error)
        self.assertEqual(s.command(b"AQ=="), b"-ERR [AUTH] Authentication failed.\r\n")
        expired = issue_token(KEY, "alice", lifetime=-10).encode()
        other = issue_token(KEY, "bob").encode()
        for data in (b"n,,\x01auth=Bearer " + expired + b"\x01\x01",
                     b"n,a=alice,\x01auth=Bearer " + other + b"\x01\x01"):
            challenge(s.command(b"AUTH OAUTHBEARER " + b64(data)))
            self.assertEqual(s.command(b"AQ=="), b"-ERR [AUTH] Authentication failed.\r\n")

    def test_external_with_client_certificate(self) -> None:
        import socket

        sock = socket.create_connection(("127.0.0.1", self.server.tls_port), 10)
        tls = OpenSSLSocket(sock, self.server.certs["ca"], cert=(self.client_cert, self.client_key))
        from tests.integration.support import Session

        s = Session(tls)  # type: ignore[arg-type]
        self.addCleanup(s.close)
        s.line()
        s.send(b"CAPA\r\n")
        s.line()
        self.assertIn(b"EXTERNAL", s.body())
        self.assertEqual(s.command(b"AUTH EXTERNAL " + b64(b"mallory")),
                         b"-ERR [AUTH] Authentication failed.\r\n")
        os.makedirs(self.server.maildir("carol@example.org"), exist_ok=True)
        self.assertLoggedIn(s.command(b"AUTH EXTERNAL ="), s)


    def test_external_with_a_certificate_from_an_intermediate_ca(self) -> None:
        """Only the root is in --tls-client-ca; the client sends its intermediate with its
        certificate. The handshake passed, but the identity check dropped that intermediate
        (it took the server's peer chain for one that starts with the client's own certificate):
        no EXTERNAL."""
        import socket

        from tests.integration.support import Session

        leaf = self.client_ca_issuer.create_child_ca().issue_cert("carol@example.org", common_name="carol")
        chain = os.path.join(self.root, "client-via-intermediate.pem")
        key = os.path.join(self.root, "client-via-intermediate.key")
        with open(chain, "wb") as f:
            f.write(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))  # leaf, intermediate
        leaf.private_key_pem.write_to_path(key)
        sock = socket.create_connection(("127.0.0.1", self.server.tls_port), 10)
        s = Session(OpenSSLSocket(sock, self.server.certs["ca"], cert=(chain, key)))  # type: ignore[arg-type]
        self.addCleanup(s.close)
        s.line()
        s.send(b"CAPA\r\n")
        s.line()
        self.assertIn(b"EXTERNAL", s.body())
        os.makedirs(self.server.maildir("carol@example.org"), exist_ok=True)
        self.assertLoggedIn(s.command(b"AUTH EXTERNAL ="), s)


def _rewrite(path: str, text: str) -> None:
    """Replace a passwd-file so that the server sees the change even within one timestamp tick."""
    stamp = os.stat(path).st_mtime_ns
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))


class IdentityCheckTests(unittest.TestCase):
    """F6: a certificate or token names a user; that user must be in the passwd-file, enabled.
    F18: a cancelled OAuth failure is still a failure."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        key_file = os.path.join(self.root, "oauth.key")
        with open(key_file, "wb") as f:
            f.write(KEY)
        ca = trustme.CA()
        client_ca = os.path.join(self.root, "client-ca.pem")
        ca.cert_pem.write_to_path(client_ca)
        self.certs = {}
        for name in ("carol@example.org", "mallory@example.org"):
            cert = ca.issue_cert(name, common_name=name.split("@")[0])
            paths = (os.path.join(self.root, name + ".pem"), os.path.join(self.root, name + ".key"))
            cert.cert_chain_pems[0].write_to_path(paths[0])
            cert.private_key_pem.write_to_path(paths[1])
            self.certs[name] = paths
        self.server = start_server(self.root, {"erin": PASSWORD}, extra_args=[
            "--auth-failure-delay", "0.05", "--max-auth-failure-delay", "0.1",
            "--oauth-hmac-key", key_file, "--tls-client-ca", client_ca])
        self.addCleanup(self.server.stop)
        self.users = os.path.join(self.root, "users")
        _rewrite(self.users, "erin:{PLAIN}%s\ncarol@example.org:*\n" % PASSWORD)

    def cert_session(self, name: str):
        import socket

        from tests.integration.support import Session

        sock = socket.create_connection(("127.0.0.1", self.server.tls_port), 10,
                                        source_address=("127.0.0.2", 0))
        s = Session(OpenSSLSocket(sock, self.server.certs["ca"], cert=self.certs[name]))  # type: ignore[arg-type]
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))
        return s

    def token_login(self, user: str) -> bytes:
        s = connect_from(self.server, "127.0.0.2", tls=True)
        self.addCleanup(s.close)
        s.line()
        token = issue_token(KEY, user).encode()
        reply = s.command(b"AUTH XOAUTH2 " + b64(b"user=" + user.encode() + b"\x01auth=Bearer " + token + b"\x01\x01"))
        if reply == b"+OK Logged in.\r\n":
            s.command(b"QUIT")
            s.closed()
        return reply

    def test_removed_user_cannot_use_certificate_or_token(self) -> None:
        s = self.cert_session("carol@example.org")
        self.assertEqual(s.command(b"AUTH EXTERNAL ="), b"+OK Logged in.\r\n")
        s.command(b"QUIT")
        s.closed()
        self.assertEqual(self.token_login("erin"), b"+OK Logged in.\r\n")
        _rewrite(self.users, "somebody:{PLAIN}x\n")
        self.assertEqual(self.cert_session("carol@example.org").command(b"AUTH EXTERNAL ="),
                         b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(self.token_login("erin"), b"-ERR [AUTH] Authentication failed.\r\n")

    def test_disabled_user_cannot_log_in_at_all(self) -> None:
        """Dovecot's ``nologin`` extra field (the 8th field) or a ``!``-locked password field."""
        for entry in ("erin:{PLAIN}%s::::::nologin\ncarol@example.org:*::::::nologin\n" % PASSWORD,
                      "erin:!{PLAIN}%s\ncarol@example.org:!*\n" % PASSWORD):
            _rewrite(self.users, entry)
            self.assertEqual(self.cert_session("carol@example.org").command(b"AUTH EXTERNAL ="),
                             b"-ERR [AUTH] Authentication failed.\r\n")
            self.assertEqual(self.token_login("erin"), b"-ERR [AUTH] Authentication failed.\r\n")
            s = connect_from(self.server, "127.0.0.2", tls=True)
            self.addCleanup(s.close)
            self.assertEqual(s.login(b"erin", PASSWORD.encode()), b"-ERR [AUTH] Authentication failed.\r\n")

    def test_certificate_of_an_unknown_user_creates_no_maildir(self) -> None:
        s = self.cert_session("mallory@example.org")
        self.assertEqual(s.command(b"AUTH EXTERNAL ="), b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertFalse(os.path.exists(os.path.dirname(self.server.maildir("mallory@example.org"))))

    def test_oauth_cancel_after_the_error_challenge_is_a_failure(self) -> None:
        """F18: after the RFC 7628 error challenge, ``*`` is answered as the failure it is."""
        s = connect_from(self.server, "127.0.0.3", tls=True)
        self.addCleanup(s.close)
        s.line()
        forged = issue_token(b"x" * 32, "erin").encode()
        error = challenge(s.command(b"AUTH OAUTHBEARER " + b64(b"n,,\x01auth=Bearer " + forged + b"\x01\x01")))
        self.assertIn(b"invalid_token", error)
        self.assertEqual(s.command(b"*"), b"-ERR [AUTH] Authentication failed.\r\n")
        # A cancel before any failure is still a plain cancel.
        self.assertEqual(s.command(b"AUTH OAUTHBEARER"), b"+ \r\n")
        self.assertEqual(s.command(b"*"), b"-ERR Authentication cancelled.\r\n")


class PasswdReloadTests(unittest.TestCase):
    """F14: after ``twistd --uid``, a passwd-file the server can no longer read fails closed."""

    def test_unreadable_changed_file_refuses_old_passwords(self) -> None:
        self.assertEqual(os.getuid(), 0, "this test drops privileges and needs root (the CI runs as root)")
        root = reachable_directory(self, "pop3ng-reload-")
        server = start_server(root, {"alice": "old password"}, tls=False,
                              twistd_args=["--uid", "65534", "--gid", "65534"])
        self.addCleanup(server.stop)
        maildir = server.maildir("alice")
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(maildir, sub))
        for dirpath, _, _ in os.walk(os.path.join(root, "mail")):
            os.chown(dirpath, 65534, 65534)
        users = os.path.join(root, "users")

        def login(password: str) -> bytes:
            s = connect_from(server, "127.0.0.1")
            self.addCleanup(s.close)
            reply = s.login(b"alice", password.encode())
            s.command(b"QUIT")
            return reply

        self.assertEqual(login("old password"), b"+OK Logged in.\r\n")
        os.chmod(users, 0o600)  # root's own file now: the server (nobody) cannot read it
        _rewrite(users, "alice:{PLAIN}new password\n")
        # Temporary for everyone, right or wrong: not a wrong password, which fail2ban would count
        # against the real users while the administrator fixes the file's mode.
        unavailable = b"-ERR [SYS/TEMP] User database unavailable\r\n"
        for _ in range(3):
            self.assertEqual(login("old password"), unavailable)
        self.assertEqual(login("new password"), unavailable)
        log = server.log()
        self.assertEqual(log.count("cannot be re-read"), 1, log)
        self.assertNotIn("Traceback", log)
        self.assertNotIn("reason=password", log)
        self.assertEqual(log.count("reason=sys-temp"), 4, log)
        os.chmod(users, 0o644)
        self.assertEqual(login("new password"), b"+OK Logged in.\r\n")
        self.assertIn("read again", server.log())
