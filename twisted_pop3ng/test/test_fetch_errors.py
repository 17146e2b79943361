"""``pop3ng fetch`` and the client tell failures apart by type: STLS missing, UIDL missing, a
refused certificate; and the fetch calls its crash hook at each step where a crash must lose nothing."""

from __future__ import annotations

import importlib
import os
from typing import Any, List

from OpenSSL import SSL
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest

from twisted_pop3ng import client as pop3, fetch, server
from twisted_pop3ng.fetch.run import FetchOptions
from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.server.realm import MailboxRealm

# The module (the package's ``connect`` attribute is the function of the same name).
client_connect = importlib.import_module("twisted_pop3ng.client.connect")


class _ScriptedEndpoint:
    """Connects a client to a StringTransport; the test plays the server by hand."""

    def __init__(self) -> None:
        self.client: Any = None
        self.transport = StringTransport()

    def connect(self, factory: Any) -> defer.Deferred:
        self.client = factory.buildProtocol(None)
        self.client.makeConnection(self.transport)
        return defer.succeed(self.client)


class StlsRequiredTests(unittest.TestCase):
    def test_no_stls_offered_when_tls_is_required(self) -> None:
        clock = task.Clock()
        endpoint = _ScriptedEndpoint()
        d = client_connect.connect(clock, endpoint, "bob", "pw", hostname="pop.example")
        endpoint.client.dataReceived(b"+OK ready\r\n")
        self.assertEqual(endpoint.transport.value(), b"CAPA\r\n")
        endpoint.client.dataReceived(b"+OK\r\nUSER\r\nUIDL\r\n.\r\n")
        failure = self.failureResultOf(d, pop3.StlsRequired)
        self.assertIsInstance(failure.value, pop3.CapabilityError)
        self.assertEqual(fetch.classify_exit(failure.value)[0], fetch.EXIT_TLS)
        self.assertNotIn(b"USER", endpoint.transport.value())  # no password went out in the clear


class _Result:
    def __init__(self, d: defer.Deferred) -> None:
        self.value: Any = None
        d.addBoth(self._set)

    def _set(self, value: Any) -> None:
        self.value = value


class _FetchTestCase(unittest.TestCase):
    def options(self, **extra: Any) -> FetchOptions:
        root = os.path.abspath(self.mktemp())
        return FetchOptions("pop3://bob@pop.example", "maildir", os.path.join(root, "Maildir"), "pw",
                            state_path=os.path.join(root, "state.json"), **extra)


class FetchAgainstScriptedServerTests(_FetchTestCase):

    def test_server_without_uidl(self) -> None:
        client = pop3.POP3Client(timeout=None)
        transport = StringTransport()
        client.makeConnection(transport)
        client.dataReceived(b"+OK ready\r\n")
        client.capabilities = {"USER": []}
        self.patch(client_connect, "connect", lambda *a, **kw: defer.succeed(client))
        result = _Result(defer.ensureDeferred(fetch.fetch(task.Clock(), self.options())))
        self.assertEqual(transport.value(), b"UIDL\r\n")
        client.dataReceived(b"-ERR unknown command\r\n")
        client.dataReceived(b"+OK\r\n1 100\r\n.\r\n")
        self.assertIsInstance(result.value, Failure)
        error = result.value.value
        self.assertIsInstance(error, pop3.UidlUnsupported)
        self.assertIsInstance(error, pop3.CapabilityError)
        self.assertEqual(fetch.classify_exit(error), (fetch.EXIT_ERROR, str(error)))

    def test_sys_temp_is_a_temporary_failure_not_a_busy_server(self) -> None:
        code, text = fetch.classify_exit(pop3.TemporaryError("Mail store unavailable", "SYS/TEMP", "PASS"))
        self.assertEqual(code, fetch.EXIT_TRY_LATER)
        self.assertTrue(text.startswith("temporary failure on the server, try again later: "), text)
        code, text = fetch.classify_exit(pop3.InUseError("locked", "IN-USE", "PASS"))
        self.assertTrue(text.startswith("server busy, try again later: "), text)

    def test_the_account_lock_is_not_a_busy_server(self) -> None:
        code, text = fetch.classify_exit(fetch.FetchBusy("another pop3ng fetch is running"))
        self.assertEqual(code, fetch.EXIT_TRY_LATER)
        self.assertNotIn("server", text)
        self.assertIn("another pop3ng fetch is running", text)


def _server_config() -> Any:
    from twisted_pop3ng.server.policy import SecurityConfig

    return server.ServerConfig(security=SecurityConfig(allow_plaintext_auth=True))


class CrashHookTests(_FetchTestCase):
    """The fetch against our own server in memory, with a crash hook recording the steps."""

    def test_steps_in_order(self) -> None:
        clock = task.Clock()
        store = MemoryStore()
        for i in range(3):
            store.deliver("bob", b"Subject: %d\r\n\r\nbody\r\n" % i)
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(b"bob", b"pw")
        factory = server.POP3ServerFactory(Portal(MailboxRealm(store), [checker]), _server_config(),
                                           clock=clock)
        pumps: List[Any] = []

        def connect(*args: Any, **kwargs: Any) -> defer.Deferred:
            client, _, pump = iosim.connectedServerAndClient(
                lambda: factory.buildProtocol(None), lambda: pop3.POP3Client(clock=clock), clock=clock)
            pumps.append(pump)
            d = client.ready.addCallback(lambda _: client.capa())
            d.addCallback(lambda _: client.login("bob", "pw", allow_plaintext=True))
            return d.addCallback(lambda _: client)

        self.patch(client_connect, "connect", connect)
        steps: List[str] = []
        options = self.options(crash_hook=steps.append)
        result = _Result(defer.ensureDeferred(fetch.fetch(clock, options)))
        for _ in range(200):
            for pump in pumps:
                pump.flush()
            if result.value is not None:
                break
            clock.advance(1)
        self.assertEqual((result.value.delivered, result.value.deleted), (3, 3))
        self.assertEqual(steps, ["delivered", "before-dele", "before-quit", "after-quit"])
        self.assertEqual(store.maildrops["bob"], [])
        self.assertEqual(len(os.listdir(os.path.join(options.target, "new"))), 3)


class TLSVerificationTests(unittest.TestCase):
    def lost_with(self, error: Exception) -> BaseException:
        client = pop3.POP3Client(timeout=None)
        client.makeConnection(StringTransport())
        client.dataReceived(b"+OK ready\r\n")
        d = client.noop()
        client.connectionLost(Failure(error))
        return self.failureResultOf(d, pop3.TLSError).value

    def test_untrusted_certificate(self) -> None:
        error = self.lost_with(SSL.Error([("SSL routines", "", "certificate verify failed")]))
        self.assertIsInstance(error, pop3.TLSVerificationError)
        self.assertIn("not trusted", str(error))
        self.assertEqual(fetch.classify_exit(error)[0], fetch.EXIT_TLS)

    def test_wrong_host_name(self) -> None:
        from service_identity import VerificationError

        error = self.lost_with(VerificationError(errors=[]))
        self.assertIsInstance(error, pop3.TLSVerificationError)
        self.assertIn("does not match the host name", str(error))

    def test_other_handshake_failure_is_not_a_verification_error(self) -> None:
        error = self.lost_with(SSL.Error([("SSL routines", "", "wrong version number")]))
        self.assertNotIsInstance(error, pop3.TLSVerificationError)
        self.assertEqual(fetch.classify_exit(error)[0], fetch.EXIT_TLS)
