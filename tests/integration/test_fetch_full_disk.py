"""A full disk at the destination (a small tmpfs mounted by the test; it needs root, as the CI
runs): ``pop3ng fetch`` stops with exit 6, every message it could not make durable stays on the
server, nothing is half-written, and after space is freed the next run delivers the rest once."""

from __future__ import annotations

import os
import subprocess
from typing import Tuple

from twisted_pop3ng import fetch

from .fetch_support import PASSWORD, FetchTestCase, maildir_messages, mbox_messages, server_ca
from .support import start_server

#: 1 MiB of tmpfs, 700 KB of it taken by ballast: 30 messages of ~20 KB do not fit until it goes.
TMPFS_SIZE = "1m"
BALLAST = 700 * 1024


class FullDiskTests(FetchTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.disk = os.path.join(self.root, "disk")
        os.makedirs(self.disk)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + TMPFS_SIZE, "tmpfs", self.disk],
                       check=True)  # no root, no tmpfs: the test fails, it does not skip
        self.addCleanup(subprocess.run, ["umount", "-l", self.disk], check=False)
        self.ballast = os.path.join(self.disk, "ballast")
        with open(self.ballast, "wb") as f:
            f.write(b"\0" * BALLAST)
        self.server = start_server(os.path.join(self.root, "server"), {"alice": PASSWORD})
        self.addCleanup(self.server.stop)
        self.messages = [b"Subject: %d\n\n" % i + (b"%06d filler line\n" % i) * 1300
                         for i in range(30)]
        for message in self.messages:
            self.server.deliver("alice", message)

    def fetch_to(self, *destination: str) -> Tuple[int, str]:
        return self.fetch("pop3s://alice@localhost:%d" % self.server.tls_port,
                          "--cafile", server_ca(self.server), "--password-file", self.password_file,
                          "--batch", "4", *destination)

    def on_server(self, user: str = "alice") -> int:
        return len(maildir_messages(self.server.maildir(user)))

    def test_maildir_on_a_full_disk(self) -> None:
        maildir = os.path.join(self.disk, "Maildir")
        code, err = self.fetch_to("--maildir", maildir)
        self.assertEqual(code, fetch.EXIT_DELIVERY, err)
        self.assertIn("No space left on device", err)
        delivered = maildir_messages(maildir)
        self.assertLess(len(delivered), 30)
        self.assertEqual(self.on_server(), 30)  # a failed run deletes nothing
        self.assertEqual(os.listdir(os.path.join(maildir, "tmp")), [])  # no partial file left
        self.assertTrue(set(delivered) <= set(self.messages))
        os.unlink(self.ballast)
        code, err = self.fetch_to("--maildir", maildir)
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(maildir_messages(maildir)), sorted(self.messages))
        self.assertEqual(self.on_server(), 0)

    def test_mbox_on_a_full_disk(self) -> None:
        mbox = os.path.join(self.disk, "inbox")
        code, err = self.fetch_to("--mbox", mbox)
        self.assertEqual(code, fetch.EXIT_DELIVERY, err)
        self.assertIn("No space left on device", err)
        self.assertEqual(self.on_server(), 30)
        before = mbox_messages(mbox)
        self.assertLess(len(before), 30)
        self.assertTrue(set(before) <= set(self.messages))  # whole messages only
        os.unlink(self.ballast)
        code, err = self.fetch_to("--mbox", mbox)
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(mbox_messages(mbox)), sorted(self.messages))
        self.assertEqual(self.on_server(), 0)
