"""``pop3ng deliver`` in process: what it stores and the sysexits status it ends with."""

from __future__ import annotations

import io
import os
import sys
from typing import List, Tuple

from twisted.trial import unittest

from twisted_pop3ng.delivery import lda
from twisted_pop3ng.delivery.lda import MessageSource


class LDATests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.mailbox = "maildir:" + os.path.join(self.root, "{user}", "Maildir")

    def run_lda(self, argv: List[str], message: bytes) -> Tuple[int, str]:
        err = io.StringIO()
        saved, sys.stderr = sys.stderr, err
        try:
            status = lda.main(argv, stdin=io.BytesIO(message))
        finally:
            sys.stderr = saved
        return status, err.getvalue()

    def stored(self, user: str) -> List[bytes]:
        new = os.path.join(self.root, user, "Maildir", "new")
        out = []
        for name in sorted(os.listdir(new)) if os.path.isdir(new) else []:
            with open(os.path.join(new, name), "rb") as f:
                out.append(f.read())
        return out

    def test_delivers_byte_for_byte(self) -> None:
        message = b"Subject: hi\r\n\r\n.dot\nFrom the start\n"
        self.assertEqual(self.run_lda(["--mailbox", self.mailbox, "alice"], message), (0, ""))
        self.assertEqual(self.stored("alice"), [message])

    def test_mbox_from_line_dropped_and_return_path_added(self) -> None:
        status, _ = self.run_lda(["--mailbox", self.mailbox, "-f", "s@x.org", "alice"],
                                 b"From s@x.org Fri Dec  4 10:00:00 2026\nSubject: a\n\nb\n")
        self.assertEqual(status, 0)
        self.assertEqual(self.stored("alice"), [b"Return-Path: <s@x.org>\nSubject: a\n\nb\n"])

    def test_an_existing_return_path_is_kept_alone(self) -> None:
        self.run_lda(["--mailbox", self.mailbox, "-f", "s@x.org", "alice"], b"Return-Path: <o@y>\n\nb\n")
        self.assertEqual(self.stored("alice"), [b"Return-Path: <o@y>\n\nb\n"])

    def test_a_sender_cannot_add_headers(self) -> None:
        # -f with a line break wrote "Return-Path: <a" and a header of the caller's choosing.
        for sender in ("a\nX-Injected: yes", "a\rX-Injected: yes", "a>\nX: y", "a\x00b", "a<b"):
            status, err = self.run_lda(["--mailbox", self.mailbox, "-f", sender, "alice"],
                                       b"Subject: a\n\nb\n")
            self.assertEqual(status, 64, sender)
            self.assertIn("sender", err)
        self.assertEqual(self.stored("alice"), [])

    def test_the_null_sender(self) -> None:
        for sender in ("", "<>"):
            self.assertEqual(self.run_lda(["--mailbox", self.mailbox, "-f", sender, "alice"],
                                          b"Subject: a\n\nb\n"), (0, ""))
        self.assertEqual(self.stored("alice"), [b"Return-Path: <>\nSubject: a\n\nb\n"] * 2)

    def test_an_empty_user_is_a_usage_error(self) -> None:
        status, err = self.run_lda(["--mailbox", self.mailbox, ""], b"Subject: a\n\nb\n")
        self.assertEqual((status, err), (64, "pop3ng deliver: USER is empty\n"))

    def test_a_memory_store_is_refused(self) -> None:
        # It would exit 0 -- "delivered" to the MTA -- and the message would end with the process.
        status, err = self.run_lda(["--mailbox", "memory:", "alice"], b"Subject: a\n\nb\n")
        self.assertEqual(status, 64)
        self.assertIn("lost", err)

    def test_known_users_only_with_auth(self) -> None:
        auth = ["--auth", "memory:alice:pw:bob@example.org:pw"]
        self.assertEqual(self.run_lda(["--mailbox", self.mailbox] + auth + ["alice@example.org"], b"a\n")[0], 0)
        self.assertEqual(self.run_lda(["--mailbox", self.mailbox] + auth + ["bob@example.org"], b"b\n")[0], 0)
        status, err = self.run_lda(["--mailbox", self.mailbox] + auth + ["carol@example.org"], b"c\n")
        self.assertEqual((status, err), (67, "pop3ng deliver: carol@example.org: no such user\n"))
        self.assertEqual((self.stored("alice"), self.stored("bob@example.org"), self.stored("carol")),
                         ([b"a\n"], [b"b\n"], []))

    def test_usage_errors(self) -> None:
        for argv, text in [([], "required"), (["--mailbox", "nope:x", "a"], "unknown mailbox scheme 'nope'"),
                           (["--mailbox", self.mailbox, "--auth", "nope:x", "a"], "unknown checker type"),
                           (["--mailbox", "maildir:/no/placeholder", "a"], "{user}")]:
            status, err = self.run_lda(argv, b"x\n")
            self.assertEqual(status, 64, argv)
            self.assertIn(text, err)
            self.assertTrue(err.startswith("pop3ng deliver: "), err)

    def test_empty_message(self) -> None:
        for message in (b"", b"From x@y Fri Dec  4 10:00:00 2026\n"):
            self.assertEqual(self.run_lda(["--mailbox", self.mailbox, "a"], message),
                             (65, "pop3ng deliver: no message on standard input\n"))

    def test_a_maildrop_that_cannot_be_made(self) -> None:
        os.makedirs(os.path.join(self.root, "alice"))
        with open(os.path.join(self.root, "alice", "Maildir"), "w") as f:
            f.write("a file where the maildir should be")
        status, err = self.run_lda(["--mailbox", self.mailbox, "alice"], b"x\n")
        self.assertEqual(status, 73)
        self.assertIn("alice: The maildrop path holds a file", err)


class MessageSourceTests(unittest.TestCase):
    def read_all(self, source: MessageSource, size: int) -> bytes:
        out = b""
        while True:
            data = source.read(size)
            if not data:
                return out
            out += data

    def test_long_from_line_across_reads(self) -> None:
        text = b"From " + b"x" * 200_000 + b"\nbody\n"
        self.assertEqual(self.read_all(MessageSource(io.BytesIO(text), None), 7), b"body\n")

    def test_not_a_from_line(self) -> None:
        for text in (b"Fromage\n", b"from x\n", b">From x\n"):
            self.assertEqual(self.read_all(MessageSource(io.BytesIO(text), "s"), 3),
                             b"Return-Path: <s>\n" + text)
