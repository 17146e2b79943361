"""The code of docs/examples/, run: what the embedding tutorial and the client page show works as
they say, in memory and over real sockets and real TLS."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict

from twisted.internet import defer, endpoints, reactor, task
from twisted.trial import unittest

from twisted_pop3ng.auth import passwords
from twisted_pop3ng.client import AuthError, TLSVerificationError, connect
from twisted_pop3ng.mailbox.maildir import deliver
from twisted_pop3ng.testing import LoginFailed, SessionDriver
from twisted_pop3ng.tls import ReloadableServerTLS

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def load_example(name: str) -> ModuleType:
    path = EXAMPLES / (name + ".py")
    if not path.exists():
        raise unittest.SkipTest("docs/examples is not here (an installed package, not a checkout)")
    spec = importlib.util.spec_from_file_location("pop3ng_example_" + name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module


example = load_example("embedded_server")


class NoticeBoardTests(unittest.TestCase):
    def setUp(self) -> None:
        self.board = example.NoticeBoard()
        self.board.post(b"Subject: Welcome\n\nThe board is open.\n")
        self.board.post(b"Subject: Rules\n\n.no shouting\n")
        self.portal = example.make_portal(self.board, {"alice": "wonderland", "bob": "builder"})

    def test_read_and_dismiss(self) -> None:
        session = SessionDriver(self.portal)
        session.login("alice", "wonderland")
        self.assertEqual(session.command("UIDL").lines, [b"1 notice-1", b"2 notice-2"])
        reply = session.command("RETR 2")
        self.assertEqual(reply.raw, b"+OK 32 octets\r\nSubject: Rules\r\n\r\n..no shouting\r\n.\r\n")
        session.command("DELE 2")
        session.command("QUIT")
        self.assertEqual(self.board.dismissed, {"alice": {"notice-2"}})
        # alice no longer sees it; bob still does.
        again = session.another()
        again.login("alice", "wonderland")
        self.assertEqual(again.send("STAT"), b"+OK 1 40\r\n")
        other = session.another()
        other.login("bob", "builder")
        self.assertEqual(other.command("LIST").lines, [b"1 40", b"2 32"])

    def test_small_notices_go_out_through_read_whole(self) -> None:
        """The example shows read_whole as the fast path: the server must actually take it."""
        calls = []
        real = example.BoardMailbox.read_whole

        def counting(mailbox, index, limit):
            calls.append(index)
            return real(mailbox, index, limit)
        self.patch(example.BoardMailbox, "read_whole", counting)
        session = SessionDriver(self.portal)
        session.login("alice", "wonderland")
        self.assertTrue(session.send("RETR 1").startswith(b"+OK"))
        self.assertEqual(calls, [0])

    def test_wrong_password(self) -> None:
        with self.assertRaises(LoginFailed) as caught:
            SessionDriver(self.portal).login("alice", "looking glass")
        self.assertEqual(caught.exception.reply.code, "AUTH")
        self.assertEqual(self.board.in_use, set())

    def test_one_session_per_user(self) -> None:
        first = SessionDriver(self.portal)
        first.login("alice", "wonderland")
        with self.assertRaises(LoginFailed) as caught:
            first.another().login("alice", "wonderland")
        self.assertEqual(caught.exception.reply.code, "IN-USE")
        first.close()  # a dropped connection releases the lock and dismisses nothing
        self.assertEqual(self.board.in_use, set())
        self.assertEqual(self.board.dismissed, {})

    def test_factory_settings(self) -> None:
        factory = example.make_factory(self.board, {"alice": "wonderland"})
        self.assertEqual(factory.config.idle_timeout, 900)


# -- the same examples over real sockets and real TLS --------------------------------------------------


maildir_server = load_example("maildir_server")
client_example = load_example("client_example")


def _certificates(directory: str, name: str = "") -> Dict[str, str]:
    """A CA and a certificate it signed for 127.0.0.1 (trustme), written as PEM files."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {part: os.path.join(directory, name + part + ".pem") for part in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    return paths


