"""``pop3ng fetch`` (the real command, in a subprocess) against scripted buggy or hostile servers
over real sockets: duplicate UIDLs (finding F12), and values no honest server sends (F16) -- a
10 MB UIDL line, negative and absurd sizes, control characters in UIDLs and in ``-ERR`` text, and
UIDLs shaped like paths."""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

from twisted_pop3ng import fetch
from twisted_pop3ng.testing import rfc1939

from .fetch_support import ScriptedPOP3Server, ScriptedServerTestCase, maildir_messages


def message(i: int) -> bytes:
    return b"From: a@example.org\nSubject: message %d\n\nbody %d\n" % (i, i)


class HostileServerFetchTests(ScriptedServerTestCase):
    def assert_refused(self, messages: List[Tuple[bytes, bytes]], replies: Dict[bytes, bytes],
                       text: str) -> str:
        server = self.serve(ScriptedPOP3Server(messages, replies))
        code, err = self.fetch_from(server)
        self.assertEqual(code, fetch.EXIT_CONNECTION, err)
        self.assertIn(text, err)
        self.assertNotIn("Traceback", err)
        self.assertTrue(err.strip().isprintable(), repr(err))
        self.assertEqual(maildir_messages(self.out), [])
        self.assertEqual(server.deleted, [])
        self.assertEqual(len(server.messages), len(messages))
        return err

    def test_duplicate_uidls_are_neither_fetched_nor_deleted(self):
        """F12: two messages under one UIDL. Before the fix they shared a tmp/ file, the run
        failed, and the next run took both for delivered and deleted both: one was lost."""
        messages = [(b"a", message(0)), (b"dup", message(1)), (b"b", message(2)),
                    (b"dup", message(3))]
        server = self.serve(ScriptedPOP3Server(messages))
        for _ in range(2):
            code, err = self.fetch_from(server)
            self.assertEqual(code, fetch.EXIT_ERROR, err)
            self.assertIn("dup: the server gives this UIDL to messages", err)
            self.assertIn("left on the server", err)
        self.assertEqual(sorted(maildir_messages(self.out)), sorted([message(0), message(2)]))
        self.assertEqual(sorted(server.deleted), [b"a", b"b"])
        self.assertEqual(server.messages, [(b"dup", message(1)), (b"dup", message(3))])
        self.assertEqual(os.listdir(os.path.join(self.out, "tmp")), [])

    def test_ten_megabyte_uidl_line(self):
        self.assert_refused([(b"a", message(0))],
                            {b"UIDL": b"+OK\r\n1 " + b"u" * (10 << 20) + b"\r\n.\r\n"},
                            "listing line longer than")

    def test_negative_size(self):
        self.assert_refused([(b"a", message(0))], {b"LIST": b"+OK\r\n1 -5\r\n.\r\n"},
                            "malformed LIST reply")

    def test_huge_size(self):
        self.assert_refused([(b"a", message(0))],
                            {b"LIST": b"+OK\r\n1 999999999999999999\r\n.\r\n"},
                            "implausible number in the LIST reply")

    def test_uidl_with_control_characters(self):
        for uid in (b"evil\x1b]0;pwned\x07", b"nul\x00byte", b"new\nline"):
            replies = {b"UIDL": b"+OK\r\n1 " + uid + b"\r\n.\r\n"}
            err = self.assert_refused([(b"a", message(0))], replies, "invalid UIDL")
            self.assertNotIn("\x1b", err)
            self.assertNotIn("\x00", err)

    def test_uidl_shaped_like_a_path_never_names_a_file(self):
        """Valid UIDLs (0x21-0x7E) may hold ``/`` and ``..``: the files are named by a digest."""
        uids = [b"../../escaped-1", b"/tmp/escaped-2", b"..", b"tmp/../../escaped-3"]
        messages = [(uid, message(i)) for i, uid in enumerate(uids)]
        server = self.serve(ScriptedPOP3Server(messages))
        code, err = self.fetch_from(server)
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(maildir_messages(self.out)), sorted(m for _, m in messages))
        self.assertEqual(sorted(server.deleted), sorted(uids))
        for sub in ("new", "cur", "tmp"):
            for name in os.listdir(os.path.join(self.out, sub)):
                self.assertRegex(name, r"^pop3ng-[0-9a-f]{40}$")
        for directory, _, files in os.walk(self.root):
            self.assertFalse([f for f in files if "escaped" in f], directory)
        self.assertFalse(os.path.exists("/tmp/escaped-2"))

    def test_message_far_larger_than_listed_is_left_on_the_server(self):
        """F16: the server announces 100 octets and sends 5 MB. Before the fix all of it was
        written to the maildir (a hostile server could fill the disk); now at most twice the
        LIST size plus 1 MiB reaches the disk, the message stays on the server and is reported,
        the others are delivered, and the exit status is 1."""
        huge = b"Subject: huge\n\n" + (b"x" * 998 + b"\n") * 5000
        messages = [(b"a", message(0)), (b"huge", huge), (b"b", message(2))]
        server = self.serve(ScriptedPOP3Server(messages))
        server.sizes[2] = 100
        code, err = self.fetch_from(server)
        self.assertEqual(code, fetch.EXIT_ERROR, err)
        self.assertIn("huge: the server sent", err)
        self.assertIn("listed at 100", err)
        self.assertIn("left on the server", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(sorted(maildir_messages(self.out)), sorted([message(0), message(2)]))
        self.assertEqual(sorted(server.deleted), [b"a", b"b"])
        self.assertEqual([uid for uid, _ in server.messages], [b"huge"])
        self.assertEqual(os.listdir(os.path.join(self.out, "tmp")), [])
        # The next run asks again (the server may have been fixed) and refuses again.
        server.sizes = {1: 100}  # (it is message 1 now)
        code, err = self.fetch_from(server)
        self.assertEqual(code, fetch.EXIT_ERROR, err)
        self.assertIn("huge: the server sent", err)
        self.assertEqual([uid for uid, _ in server.messages], [b"huge"])

    def test_a_body_without_an_end_ends_the_session(self):
        """A RETR answer that never ends: the excess was dropped, but read for ever (the run never
        ended, the account's lock held). Past twice the limit plus 64 MiB the session is given
        up: nothing deleted (no QUIT), nothing partial left in tmp/."""
        endless = b"+OK\r\n" + (b"x" * 1022 + b"\r\n") * (70 << 10)  # 70 MiB, no final dot
        server = self.serve(ScriptedPOP3Server([(b"a", message(0))], {b"RETR": endless}))
        server.sizes[1] = 100
        code, err = self.fetch_from(server)
        self.assertEqual(code, fetch.EXIT_CONNECTION, err)
        self.assertIn("went on: giving up", err)
        self.assertEqual(server.deleted, [])
        self.assertEqual(maildir_messages(self.out), [])
        self.assertEqual(os.listdir(os.path.join(self.out, "tmp")), [])

    def test_max_message_size(self):
        """``--max-message-size``: a message LIST gives as larger is not even retrieved; one
        whose body turns out larger is dropped like an over-sized one."""
        big = b"Subject: big\n\n" + b"y" * 5000 + b"\n"
        messages = [(b"a", message(0)), (b"big", big), (b"liar", big)]
        server = self.serve(ScriptedPOP3Server(messages))
        server.sizes[3] = 100
        code, err = self.fetch_from(server, "--max-message-size", "4000")
        self.assertEqual(code, fetch.EXIT_ERROR, err)
        self.assertIn("big: %d octets, more than --max-message-size 4000" % len(rfc1939.wire_message(big)), err)
        self.assertIn("liar: the server sent", err)
        self.assertNotIn(2, server.retrieved)
        self.assertEqual(maildir_messages(self.out), [message(0)])
        self.assertEqual(sorted(uid for uid, _ in server.messages), [b"big", b"liar"])
        code, err = self.fetch_from(server, "--max-message-size", "0")
        self.assertEqual(code, fetch.EXIT_USAGE, err)

    def test_err_text_cannot_drive_the_terminal(self):
        server = self.serve(ScriptedPOP3Server(
            [(b"a", message(0))], {b"PASS": b"-ERR [AUTH] \x1b]0;pwned\x07\x1b[2J denied\r\n"}))
        code, err = self.fetch_from(server)
        self.assertEqual(code, fetch.EXIT_AUTH, err)
        self.assertNotIn("\x1b", err)
        self.assertNotIn("\x07", err)
        self.assertIn("\\x1b]0;pwned\\x07", err)
        self.assertEqual(server.deleted, [])

