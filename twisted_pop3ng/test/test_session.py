"""A server's own state in view: per-factory verbs and settings, the per-connection Session, and the
declared extension points (IWholeMessageReader, IUIDLListing, IInlineChecker)."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer, implementer_only

from twisted_pop3ng import server
from twisted_pop3ng.auth import checkers
from twisted_pop3ng.interfaces import (LATER, IInlineChecker, IMailbox, IUIDLListing,
                                       IWholeMessageReader)
from twisted_pop3ng.mailbox.maildir.store import MaildirMailbox
from twisted_pop3ng.mailbox.memory import MemoryMailbox, MemoryStore
from twisted_pop3ng.server.policy import AbuseGuard, SecurityConfig
from twisted_pop3ng.server.realm import MailboxRealm
from twisted_pop3ng.server.session import Session
from twisted_pop3ng.server.states import AUTHORIZATION, TRANSACTION, UPDATE

MESSAGES = [b"Subject: one\n\nfirst body\n.dotted\n", b"Subject: two\r\n\r\nsecond\r\n"]


class CountingMailbox(MemoryMailbox):
    """A MemoryMailbox (declared IWholeMessageReader) that records how messages were read."""

    def __init__(self, *args: Any) -> None:
        MemoryMailbox.__init__(self, *args)
        self.calls: List[Tuple[str, int]] = []

    def open_message(self, index: int) -> Any:
        self.calls.append(("open", index))
        return MemoryMailbox.open_message(self, index)

    def read_whole(self, index: int, limit: int) -> Optional[bytes]:
        self.calls.append(("whole", index))
        data = self._messages[index][1]
        return data if len(data) < limit else None


@implementer_only(IMailbox)
class UndeclaredMailbox(CountingMailbox):
    """Has a ``read_whole`` method but does not declare IWholeMessageReader: it is not used."""


class ChoosingStore(MemoryStore):
    """A MemoryStore whose mailboxes are of ``mailbox_class``; keeps the ones it opened."""

    def __init__(self, mailbox_class: Any) -> None:
        MemoryStore.__init__(self)
        self.mailbox_class = mailbox_class
        self.opened: List[Any] = []

    def open_mailbox(self, user: str) -> Any:
        MemoryStore.open_mailbox(self, user)  # takes the lock
        box = self.mailbox_class(self, user, list(self.maildrops.get(user, [])))
        self.opened.append(box)
        return box


class SessionTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()

    def factory(self, store: Any = None, checker: Any = None, **kwargs: Any) -> server.POP3ServerFactory:
        if store is None:
            store = MemoryStore()
        for message in MESSAGES:
            store.deliver("alice", message)
        if checker is None:
            checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"pw")
        # StringTransport's peer is remote: allow USER/PASS without TLS (policy: test_security).
        config = server.ServerConfig(security=SecurityConfig(allow_plaintext_auth=True))
        return server.POP3ServerFactory(Portal(MailboxRealm(store), [checker]), config,
                                        clock=self.clock, **kwargs)

    def connect(self, factory: server.POP3ServerFactory) -> Tuple[Any, StringTransport]:
        proto: Any = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        transport.clear()
        return proto, transport

    def talk(self, proto: Any, transport: StringTransport, data: bytes, until: bytes = b"") -> bytes:
        transport.clear()
        proto.dataReceived(data)
        reply = transport.value()
        for _ in range(100):  # a streamed message takes some reactor turns
            if reply.endswith(until):
                break
            transport.clear()
            self.clock.advance(0)
            reply += transport.value()
        return reply


class CommandSetTests(SessionTestCase):
    def test_a_verb_registered_on_one_factory_is_not_on_another(self) -> None:
        one, other = self.factory(), self.factory()

        @one.commands.command("XHELLO", AUTHORIZATION, capability="XHELLO")
        def do_XHELLO(protocol: Any, cmd: Any) -> None:
            protocol.reply(True, "hello")

        self.assertEqual(self.talk(*self.connect(one), b"XHELLO\r\n"), b"+OK hello\r\n")
        self.assertEqual(self.talk(*self.connect(other), b"XHELLO\r\n"),
                         b"-ERR Unknown command: XHELLO\r\n")
        self.assertNotIn(b"XHELLO", self.talk(*self.connect(other), b"CAPA\r\n"))
        # Nor on the defaults that later factories copy.
        self.assertEqual(self.talk(*self.connect(self.factory()), b"XHELLO\r\n"),
                         b"-ERR Unknown command: XHELLO\r\n")

    def test_the_legacy_decorator_extends_factories_made_afterwards(self) -> None:
        before = self.factory()

        @server.command("XLEGACY", AUTHORIZATION)
        def do_XLEGACY(protocol: Any, cmd: Any) -> None:
            protocol.reply(True, "legacy")

        def unregister() -> None:
            del server.DEFAULT_COMMANDS.handlers["XLEGACY"]
            server.DEFAULT_COMMANDS.known.clear()

        self.addCleanup(unregister)
        after = self.factory()
        self.assertEqual(self.talk(*self.connect(after), b"XLEGACY\r\n"), b"+OK legacy\r\n")
        self.assertEqual(self.talk(*self.connect(before), b"XLEGACY\r\n"),
                         b"-ERR Unknown command: XLEGACY\r\n")


class FactorySettingsTests(SessionTestCase):
    def test_settings_are_constructor_arguments(self) -> None:
        tls, validator, key = object(), object(), b"k" * 32
        guard = AbuseGuard(SecurityConfig(), 0.0, self.clock)
        factory = self.factory(tls=tls, token_validator=validator, abuse_guard=guard,
                               sasl_secret_key=key)
        self.assertIs(factory.tls, tls)
        self.assertIs(factory.token_validator, validator)
        self.assertIs(factory.abuse_guard, guard)
        self.assertEqual(factory.sasl_secret_key, key)

    def test_defaults(self) -> None:
        one = self.factory()
        self.assertIsNone(one.tls)
        self.assertIsNone(one.token_validator)
        # None: the secret store's stable key, not a random one per process (F7)
        self.assertIsNone(one.sasl_secret_key)

    def test_the_guard_enforces_the_security_config_in_force_at_first_use(self) -> None:
        """``twistd pop3ng`` replaces ``config.security`` after making the factory."""
        factory = self.factory()
        factory.config.security = SecurityConfig(max_connections_per_user=3)
        self.assertIs(factory.abuse_guard.config, factory.config.security)
        self.assertIs(factory.abuse_guard, factory.abuse_guard)

    def test_stls_and_oauth_are_offered_from_the_arguments(self) -> None:
        capa = self.talk(*self.connect(self.factory()), b"CAPA\r\n")
        self.assertNotIn(b"STLS", capa)
        self.assertNotIn(b"OAUTHBEARER", capa)
        capa = self.talk(*self.connect(self.factory(tls=object(), token_validator=object())),
                         b"CAPA\r\n")
        self.assertIn(b"\r\nSTLS\r\n", capa)
        self.assertIn(b"OAUTHBEARER", capa)

    def test_the_preauthenticated_checker_is_on_the_portal_from_the_start(self) -> None:
        factory = self.factory()
        checker = factory.portal.checkers.get(checkers.IPreauthenticated)
        self.assertIsInstance(checker, checkers.PreauthenticatedChecker)

    def test_a_portals_own_preauthenticated_checker_is_kept(self) -> None:
        @implementer(ICredentialsChecker)
        class Own:
            credentialInterfaces = (checkers.IPreauthenticated,)

            def requestAvatarId(self, credentials: Any) -> Any:
                return defer.succeed(credentials.username)

        own = Own()
        portal = Portal(MailboxRealm(MemoryStore()), [own])
        server.POP3ServerFactory(portal, clock=self.clock)
        self.assertIs(portal.checkers[checkers.IPreauthenticated], own)


class SessionStateTests(SessionTestCase):
    def test_the_state_of_a_session_is_on_its_session(self) -> None:
        factory = self.factory()
        proto, transport = self.connect(factory)
        session = proto.session
        self.assertIsInstance(session, Session)
        self.assertEqual(session.state, AUTHORIZATION)
        # The remote peer is counted against its address on the session, released at the end.
        self.assertEqual(session.counted_address, "192.168.1.1")
        self.assertEqual(factory.abuse_guard.connections, {"192.168.1.1": 1})
        self.talk(proto, transport, b"USER alice\r\n")
        self.assertEqual(session.username, b"alice")
        self.assertEqual(self.talk(proto, transport, b"PASS pw\r\nDELE 1\r\nUTF8\r\n"),
                         b"+OK Logged in.\r\n+OK Marked to be deleted.\r\n"
                         b"-ERR UTF8 is not valid in the TRANSACTION state\r\n")
        self.assertEqual(session.state, TRANSACTION)
        self.assertIsNone(session.username)
        self.assertEqual(session.admitted_user, "alice")
        self.assertEqual(session.deleted, {0})
        self.assertEqual(len(session.messages), 2)
        self.assertIsInstance(session.mailbox, MemoryMailbox)
        self.assertEqual(session.bad_commands, 1)
        # The protocol's views are the session's.
        self.assertEqual((proto.state, proto.deleted, proto.mailbox),
                         (TRANSACTION, {0}, session.mailbox))
        self.talk(proto, transport, b"QUIT\r\n")
        self.assertEqual(session.state, UPDATE)
        self.assertIsNone(session.mailbox)
        proto.connectionLost(None)
        self.assertIsNone(session.counted_address)
        self.assertIsNone(session.admitted_user)
        self.assertEqual(factory.abuse_guard.connections, {})
        self.assertEqual(factory.abuse_guard.users, {})

    def test_the_protocol_keeps_no_session_state_of_its_own(self) -> None:
        """What an idle connection costs is the protocol (a fixed few I/O attributes) plus one
        slotted Session: no per-session attributes appear on the protocol, before or after login."""
        proto, transport = self.connect(self.factory())
        self.assertFalse(hasattr(proto.session, "__dict__"))
        # Twisted's (factory, transport, connected), the idle and login deadlines and the session.
        idle = {"factory", "transport", "connected", "_deadline", "_timeout", "_hard_deadline",
                "session"}
        self.assertLessEqual(set(vars(proto)), idle)
        self.talk(proto, transport, b"USER alice\r\nPASS pw\r\nDELE 1\r\nXYZ\r\nRETR 2\r\n")
        moved = {"state", "mailbox", "messages", "deleted", "line_hook", "apop_timestamp", "utf8",
                 "_username", "_logout", "_bad_commands", "_admitted_user", "_counted_address",
                 "_address_cache"}
        self.assertEqual(set(vars(proto)) & moved, set())


class ExtensionPointTests(SessionTestCase):
    def retrieve(self, mailbox_class: Any) -> Tuple[bytes, Any]:
        store = ChoosingStore(mailbox_class)
        proto, transport = self.connect(self.factory(store))
        self.talk(proto, transport, b"USER alice\r\nPASS pw\r\n")
        reply = self.talk(proto, transport, b"RETR 1\r\nTOP 2 0\r\nNOOP\r\n", until=b"+OK\r\n")
        return reply, store.opened[0]

    def test_declared_whole_reader_and_streaming_send_the_same_bytes(self) -> None:
        whole, declared = self.retrieve(CountingMailbox)
        streamed, undeclared = self.retrieve(UndeclaredMailbox)
        self.assertEqual(declared.calls, [("whole", 0), ("whole", 1)])
        self.assertEqual(undeclared.calls, [("open", 0), ("open", 1)])
        self.assertEqual(whole, streamed)
        self.assertTrue(whole.startswith(b"+OK 37 octets\r\nSubject: one\r\n\r\nfirst body\r\n..dotted"),
                        whole)
        self.assertTrue(whole.endswith(b"+OK Message follows\r\nSubject: two\r\n\r\n.\r\n+OK\r\n"),
                        whole)

    def test_extensions_are_bound_once_at_login(self) -> None:
        store = ChoosingStore(CountingMailbox)
        proto, transport = self.connect(self.factory(store))
        self.assertIsNone(proto.session.read_whole)
        self.talk(proto, transport, b"USER alice\r\nPASS pw\r\n")
        self.assertEqual(proto.session.read_whole, store.opened[0].read_whole)
        self.assertIsNone(proto.session.uidl_listing)  # MemoryMailbox keeps no listing

    def test_declared_uidl_listing_is_used_undeclared_is_not(self) -> None:
        @implementer(IUIDLListing)
        class Listing(CountingMailbox):
            def uidl_listing(self) -> bytes:
                return b"1 kept-one\r\n2 kept-two\r\n"

        @implementer_only(IMailbox)
        class Unlisted(Listing):
            pass

        for mailbox_class, body in [(Listing, b"1 kept-one\r\n2 kept-two\r\n"),
                                    (Unlisted, b"1 m1\r\n2 m2\r\n")]:
            store = ChoosingStore(mailbox_class)
            proto, transport = self.connect(self.factory(store))
            self.talk(proto, transport, b"USER alice\r\nPASS pw\r\n")
            self.assertEqual(self.talk(proto, transport, b"UIDL\r\n"),
                             b"+OK Unique-ID listing follows\r\n" + body + b".\r\n")

    def test_the_builtin_mailboxes_declare_their_extensions(self) -> None:
        self.assertTrue(IWholeMessageReader.implementedBy(MemoryMailbox))
        self.assertTrue(IWholeMessageReader.implementedBy(MaildirMailbox))
        self.assertTrue(IUIDLListing.implementedBy(MaildirMailbox))
        self.assertTrue(IInlineChecker.implementedBy(checkers.PasswdFileChecker))
        self.assertIs(checkers.LATER, LATER)


@implementer(ICredentialsChecker)
class AsyncChecker:
    """Answers through requestAvatarId only when the test fires it; ``answer`` is the inline one."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.pending: List[defer.Deferred] = []

    def avatar_id_now(self, credentials: Any) -> Any:
        return self.answer

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d.addCallback(lambda _: credentials.username.decode())


@implementer(IInlineChecker)
class InlineChecker(AsyncChecker):
    pass


class InlineCheckerTests(SessionTestCase):
    def login(self, checker: AsyncChecker) -> bytes:
        proto, transport = self.connect(self.factory(checker=checker))
        return self.talk(proto, transport, b"USER alice\r\nPASS pw\r\nSTAT\r\n")

    def test_an_inline_checker_answers_at_once(self) -> None:
        checker = InlineChecker("alice")
        self.assertEqual(self.login(checker),
                         b"+OK Send your password.\r\n+OK Logged in.\r\n+OK 2 61\r\n")
        self.assertEqual(checker.pending, [])

    def test_later_and_undeclared_checkers_go_through_the_portal(self) -> None:
        for checker in [InlineChecker(LATER), AsyncChecker("alice")]:
            self.assertEqual(self.login(checker), b"+OK Send your password.\r\n")
            self.assertEqual(len(checker.pending), 1)