class MaildirServerExampleTests(unittest.TestCase):
    """docs/examples/maildir_server.py on a real port with a real certificate, read by
    docs/examples/client_example.py: what the embedding tutorial and the client page show."""

    MESSAGES = [b"Subject: first\n\nHello.\n", b"Subject: second\n\n.dot line\nmore\n"]

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.certs = _certificates(self.root)
        self.passwd = os.path.join(self.root, "users")
        with open(self.passwd, "w") as f:  # what `pop3ng passwd` prints, after the user name
            f.write("alice:%s\n" % passwords.generate(passwords.DEFAULT_GENERATE, b"wonderland"))
        self.template = os.path.join(self.root, "mail", "{user}", "Maildir")
        self.maildir = self.template.format(user="alice")
        for n, message in enumerate(self.MESSAGES):
            deliver(self.maildir, message, "%d.M1P1Q%d.example" % (1000000000 + n, n))
        self.tls = ReloadableServerTLS(self.certs["cert"], self.certs["key"])
        factory = maildir_server.make_factory(self.passwd, self.template, self.tls)
        return maildir_server.listen_pop3s(reactor, "tcp:0:interface=127.0.0.1", factory,
                                           self.tls).addCallback(self._listening)

    def _listening(self, port: Any) -> None:
        self.addCleanup(port.stopListening)
        self.url = "pop3s://alice@127.0.0.1:%d" % port.getHost().port

    @defer.inlineCallbacks
    def test_list_then_save_and_delete(self) -> Any:
        listing = yield defer.ensureDeferred(
            client_example.list_mailbox(reactor, self.url, "wonderland", self.certs["ca"]))
        self.assertEqual(listing["count"], 2)
        self.assertEqual(listing["subjects"], {1: "first", 2: "second"})
        self.assertEqual(listing["octets"], sum(len(m.replace(b"\n", b"\r\n")) for m in self.MESSAGES))
        out = os.path.join(self.root, "saved")
        os.makedirs(out)
        saved = yield defer.ensureDeferred(client_example.save_all(
            reactor, self.url, "wonderland", out, self.certs["ca"], delete=True))
        self.assertEqual([os.path.basename(p)[:-4] for p in saved], list(listing["uids"].values()))
        for path, message in zip(saved, self.MESSAGES):
            with open(path, "rb") as f:  # the octets as sent: CRLF, dot-stuffing undone
                self.assertEqual(f.read(), message.replace(b"\n", b"\r\n"))
        # every message saved under its UIDL, no .part file left behind
        self.assertEqual(sorted(os.listdir(out)), sorted(os.path.basename(p) for p in saved))
        # deleted on the server at QUIT: the maildir is empty now
        self.assertEqual(os.listdir(os.path.join(self.maildir, "new")) +
                         os.listdir(os.path.join(self.maildir, "cur")), [])

    @defer.inlineCallbacks
    def test_main(self) -> Any:
        out = os.path.join(self.root, "saved")
        os.makedirs(out)
        self.patch(os, "environ", dict(os.environ, POP3_PASSWORD="wonderland"))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            yield client_example.main(reactor, self.url, out, self.certs["ca"])
        lines = printed.getvalue().splitlines()
        self.assertEqual([line.split(" ", 2)[::2] for line in lines[:2]], [["1", "first"], ["2", "second"]])
        self.assertEqual(sorted(lines[2:]), sorted("saved " + os.path.join(out, name) for name in os.listdir(out)))
        self.assertEqual(len(os.listdir(out)), 2)
        self.assertEqual(len(os.listdir(os.path.join(self.maildir, "new"))) +
                         len(os.listdir(os.path.join(self.maildir, "cur"))), 2)  # main() keeps the mail

    @defer.inlineCallbacks
    def test_hashed_password_checked(self) -> Any:
        with self.assertRaises(AuthError):
            yield defer.ensureDeferred(
                client_example.list_mailbox(reactor, self.url, "looking glass", self.certs["ca"]))

    @defer.inlineCallbacks
    def test_untrusted_certificate_refused(self) -> Any:
        other = _certificates(self.root, "other-")
        with self.assertRaises(TLSVerificationError):
            yield defer.ensureDeferred(
                client_example.list_mailbox(reactor, self.url, "wonderland", other["ca"]))

    @defer.inlineCallbacks
    def test_sighup_reloads_the_certificate(self) -> Any:
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        maildir_server.reload_certificate_on_sighup(reactor, self.tls)
        renewed = _certificates(self.root, "renewed-")  # a new key, from another CA
        os.replace(renewed["cert"], self.certs["cert"])
        os.replace(renewed["key"], self.certs["key"])
        old_options = self.tls.options
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):  # the handler runs on the next reactor turn; wait up to 20 s
            if self.tls.options is not old_options:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        listing = yield defer.ensureDeferred(
            client_example.list_mailbox(reactor, self.url, "wonderland", renewed["ca"]))
        self.assertEqual(listing["count"], 2)
        with self.assertRaises(TLSVerificationError):
            yield defer.ensureDeferred(
                client_example.list_mailbox(reactor, self.url, "wonderland", self.certs["ca"]))


class NoticeBoardOverTCPTests(unittest.TestCase):
    """The notice board of docs/examples/embedded_server.py, as its main() serves it: on a TCP port,
    read by the project's client."""

    @defer.inlineCallbacks
    def test_a_client_reads_and_dismisses(self) -> Any:
        board = example.NoticeBoard()
        board.post(b"Subject: Welcome\n\nThe board is open.\n")
        factory = example.make_factory(board, {"alice": "wonderland"})
        port = yield endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        url = "pop3://alice@127.0.0.1:%d" % port.getHost().port
        # 127.0.0.1 to 127.0.0.1 is local: the server accepts USER/PASS without TLS, and the
        # client must be told that a server without STLS is fine.
        client = yield connect(reactor, url, password="wonderland", allow_plaintext=True)
        body = yield client.retrieve(1)
        self.assertEqual(body, b"Subject: Welcome\r\n\r\nThe board is open.\r\n")
        yield client.delete(1)
        yield client.quit()
        self.assertEqual(board.dismissed, {"alice": {"notice-1"}})
