"""Maildir delivery of ``pop3ng fetch`` on real files: LF line endings whatever the chunking."""

from __future__ import annotations

import os

from twisted.trial import unittest

from twisted_pop3ng.fetch.delivery import MaildirDestination


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
