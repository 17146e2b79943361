"""A full disk at the destination (a small tmpfs mounted by the test; it needs root, as the CI
runs): ``pop3ng fetch`` stops with exit 6, every message it could not make durable stays on the
server, nothing is half-written, and after space is freed the next run delivers the rest once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Dict, List, Tuple

from twisted.trial import unittest

from twisted_pop3ng import fetch

from .support import ROOT, start_server

PASSWORD = "pass word with spaces"
#: 1 MiB of tmpfs, 700 KB of it taken by ballast: 30 messages of ~20 KB do not fit until it goes.
TMPFS_SIZE = "1m"
BALLAST = 700 * 1024


class FullDiskTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
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
        self.password_file = os.path.join(self.root, "password")
        with open(self.password_file, "w") as f:
            f.write(PASSWORD + "\n")
        self.messages = [b"Subject: %d\n\n" % i + (b"%06d filler line\n" % i) * 1300
                         for i in range(30)]
        for message in self.messages:
            self.server.deliver("alice", message)

    def fetch(self, *destination: str) -> Tuple[int, str]:
        command = [sys.executable, "-m", "twisted_pop3ng.cli", "fetch",
                   "pop3s://alice@localhost:%d" % self.server.tls_port,
                   "--cafile", self.server.certs["ca"], "--password-file", self.password_file,
                   "--batch", "4", *destination]
        env: Dict[str, str] = dict(os.environ, PYTHONPATH=ROOT,
                                   XDG_STATE_HOME=os.path.join(self.root, "state"))
        result = subprocess.run(command, env=env, capture_output=True, timeout=120)
        return result.returncode, result.stderr.decode("utf-8", "replace")

    def on_server(self) -> int:
        return sum(len(os.listdir(os.path.join(self.server.maildir("alice"), sub)))
                   for sub in ("new", "cur"))

    def test_maildir_on_a_full_disk(self) -> None:
        maildir = os.path.join(self.disk, "Maildir")
        code, err = self.fetch("--maildir", maildir)
        self.assertEqual(code, fetch.EXIT_DELIVERY, err)
        self.assertIn("No space left on device", err)
        delivered = self.read_maildir(maildir)
        self.assertLess(len(delivered), 30)
        self.assertEqual(self.on_server(), 30)  # a failed run deletes nothing
        self.assertEqual(os.listdir(os.path.join(maildir, "tmp")), [])  # no partial file left
        self.assertTrue(set(delivered) <= set(self.messages))
        os.unlink(self.ballast)
        code, err = self.fetch("--maildir", maildir)
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(self.read_maildir(maildir)), sorted(self.messages))
        self.assertEqual(self.on_server(), 0)

    def test_mbox_on_a_full_disk(self) -> None:
        mbox = os.path.join(self.disk, "inbox")
        code, err = self.fetch("--mbox", mbox)
        self.assertEqual(code, fetch.EXIT_DELIVERY, err)
        self.assertIn("No space left on device", err)
        self.assertEqual(self.on_server(), 30)
        before = self.read_mbox(mbox)
        self.assertLess(len(before), 30)
        self.assertTrue(set(before) <= set(self.messages))  # whole messages only
        os.unlink(self.ballast)
        code, err = self.fetch("--mbox", mbox)
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(self.read_mbox(mbox)), sorted(self.messages))
        self.assertEqual(self.on_server(), 0)

    @staticmethod
    def read_maildir(path: str) -> List[bytes]:
        out = []
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(path, sub)):
                with open(os.path.join(path, sub, name), "rb") as f:
                    out.append(f.read())
        return out

    @staticmethod
    def read_mbox(path: str) -> List[bytes]:
        if not os.path.exists(path):
            return []
        with open(path, "rb") as f:
            data = f.read()
        entries = re.split(rb"(?m)^From MAILER-DAEMON [^\n]*\n", data)
        assert entries[0] == b"", entries[0][:100]
        return [entry[:-1] for entry in entries[1:]]  # each ends with a blank line
