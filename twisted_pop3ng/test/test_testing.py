"""twisted_pop3ng.testing: the public harness, checked against the real server's behaviour."""

from __future__ import annotations

import io
from typing import Dict, List, Sequence

from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer

from twisted_pop3ng.errors import MailboxInUse
from twisted_pop3ng.interfaces import IMailbox, IMailboxStore, MessageInfo
from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.server import ServerConfig
from twisted_pop3ng.server.io import CHUNK_SIZE
from twisted_pop3ng.server.realm import MailboxRealm
from twisted_pop3ng.testing import (REMOTE_PEER, IncompleteReply, LoginFailed, SessionDriver,
                                    memory_portal, parse_reply)
from twisted_pop3ng.wire import wire_size_of

MESSAGES = [
    b"Subject: one\n\nfirst body\n.dotted\n",
    b"Subject: two\r\n\r\nsecond\r\n",
    b".starts with a dot",
]


class HarnessSessionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.session = SessionDriver(users={"alice": "secret pass", "bob": b"pw"},
                                     messages={"alice": MESSAGES})

    def test_greeting(self) -> None:
        self.assertEqual(self.session.greeting, b"+OK POP3 server ready.\r\n")
        self.assertTrue(self.session.connected)

    def test_login_and_stat(self) -> None:
        reply = self.session.login("alice", "secret pass")
        self.assertEqual((reply.ok, reply.text, reply.raw), (True, "Logged in.", b"+OK Logged in.\r\n"))
        total = sum(wire_size_of(m) for m in MESSAGES)
        self.assertEqual(self.session.send("STAT"), b"+OK 3 %d\r\n" % total)

    def test_wrong_password_raises_after_the_failure_delay(self) -> None:
        with self.assertRaises(LoginFailed) as caught:
            self.session.login("alice", "nope")
        self.assertEqual((caught.exception.reply.ok, caught.exception.reply.code), (False, "AUTH"))
        # The failure reply came only once the clock had run out the delay.
        self.assertEqual(self.session.clock.seconds(), self.session.factory.config.auth_failure_delay)

    def test_pending_reply_without_wait(self) -> None:
        self.session.command("USER alice")
        with self.assertRaises(IncompleteReply):
            self.session.command("PASS nope")
        self.assertEqual(self.session.advance(self.session.factory.config.auth_failure_delay),
                         b"-ERR [AUTH] Authentication failed.\r\n")

    def test_retr_dot_stuffing(self) -> None:
        self.session.login("alice", "secret pass")
        reply = self.session.command("RETR 1")
        self.assertEqual(reply.raw, b"+OK %d octets\r\nSubject: one\r\n\r\nfirst body\r\n..dotted\r\n.\r\n"
                         % wire_size_of(MESSAGES[0]))
        self.assertEqual(reply.lines, [b"Subject: one", b"", b"first body", b".dotted"])
        reply = self.session.command("RETR 3")
        self.assertEqual(reply.raw, b"+OK 20 octets\r\n..starts with a dot\r\n.\r\n")
        self.assertEqual(reply.body, b".starts with a dot\r\n")

    def test_listings_parsed_as_multiline(self) -> None:
        self.session.login("alice", "secret pass")
        self.assertEqual(len(self.session.command("UIDL").lines or ()), 3)
        self.assertEqual(self.session.command("LIST 2").lines, None)
        self.assertIn(b"PIPELINING", self.session.command("CAPA").lines or ())

    def test_dele_quit_commits_to_the_store(self) -> None:
        store = self.session.store
        self.assertIsInstance(store, MemoryStore)
        self.session.login("alice", "secret pass")
        self.assertTrue(self.session.command("DELE 1").ok)
        self.assertEqual(len(store.maildrops["alice"]), 3)  # nothing before QUIT
        reply = self.session.command("QUIT")
        self.assertEqual(reply.text, "Logging out, messages deleted.")
        self.assertFalse(self.session.connected)
        self.assertEqual([m for _, m in store.maildrops["alice"]], MESSAGES[1:])
        # The logout hook ran: the maildrop is unlocked for the next session.
        self.assertTrue(self.session.another().login("alice", "secret pass").ok)

    def test_rset_undoes_dele(self) -> None:
        self.session.login("alice", "secret pass")
        self.session.command("DELE 2")
        self.assertFalse(self.session.command("RETR 2").ok)
        self.assertTrue(self.session.command("RSET").ok)
        self.assertTrue(self.session.command("RETR 2").ok)
        self.session.command("QUIT")
        self.assertEqual(len(self.session.store.maildrops["alice"]), 3)

    def test_hang_up_commits_nothing_and_unlocks(self) -> None:
        self.session.login("alice", "secret pass")
        self.session.command("DELE 1")
        self.session.close()
        self.assertFalse(self.session.connected)
        self.assertEqual(len(self.session.store.maildrops["alice"]), 3)
        self.assertTrue(self.session.another().login("alice", "secret pass").ok)

    def test_second_session_is_in_use(self) -> None:
        self.session.login("alice", "secret pass")
        with self.assertRaises(LoginFailed) as caught:
            self.session.another().login("alice", "secret pass")
        self.assertEqual(caught.exception.reply.code, "IN-USE")

    def test_login_timeout_fires_on_the_clock(self) -> None:
        timeout = self.session.factory.config.login_timeout
        self.assertEqual(self.session.advance(timeout - 1), b"")
        self.assertTrue(self.session.connected)
        self.assertEqual(self.session.advance(1), b"-ERR Disconnected for inactivity.\r\n")
        self.assertFalse(self.session.connected)

    def test_idle_timeout_after_login_unlocks(self) -> None:
        session = SessionDriver(users={"alice": "pw"}, messages={"alice": MESSAGES},
                                config=ServerConfig(idle_timeout=30.0))
        session.login("alice", "pw")
        self.assertEqual(session.advance(29), b"")
        session.send("NOOP")  # activity pushes the deadline out
        self.assertEqual(session.advance(29), b"")
        self.assertEqual(session.advance(2), b"-ERR Disconnected for inactivity.\r\n")
        self.assertFalse(session.connected)
        self.assertTrue(session.another().login("alice", "pw").ok)

    def test_pipelined_input(self) -> None:
        self.session.login("alice", "secret pass")
        self.assertEqual(self.session.send_raw(b"NOOP\r\nLIST 3\r\n"), b"+OK\r\n+OK 3 20\r\n")

    def test_large_message_streamed_across_turns(self) -> None:
        # Larger than what the stream writes in one turn (16 chunks): the harness runs the
        # zero-delay calls the reactor would, so the whole message is in one send().
        line = b".line of a large message\n"
        big = line * (17 * CHUNK_SIZE // len(line) + 1)
        session = SessionDriver(users={"alice": "pw"}, messages={"alice": [big]})
        session.login("alice", "pw")
        reply = session.command("RETR 1")
        self.assertEqual(reply.body, big.replace(b"\n", b"\r\n"))
        self.assertEqual(reply.text, "%d octets" % wire_size_of(big))

    def test_remote_peer_gets_the_plaintext_policy(self) -> None:
        session = SessionDriver(users={"alice": "pw"}, peer=REMOTE_PEER)
        reply = session.command("USER alice")
        self.assertEqual((reply.ok, reply.code), (False, "AUTH"))

    def test_portal_excludes_parts(self) -> None:
        self.assertRaises(TypeError, SessionDriver, memory_portal(), users={"a": "b"})


class ParseReplyTests(unittest.TestCase):
    def test_single_and_rest(self) -> None:
        reply, rest = parse_reply(b"-ERR [IN-USE] locked\r\n+OK\r\n")
        self.assertEqual((reply.ok, reply.code, reply.text, rest), (False, "IN-USE", "locked", b"+OK\r\n"))

    def test_multiline_unstuffed(self) -> None:
        reply, rest = parse_reply(b"+OK\r\n..a\r\nb\r\n.\r\n", multiline=True)
        self.assertEqual((reply.lines, rest), ([b".a", b"b"], b""))

    def test_incomplete(self) -> None:
        self.assertRaises(IncompleteReply, parse_reply, b"+OK")
        self.assertRaises(IncompleteReply, parse_reply, b"+OK\r\nline\r\n", True)

    def test_error_has_no_body(self) -> None:
        reply, rest = parse_reply(b"-ERR no\r\n", multiline=True)
        self.assertEqual((reply.lines, rest), (None, b""))


# -- a custom backend plugged in through the harness ---------------------------------------------


@implementer(IMailbox)
class ListMailbox:
    """Answers through Deferreds, has no ``read_whole``: the server streams from open_message."""

    def __init__(self, store: "ListStore", user: str) -> None:
        self.store, self.user = store, user
        self.snapshot = list(store.drops.get(user, []))

    def list_messages(self) -> defer.Deferred:
        return defer.succeed([MessageInfo("u%d" % i, wire_size_of(m)) for i, m in enumerate(self.snapshot)])

    def open_message(self, index: int) -> defer.Deferred:
        return defer.succeed(io.BytesIO(self.snapshot[index]))

    def commit(self, deleted: Sequence[int]) -> defer.Deferred:
        self.store.commits.append((self.user, list(deleted)))
        drop = self.store.drops[self.user]
        doomed = [self.snapshot[i] for i in deleted]
        drop[:] = [m for m in drop if m not in doomed]
        return defer.succeed(None)

    def close(self) -> None:
        self.store.locked.discard(self.user)


@implementer(IMailboxStore)
class ListStore:
    def __init__(self, drops: Dict[str, List[bytes]]) -> None:
        self.drops = drops
        self.locked: set = set()
        self.commits: List[tuple] = []

    def open_mailbox(self, username: str) -> defer.Deferred:
        if username in self.locked:
            raise MailboxInUse()
        self.locked.add(username)
        return defer.succeed(ListMailbox(self, username))


class CustomBackendTests(unittest.TestCase):
    def test_store_through_the_harness(self) -> None:
        store = ListStore({"carol": [b"A: 1\n\nx\n", b"B: 2\n\n.y\n"]})
        session = SessionDriver(users={"carol": "pw"}, store=store)
        self.assertIs(session.store, store)
        session.login("carol", "pw")
        self.assertEqual(store.locked, {"carol"})
        self.assertEqual(session.command("UIDL").lines, [b"1 u0", b"2 u1"])
        self.assertEqual(session.command("RETR 2").raw, b"+OK 12 octets\r\nB: 2\r\n\r\n..y\r\n.\r\n")
        session.command("DELE 1")
        session.command("QUIT")
        self.assertEqual(store.commits, [("carol", [0])])
        self.assertEqual(store.drops["carol"], [b"B: 2\n\n.y\n"])
        self.assertEqual(store.locked, set())

    def test_own_portal(self) -> None:
        store = ListStore({"dave": [b"x\n"]})
        portal = memory_portal({"dave": "pw"}, store=store)
        self.assertIsInstance(portal, Portal)
        self.assertIsInstance(portal.realm, MailboxRealm)
        session = SessionDriver(portal)
        session.login("dave", "pw")
        self.assertEqual(session.send("STAT"), b"+OK 1 3\r\n")
        session.close()
        self.assertEqual(store.locked, set())
        self.assertEqual(store.commits, [])
