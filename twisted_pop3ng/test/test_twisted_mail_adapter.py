"""twisted.mail mailboxes served by this server (issue 18, item 7).

The example ``docs/examples/twisted_mail_adapter.py`` runs as its own process and is read over a
real socket by the stdlib's POP3 client; the mapping of the two contracts (deletion only at QUIT,
RSET, dropped sessions, sizes, UIDLs, locks, errors) is checked with Twisted's own in-memory
``StringListMailbox`` through the real server factory.
"""

from __future__ import annotations

import hashlib
import io
import os
import poplib
import subprocess
import sys
from typing import Any, Callable, List, Tuple

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.mail import pop3
from twisted.mail.maildir import StringListMailbox
from twisted.trial import unittest
from zope.interface import implementer

from twisted_pop3ng.mailbox.twisted_mail import TwistedMailRealmAdapter
from twisted_pop3ng.testing import LoginFailed, SessionDriver
from twisted_pop3ng.wire import wire_size_of

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "docs", "examples", "twisted_mail_adapter.py")
CROQUET = b"From: queen@example.org\r\nSubject: Croquet\r\n\r\nAt three, with flamingos.\r\n"
LATE = b"From: rabbit@example.org\nSubject: Late\n\nOh dear! Oh dear!\n.I shall be too late!\n"


