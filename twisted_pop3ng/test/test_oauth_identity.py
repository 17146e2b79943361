"""Identities proven without a password (certificate, token, SCRAM) meet the user database (F6);
the passwd-file fails closed when it cannot be re-read (F14); the OAuth options of ``twistd pop3ng``."""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, List

from twisted.cred.checkers import FilePasswordDB, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.python import usage
from twisted.trial import unittest
from zope.interface import implementer

from twisted_pop3ng.auth.checkers import (IUserDatabase, PasswdFileChecker, Preauthenticated,
                                          PreauthenticatedChecker, parse_passwd_file)
from twisted_pop3ng.errors import TemporaryFailure


def _file(text: str) -> str:
    fd, path = tempfile.mkstemp(prefix="pop3ng-users-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _rewrite(path: str, text: str) -> None:
    stamp = os.stat(path).st_mtime_ns
    with open(path, "w") as f:
        f.write(text)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))


class PreauthenticatedCheckerTests(unittest.TestCase):
    def avatar(self, checker: PreauthenticatedChecker, name: str) -> Any:
        return checker.requestAvatarId(Preauthenticated(name, "EXTERNAL"))

    def test_passwd_file_present_and_enabled(self) -> None:
        path = _file("alice:{PLAIN}x\nbob:*\ncarol:{PLAIN}x::::::nologin\ndave:!{PLAIN}x\n"
                     "erin:{PLAIN}x::::::userdb_quota=1G nologin reason=gone\n")
        passwd = PasswdFileChecker(path)
        checker = PreauthenticatedChecker([passwd])
        self.assertEqual(self.successResultOf(self.avatar(checker, "alice")), "alice")
        self.assertEqual(self.successResultOf(self.avatar(checker, "bob")), "bob")  # "*": no password only
        for name in ("carol", "dave", "erin", "mallory", ""):
            self.failureResultOf(self.avatar(checker, name), UnauthorizedLogin)
        _rewrite(path, "bob:*\n")
        self.failureResultOf(self.avatar(checker, "alice"), UnauthorizedLogin)

    def test_disabled_entries_refuse_passwords_too(self) -> None:
        from twisted.cred.credentials import UsernamePassword

        passwd = PasswdFileChecker(_file("carol:{PLAIN}x::::::nologin\nalice:{PLAIN}x\n"))
        self.failureResultOf(passwd.requestAvatarId(UsernamePassword(b"carol", b"x")), UnauthorizedLogin)
        self.assertEqual(self.successResultOf(passwd.requestAvatarId(UsernamePassword(b"alice", b"x"))),
                         "alice")

    def test_extra_fields_are_the_eighth_field(self) -> None:
        users = parse_passwd_file("a:{PLAIN}x:1:1::/home/a:/bin/sh:nologin\nb:{PLAIN}x:::::nologin\n")
        self.assertTrue(users["a"].disabled)
        self.assertFalse(users["b"].disabled)  # "nologin" in the shell field is not an extra field

    def test_portal_checkers_are_asked_at_each_login(self) -> None:
        memory = InMemoryUsernamePasswordDatabaseDontUse(alice=b"x")
        portal = Portal(None, [memory])
        checker = PreauthenticatedChecker(portal)
        portal.registerChecker(checker)
        self.assertEqual(self.successResultOf(self.avatar(checker, "alice")), "alice")
        self.failureResultOf(self.avatar(checker, "bob"), UnauthorizedLogin)
        memory.addUser(b"bob", b"y")  # bytes keys, as twistd pop3ng makes them
        self.assertEqual(self.successResultOf(self.avatar(checker, "bob")), "bob")

    def test_file_checker(self) -> None:
        checker = PreauthenticatedChecker([FilePasswordDB(_file("alice:x\n"), cache=False)])
        self.assertEqual(self.successResultOf(self.avatar(checker, "alice")), "alice")
        self.failureResultOf(self.avatar(checker, "bob"), UnauthorizedLogin)

    def test_asynchronous_user_database(self) -> None:
        @implementer(IUserDatabase)
        class Remote:
            credentialInterfaces = ()

            def user_allowed(self, username: str) -> defer.Deferred:
                return defer.succeed(username == "alice")

        checker = PreauthenticatedChecker([Remote()])
        self.assertEqual(self.successResultOf(self.avatar(checker, "alice")), "alice")
        self.failureResultOf(self.avatar(checker, "bob"), UnauthorizedLogin)

    def test_no_checker_that_can_look_users_up_refuses(self) -> None:
        checker = PreauthenticatedChecker([object()])
        self.failureResultOf(self.avatar(checker, "alice"), UnauthorizedLogin)
        self.failureResultOf(self.avatar(checker, "alice"), UnauthorizedLogin)
        self.assertTrue(checker._warned)

    def test_without_a_user_database_the_old_behaviour(self) -> None:
        self.assertEqual(self.successResultOf(self.avatar(PreauthenticatedChecker(), "x")), "x")


