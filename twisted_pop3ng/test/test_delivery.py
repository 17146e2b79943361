"""Delivery of ``pop3ng fetch`` on real files: Maildir LF line endings whatever the chunking, one
tmp/ file per sink, and mbox crash recovery that cuts off only its own bytes."""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.trial import unittest

from twisted_pop3ng.fetch.delivery import DeliveryError, MaildirDestination, MboxDestination
from twisted_pop3ng.fetch.state import FetchState


class MaildirLineEndingTests(unittest.TestCase):
    def deliver(self, chunks) -> bytes:
        dest = MaildirDestination(self.mktemp(), "bob@example.org")
        sink = dest.begin("uid-1")
        for chunk in chunks:
            sink.write(chunk)
        sink.finish()
        dest.commit([sink])
        [name] = os.listdir(os.path.join(dest.path, "new"))
        self.assertEqual(os.listdir(os.path.join(dest.path, "tmp")), [])
        with open(os.path.join(dest.path, "new", name), "rb") as f:
            return f.read()

    def test_crlf_becomes_lf_across_any_split(self) -> None:
        wire = b"Subject: x\r\n\r\nbody\r\nbare\rcr\r\nend\r\n"
        expected = b"Subject: x\n\nbody\nbare\rcr\nend\n"
        self.assertEqual(self.deliver([wire]), expected)
        self.assertEqual(self.deliver([wire[i:i + 1] for i in range(len(wire))]), expected)
        for cut in range(1, len(wire)):
            self.assertEqual(self.deliver([wire[:cut], wire[cut:]]), expected, cut)

    def test_trailing_cr_is_kept(self) -> None:
        self.assertEqual(self.deliver([b"a\r\nb\r"]), b"a\nb\r")


class MboxRecoveryTests(unittest.TestCase):
    """Finding F11: after a killed append, recovery cuts off only bytes this fetcher wrote."""

    def setUp(self) -> None:
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        self.path = os.path.join(root, "inbox")
        self.state_path = os.path.join(root, "state.json")
        with open(self.path, "wb") as f:
            f.write(b"From old@example.org Mon Jan  1 00:00:00 2024\nSubject: old\n\nold\n\n")
        self.before = os.path.getsize(self.path)

    def state(self) -> FetchState:
        return FetchState.load(self.state_path, "pop3://bob@example.org:110")

    def killed_append(self, keep: Optional[int]) -> bytes:
        """An append of two messages, killed once ``keep`` of its octets were written (None: all):
        the state file records it as pending, as a kill between set_pending and the end of the
        write leaves it. Returns the bytes the whole append would have written."""
        dest = MboxDestination(self.path, "acct")
        dest.recover(self.state())
        sinks = []
        for uid in ("u1", "u2"):
            sink = dest.begin(uid)
            sink.write(b"Subject: %s\r\n\r\nbody of %s\r\n" % (uid.encode(), uid.encode()) * 20)
            sinks.append(sink)
        dest.commit(sinks)
        with open(self.path, "rb") as f:
            whole = f.read()[self.before:]
        if keep is not None:
            os.truncate(self.path, self.before + keep)
        self.assertEqual((self.state().pending or {}).get("offset"), self.before)
        return whole

    def append(self, data: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(data)

    def recover(self) -> Any:
        state = self.state()
        dest = MboxDestination(self.path, "acct")
        dest.recover(state)
        self.assertIsNone(self.state().pending)
        return state, dest

    def content(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def test_our_partial_append_is_cut_off(self) -> None:
        self.killed_append(keep=300)
        state, dest = self.recover()
        self.assertEqual(os.path.getsize(self.path), self.before)
        self.assertEqual(dest.warnings, [])
        self.assertFalse(state.is_delivered("u1"))
        self.assertFalse(os.path.exists(self.state_path + ".mbox-append"))

    def test_a_complete_append_counts_whatever_follows(self) -> None:
        whole = self.killed_append(keep=None)
        other = b"From procmail@example.org Tue Jan  2 00:00:00 2024\nSubject: theirs\n\nx\n\n"
        self.append(other)
        state, dest = self.recover()
        self.assertTrue(state.is_delivered("u1") and state.is_delivered("u2"))
        self.assertTrue(self.content().endswith(whole + other))
        self.assertEqual(dest.warnings, [])

    def test_mail_appended_by_another_program_is_kept(self) -> None:
        """The scenario of F11: killed mid-append, procmail appends, the next run recovers."""
        whole = self.killed_append(keep=300)
        other = b"From procmail@example.org Tue Jan  2 00:00:00 2024\nSubject: theirs\n\nx\n\n"
        self.append(other)
        state, dest = self.recover()
        self.assertEqual(self.content()[self.before:], whole[:300] + other)
        self.assertFalse(state.is_delivered("u1"))  # delivered again, after the other mail
        [warning] = dest.warnings
        self.assertIn("left as it is", warning)
        self.assertIn("offset %d" % self.before, warning)

    def test_another_program_appended_where_nothing_of_ours_was_written(self) -> None:
        self.killed_append(keep=0)
        self.append(b"From procmail@example.org Tue Jan  2 00:00:00 2024\n\nx\n\n")
        _, dest = self.recover()
        self.assertTrue(self.content().endswith(b"\n\nx\n\n"))
        self.assertEqual(len(dest.warnings), 1)

    def test_a_replaced_file_is_not_cut(self) -> None:
        """The mbox was rewritten into a new file (a mail reader compacting it) that happens to
        hold the same bytes: another file, so nothing is cut."""
        self.killed_append(keep=300)
        data = self.content()
        os.rename(self.path, self.path + ".old")  # kept: its inode number is not reused
        with open(self.path, "wb") as f:
            f.write(data)
        _, dest = self.recover()
        self.assertEqual(self.content(), data)
        [warning] = dest.warnings
        self.assertIn("another file", warning)

    def test_without_the_copy_nothing_is_cut(self) -> None:
        """The copy of the batch is gone (a power loss before it reached the disk): the bytes
        cannot be proven ours, so they stay."""
        self.killed_append(keep=300)
        os.unlink(self.state_path + ".mbox-append")
        data = self.content()
        _, dest = self.recover()
        self.assertEqual(self.content(), data)
        self.assertEqual(len(dest.warnings), 1)


class MaildirSameNameTests(unittest.TestCase):
    """Finding F12, defence in depth: two sinks at once never share a tmp/ file."""

    def test_second_sink_under_one_uidl_is_refused(self) -> None:
        dest = MaildirDestination(self.mktemp(), "bob@example.org")
        first = dest.begin("same")
        self.assertRaises(DeliveryError, dest.begin, "same")
        first.write(b"Subject: one\r\n\r\n")
        first.finish()
        dest.commit([first])
        again = dest.begin("same")  # once published, the name is free (has() tells it is there)
        again.abort()
        dest.begin("same").abort()