class ExampleTests(unittest.TestCase):
    """The example file itself, as a user runs it, read by a real POP3 client over TCP."""

    def setUp(self) -> None:
        self.process = subprocess.Popen([sys.executable, EXAMPLE, "0"], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=REPO))
        self.addCleanup(self.stop)
        line = self.process.stdout.readline().decode()  # type: ignore[union-attr]
        self.assertTrue(line.startswith("listening on 127.0.0.1:"), line)
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.process.stdout.close()  # type: ignore[union-attr]

    def client(self) -> poplib.POP3:
        client = poplib.POP3("127.0.0.1", self.port, timeout=30)
        client.user("alice")
        client.pass_("wonderland")
        return client

    def test_read_delete_and_read_again(self) -> None:
        client = self.client()
        listed = [tuple(map(int, line.split())) for line in client.list()[1]]
        self.assertEqual(listed, [(1, len(CROQUET)), (2, wire_size_of(LATE))])
        self.assertEqual(client.uidl()[1], [b"1 " + hashlib.md5(CROQUET).hexdigest().encode(),
                                            b"2 " + hashlib.md5(LATE).hexdigest().encode()])
        for number, stored in ((1, CROQUET), (2, LATE)):
            _, lines, octets = client.retr(number)
            wire = b"\r\n".join(lines) + b"\r\n"
            self.assertEqual(wire, stored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
            self.assertEqual(len(wire), listed[number - 1][1])  # LIST size == octets received
        # One session per user: Twisted's realm gives no lock, the adapter does.
        second = poplib.POP3("127.0.0.1", self.port, timeout=30)
        second.user("alice")
        with self.assertRaises(poplib.error_proto) as refused:
            second.pass_("wonderland")
        self.assertIn(b"[IN-USE]", refused.exception.args[0])
        second.quit()
        client.dele(1)
        client.quit()
        client = self.client()
        self.assertEqual(client.uidl()[1], [b"1 " + hashlib.md5(LATE).hexdigest().encode()])
        client.quit()

    def test_wrong_password(self) -> None:
        client = poplib.POP3("127.0.0.1", self.port, timeout=30)
        client.user("alice")
        with self.assertRaises(poplib.error_proto) as refused:
            client.pass_("looking-glass")
        self.assertIn(b"[AUTH]", refused.exception.args[0])
        client.quit()


class RecordingMailbox(StringListMailbox):
    """Twisted's in-memory mailbox, recording the calls the adapter makes."""

    def __init__(self, msgs: List[bytes]) -> None:
        super().__init__(msgs)
        self.calls: List[Tuple[str, Any]] = []
        self.fail_delete_at: Any = None

    def deleteMessage(self, i: int) -> None:
        self.calls.append(("deleteMessage", i))
        if i == self.fail_delete_at:
            raise ValueError("cannot delete %d" % i)
        super().deleteMessage(i)

    def undeleteMessages(self) -> None:
        self.calls.append(("undeleteMessages", None))
        super().undeleteMessages()

    def sync(self) -> None:
        self.calls.append(("sync", None))
        super().sync()

    def getMessage(self, i: int) -> Any:
        self.calls.append(("getMessage", i))
        return super().getMessage(i)


@implementer(IRealm)
class Realm:
    def __init__(self, mailbox: Any, deferred: bool = False) -> None:
        self.mailbox = mailbox
        self.deferred = deferred
        self.logouts = 0

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        assert avatarId == b"alice" and pop3.IMailbox in interfaces

        def logout() -> None:
            self.logouts += 1

        avatar: Tuple[Any, Any, Callable[[], None]] = (pop3.IMailbox, self.mailbox, logout)
        return defer.succeed(avatar) if self.deferred else avatar


def driver(mailbox: Any, **kwargs: Any) -> Tuple[SessionDriver, Realm]:
    realm = Realm(mailbox, kwargs.pop("deferred", False))
    portal = Portal(TwistedMailRealmAdapter(realm, **kwargs),
                    [InMemoryUsernamePasswordDatabaseDontUse(alice=b"pw")])
    session = SessionDriver(portal)
    session.login("alice", "pw")
    return session, realm


class SemanticsTests(unittest.TestCase):
    def test_deletions_reach_twisted_only_at_quit(self) -> None:
        box = RecordingMailbox([b"one\r\n", b"two\r\n", b"three\r\n"])
        session, realm = driver(box)
        self.assertTrue(session.command("DELE 2").ok)
        self.assertTrue(session.command("RSET").ok)
        self.assertTrue(session.command("DELE 1").ok)
        self.assertTrue(session.command("DELE 3").ok)
        self.assertEqual([c for c in box.calls if c[0] != "getMessage"], [])
        self.assertTrue(session.command("QUIT").ok)
        self.assertEqual([c for c in box.calls if c[0] != "getMessage"],
                         [("deleteMessage", 0), ("deleteMessage", 2), ("sync", None)])
        self.assertEqual(realm.logouts, 1)
        # The next session does not list what Twisted's sync left as empty strings.
        session, _ = driver(box)
        self.assertEqual(session.command("UIDL").lines, [b"1 " + hashlib.md5(b"two\r\n").hexdigest().encode()])

    def test_a_dropped_session_commits_nothing(self) -> None:
        box = RecordingMailbox([b"one\r\n"])
        session, realm = driver(box)
        session.command("DELE 1")
        session.close()
        self.assertEqual([c for c in box.calls if c[0] != "getMessage"], [])
        self.assertEqual((box.msgs, realm.logouts), ([b"one\r\n"], 1))
        self.assertTrue(driver(box)[0].command("STAT").ok)  # and the lock went with it

    def test_a_failed_delete_withdraws_the_marks_and_says_so(self) -> None:
        box = RecordingMailbox([b"one\r\n", b"two\r\n"])
        box.fail_delete_at = 1
        session, realm = driver(box)
        session.command("DELE 1")
        session.command("DELE 2")
        reply = session.command("QUIT")
        self.assertFalse(reply.ok)
        self.assertEqual([c for c in box.calls if c[0] != "getMessage"],
                         [("deleteMessage", 0), ("deleteMessage", 1), ("undeleteMessages", None)])
        self.assertEqual(box.msgs, [b"one\r\n", b"two\r\n"])
        self.assertEqual(realm.logouts, 1)
        self.flushLoggedErrors(ValueError)

    def test_sizes_are_measured_unless_trusted(self) -> None:
        box = RecordingMailbox([b"a\nb\n", b"c\r\n"])
        session, _ = driver(box)
        self.assertEqual(session.command("LIST").lines, [b"1 6", b"2 3"])
        self.assertEqual(session.command("RETR 1").lines, [b"a", b"b"])
        box = RecordingMailbox([b"a\r\nb\r\n"])
        session, _ = driver(box, trust_sizes=True)
        self.assertEqual(session.command("LIST").lines, [b"1 6"])
        self.assertNotIn("getMessage", [c[0] for c in box.calls])

    def test_a_realm_answering_with_a_deferred_and_a_deferred_listing(self) -> None:
        class DeferredListing(StringListMailbox):
            def listMessages(self, i: Any = None) -> Any:
                return defer.succeed(super().listMessages(i))

        session, _ = driver(DeferredListing([b"x\r\n"]), deferred=True)
        self.assertEqual(session.command("STAT").text, "1 3")

    def test_uidls_are_made_valid_and_unique(self) -> None:
        class OddUidls(StringListMailbox):
            def getUidl(self, i: int) -> Any:
                return [b"same", "same", b"has space", "x" * 80][i]

        session, _ = driver(OddUidls([b"1\r\n", b"2\r\n", b"3\r\n", b"4\r\n"]))
        uidls = [line.split(b" ", 1)[1] for line in session.command("UIDL").lines or []]
        self.assertEqual(uidls[0], b"same")
        self.assertEqual(len(set(uidls)), 4)
        for uidl in uidls:
            self.assertTrue(1 <= len(uidl) <= 70 and all(0x21 <= c <= 0x7E for c in uidl), uidl)
        # stable: a second session lists the same ones
        session.command("QUIT")
        again = [line.split(b" ", 1)[1] for line in driver(OddUidls([b"1\r\n", b"2\r\n", b"3\r\n", b"4\r\n"]))[0]
                 .command("UIDL").lines or []]
        self.assertEqual(again, uidls)

    def test_second_session_is_refused_while_the_first_lasts(self) -> None:
        box = StringListMailbox([b"x\r\n"])
        session, realm = driver(box)
        second = session.another()
        second.command("USER alice")
        reply = second.command("PASS pw", wait=True)
        self.assertEqual((reply.ok, reply.code), (False, "IN-USE"))
        session.command("QUIT")
        third = session.another()
        third.login("alice", "pw")
        self.assertRaises(LoginFailed, session.another().login, "alice", "wrong")

    def test_message_stream_is_read_as_bytes(self) -> None:
        class TextFiles(StringListMailbox):
            def getMessage(self, i: int) -> Any:
                return io.StringIO(self.msgs[i].decode())

        session, _ = driver(TextFiles([b"caf\xc3\xa9\r\n"]))
        self.assertEqual(session.command("RETR 1").lines, ["café".encode()])