class PasswdReloadTests(unittest.TestCase):
    """F14: a changed file that cannot be read refuses every login, logged once; then recovers."""

    def test_unreadable_file_fails_closed_and_logs_once(self) -> None:
        from twisted.logger import globalLogPublisher

        events: List[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        path = _file("alice:{PLAIN}old\n")
        checker = PasswdFileChecker(path)
        self.assertIsNotNone(checker.lookup("alice"))
        os.rename(path, path + ".moved")  # as unreadable as a 0600 file after the privilege drop
        for _ in range(5):  # temporary, not "no such user": no bounce, no fail2ban count
            self.assertRaises(TemporaryFailure, checker.lookup, "alice")
            self.assertRaises(TemporaryFailure, checker.user_allowed, "alice")
            self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"alice", b"old")),
                                 TemporaryFailure)
            self.assertEqual(checker.secret_schemes(), set())
        errors = [e for e in events if "cannot be re-read" in e.get("log_format", "")]
        self.assertEqual(len(errors), 1)
        self.assertNotIn("log_failure", errors[0])  # a clear line, no traceback
        os.rename(path + ".moved", path)
        self.assertEqual(checker.lookup("alice").password, "{PLAIN}old")
        self.assertTrue(any("read again" in e.get("log_format", "") for e in events))


class ClientCertificateTests(unittest.TestCase):
    """F6: EXTERNAL trusts a certificate only if it chains to the configured CAs, even when the
    TLS context's verify callback accepts anything."""

    def handshake(self, client_cert: Any) -> Any:
        import trustme
        from cryptography import x509
        from OpenSSL import SSL, crypto

        directory = tempfile.mkdtemp()
        server_ca = trustme.CA()
        server = SSL.Context(SSL.TLS_SERVER_METHOD)
        server_ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(directory + "/s.pem")
        server.use_certificate_chain_file(directory + "/s.pem")
        server.use_privatekey_file(directory + "/s.pem")
        ca_cert = x509.load_pem_x509_certificate(self.client_ca.cert_pem.bytes())
        server.get_cert_store().add_cert(crypto.X509.from_cryptography(ca_cert))
        server.set_verify(SSL.VERIFY_PEER, lambda *args: True)  # the unsafe embedding pattern
        client = SSL.Context(SSL.TLS_CLIENT_METHOD)
        client_cert.private_key_and_cert_chain_pem.write_to_path(directory + "/c.pem")
        client.use_certificate_chain_file(directory + "/c.pem")
        client.use_privatekey_file(directory + "/c.pem")
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        a.setblocking(False)
        b.setblocking(False)
        server_conn, client_conn = SSL.Connection(server, a), SSL.Connection(client, b)
        server_conn.set_accept_state()
        client_conn.set_connect_state()
        done = set()
        for _ in range(50):
            for conn in (client_conn, server_conn):
                try:
                    conn.do_handshake()
                    done.add(conn)
                except SSL.WantReadError:
                    pass
            if len(done) == 2:
                break
        self.assertEqual(len(done), 2)
        return server_conn

    def setUp(self) -> None:
        import trustme

        self.client_ca = trustme.CA()

    def identities(self, conn: Any) -> List[str]:
        from twisted.internet.interfaces import ISSLTransport
        from zope.interface import directlyProvides

        from twisted_pop3ng.server import auth_verbs

        class Transport:
            def getHandle(self) -> Any:
                return conn

        transport = Transport()
        directlyProvides(transport, ISSLTransport)

        class Protocol:
            pass

        protocol = Protocol()
        protocol.transport = transport  # type: ignore[attr-defined]
        return auth_verbs.client_identities(protocol)

    def test_ca_signed_certificate_names_the_user(self) -> None:
        conn = self.handshake(self.client_ca.issue_cert("carol@example.org", common_name="carol"))
        self.assertEqual(self.identities(conn), ["carol@example.org", "carol"])

    def test_self_signed_certificate_names_nobody(self) -> None:
        import trustme

        impostor = trustme.CA().issue_cert("carol@example.org", common_name="carol")
        conn = self.handshake(impostor)
        self.assertIsNotNone(conn.get_peer_certificate())  # the handshake let it through
        self.assertEqual(self.identities(conn), [])


