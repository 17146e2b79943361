"""The code of docs/examples/, run: what the embedding tutorial shows works as it says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from twisted.trial import unittest

from twisted_pop3ng.testing import LoginFailed, SessionDriver

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