class OptionsTests(unittest.TestCase):
    """The OAuth options: clear usage errors for unsafe or incomplete settings."""

    def parse(self, *arguments: str) -> Any:
        from twisted_pop3ng.service.options import Options

        directory = tempfile.mkdtemp()
        users = _file("alice:{PLAIN}x\n")
        options = Options()
        options.parseOptions(["--auth", "passwd-file:" + users, "--mailbox",
                              "maildir:" + directory + "/{user}"] + list(arguments))
        return options

    def jwks_file(self) -> str:
        from twisted_pop3ng.test.test_oauth_jwt import Keys, rsa_jwk
        import json

        return _file(json.dumps({"keys": [rsa_jwk(Keys.rsa("one"), "k1")]}))

    def assertUsage(self, fragment: str, *arguments: str) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(*arguments)
        self.assertIn(fragment, str(caught.exception))

    def test_user_database_checker_registered(self) -> None:
        from twisted_pop3ng.service.build import make_factory

        portal = make_factory(self.parse()).portal
        found = [c for c in portal.checkers.values() if isinstance(c, PreauthenticatedChecker)]
        self.assertEqual(len(found), 1)
        self.assertIsInstance(found[0]._checkers()[0], PasswdFileChecker)

    def test_jwks(self) -> None:
        from twisted_pop3ng.auth.jwt_validator import JWTValidator

        options = self.parse("--oauth-jwks-file", self.jwks_file(), "--oauth-issuer", "https://i",
                             "--oauth-audience", "a", "--oauth-algorithms", "RS256")
        validator = options["token-validator"]
        self.assertIsInstance(validator, JWTValidator)
        self.assertEqual((validator.algorithms, validator.username_claim), (("RS256",), "email"))
        options = self.parse("--oauth-jwks-url", "https://idp.example.org/jwks", "--oauth-issuer",
                             "https://i", "--oauth-audience", "a", "--oauth-username-claim", "sub")
        self.assertEqual(options["token-validator"].username_claim, "sub")

    def test_jwks_usage_errors(self) -> None:
        jwks = self.jwks_file()
        self.assertUsage("--oauth-issuer and --oauth-audience", "--oauth-jwks-file", jwks,
                         "--oauth-issuer", "https://i")
        self.assertUsage("never allowed", "--oauth-jwks-file", jwks, "--oauth-issuer", "https://i",
                         "--oauth-audience", "a", "--oauth-algorithms", "RS256,HS256")
        self.assertUsage("never allowed", "--oauth-jwks-file", jwks, "--oauth-issuer", "https://i",
                         "--oauth-audience", "a", "--oauth-algorithms", "none")
        self.assertUsage("https://", "--oauth-jwks-url", "http://idp.example.org/jwks",
                         "--oauth-issuer", "https://i", "--oauth-audience", "a")
        self.assertUsage("no usable signature key", "--oauth-jwks-file", _file('{"keys": []}'),
                         "--oauth-issuer", "https://i", "--oauth-audience", "a")
        self.assertUsage("only one of", "--oauth-jwks-file", jwks, "--oauth-hmac-key", jwks)
        self.assertUsage("needs --oauth-jwks-url", "--oauth-audience", "a")

    def test_introspection(self) -> None:
        from twisted_pop3ng.auth.introspection import IntrospectionValidator

        secret = _file("s3cret\n")
        options = self.parse("--oauth-introspection-url", "http://127.0.0.1:9/introspect",
                             "--oauth-client-id", "c", "--oauth-client-secret-file", secret)
        self.assertIsInstance(options["token-validator"], IntrospectionValidator)
        self.assertUsage("needs --oauth-client-id", "--oauth-introspection-url", "https://i/x")
        self.assertUsage("https://", "--oauth-introspection-url", "http://10.0.0.1/x",
                         "--oauth-client-id", "c", "--oauth-client-secret-file", secret)
        self.assertUsage("empty", "--oauth-introspection-url", "https://i/x", "--oauth-client-id", "c",
                         "--oauth-client-secret-file", _file(""))
