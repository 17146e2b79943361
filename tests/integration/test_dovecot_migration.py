"""Switching from Dovecot on the same maildirs keeps every client's UIDLs (issue 18, item 6).

A real Dovecot 2.3 (``tests/integration/dovecot.py``) serves a maildir first; its POP3 ``UIDL`` and
``LIST`` are recorded; Dovecot is stopped and ``twistd pop3ng`` serves the very same maildir: the
listings must be identical. Mail delivered after the switch gets our UIDLs, which must never look
like Dovecot's; a restart (a new process reading the files back) changes nothing.
"""

from __future__ import annotations

import os
import poplib
import re
import shutil
import subprocess
import tempfile
from typing import List, Optional, Tuple

from twisted.trial import unittest

from twisted_pop3ng.mailbox.maildir import dovecot_uidlist

from .dovecot import DovecotProcess, dovecot_available, start_dovecot
from .support import ServerProcess, start_server

PASSWORD = "migrate me, please"
USERS = {"alice": PASSWORD}
#: (UIDL, size) in message order, as a client sees the maildrop.
Listing = List[Tuple[str, int]]

MESSAGES = [
    b"From: a@example.org\r\nSubject: one\r\n\r\nfirst\r\n",
    b"From: b@example.org\nSubject: bare LF line ends\n\nsecond\nmore\n",  # wire size != file size
    b"Subject: three\r\n\r\n" + b"x" * 5000 + b"\r\n",
    b"Subject: four\r\n\r\n.dot line\r\n",
]


def listing(port: int) -> Listing:
    """``UIDL`` and ``LIST`` of alice's maildrop through a real POP3 client (poplib)."""
    client = poplib.POP3("127.0.0.1", port, timeout=20)
    try:
        client.user("alice")
        client.pass_(PASSWORD)
        uidls = [line.decode().split(" ") for line in client.uidl()[1]]
        sizes = [line.decode().split(" ") for line in client.list()[1]]
    finally:
        client.quit()
    assert [n for n, _ in uidls] == [n for n, _ in sizes] == [str(i + 1) for i in range(len(uidls))]
    return [(uidl, int(size)) for (_, uidl), (_, size) in zip(uidls, sizes)]


def delete_first(port: int) -> None:
    client = poplib.POP3("127.0.0.1", port, timeout=20)
    client.user("alice")
    client.pass_(PASSWORD)
    client.dele(1)
    client.quit()


def dovecot_lda(root: str, message: bytes) -> None:
    """Deliver with Dovecot's own LDA (its file names, its uidlist entry), as a Dovecot site did."""
    result = subprocess.run(["/usr/lib/dovecot/dovecot-lda", "-c", os.path.join(root, "dovecot.conf"),
                             "-d", "alice", "-f", "sender@example.org"],
                            input=message, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr


class DovecotMigrationTests(unittest.TestCase):
    def setUp(self) -> None:
        self.assertTrue(dovecot_available(), "these tests need dovecot-pop3d and root")
        self.root = tempfile.mkdtemp(prefix="pop3ng-migrate-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.dovecot: Optional[DovecotProcess] = None

    def run_dovecot(self, extra: str = "") -> int:
        dovecot = self.dovecot = start_dovecot(self.root, USERS, extra_config=extra)
        self.addCleanup(dovecot.stop)
        return dovecot.port

    def stop_dovecot(self) -> None:
        assert self.dovecot is not None
        self.dovecot.stop()

    def run_ours(self) -> ServerProcess:
        server = start_server(self.root, USERS, tls=False)
        self.addCleanup(server.stop)
        return server

    def maildir(self) -> str:
        return os.path.join(self.root, "mail", "alice", "Maildir")

    def deliver(self, message: bytes, index: int) -> str:
        name = "%d.M%06dP%d.old-host" % (1_700_000_000 + index, index, 4000 + index)
        from twisted_pop3ng.mailbox.maildir import deliver

        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.maildir(), sub), exist_ok=True)
        deliver(self.maildir(), message, name)
        return name

    def test_default_format_uidls_and_sizes_survive_the_switch(self) -> None:
        port = self.run_dovecot()
        for i, message in enumerate(MESSAGES):
            self.deliver(message, i)
        dovecot_lda(self.root, b"Subject: by dovecot-lda\r\n\r\nfive\r\n")
        delete_first(port)  # a gap in Dovecot's UIDs, as on any real maildrop
        before = listing(port)
        self.assertEqual(len(before), len(MESSAGES))
        self.assertTrue(all(re.fullmatch(r"[0-9a-f]{16}", uidl) for uidl, _ in before), before)
        self.stop_dovecot()

        ours = self.run_ours()
        self.assertEqual(listing(ours.port), before)
        self.assertTrue(os.path.exists(os.path.join(self.maildir(), dovecot_uidlist.MAP_NAME)))

        # Mail after the switch: our UIDL (its base name), unlike any of Dovecot's; the old stay.
        new_name = ours.deliver("alice", b"Subject: after the switch\r\n\r\nsix\r\n")
        after = listing(ours.port)
        self.assertEqual(after[:-1], before)
        self.assertEqual(after[-1][0], new_name.partition(":")[0])
        self.assertIsNone(re.fullmatch(r"[0-9a-fA-F]{16}", after[-1][0]))
        self.assertEqual(len({uidl for uidl, _ in after}), len(after))

        # A new process reads the same UIDLs back; a deletion leaves the others as they were.
        ours.stop()
        ours = self.run_ours()
        self.assertEqual(listing(ours.port), after)
        delete_first(ours.port)
        self.assertEqual(listing(ours.port), after[1:])

        # dovecot-uidlist may go once the map is made: nothing depends on it any more.
        os.unlink(os.path.join(self.maildir(), dovecot_uidlist.UIDLIST_NAME))
        ours.stop()
        os.unlink(os.path.join(self.maildir(), "pop3ng-index"))  # and the index is only a cache
        ours = self.run_ours()
        self.assertEqual(listing(ours.port), after[1:])

    def test_saved_pop3_uidls_are_honoured(self) -> None:
        # UIDLs Dovecot saved in the uidlist (pop3_save_uidl): a custom format's, and an empty "P"
        # for ones equal to the file name; then default-format ones for mail that came later.
        port = self.run_dovecot("pop3_uidl_format = %v.%u\npop3_save_uidl = yes\n")
        self.deliver(MESSAGES[0], 0)
        self.deliver(MESSAGES[1], 1)
        listing(port)
        self.stop_dovecot()
        port = self.run_dovecot("pop3_uidl_format = %f\npop3_save_uidl = yes\n")
        self.deliver(MESSAGES[2], 2)
        listing(port)
        self.stop_dovecot()
        port = self.run_dovecot()
        self.deliver(MESSAGES[3], 3)
        before = listing(port)
        self.stop_dovecot()
        with open(os.path.join(self.maildir(), dovecot_uidlist.UIDLIST_NAME)) as f:
            uidlist = f.read()
        self.assertRegex(uidlist, r"\n1 [^\n]*P\d+\.1 ")  # the kinds of line this test is about
        self.assertRegex(uidlist, r"\n3 [^\n]*P :")
        kinds = [re.fullmatch(r"\d+\.\d", before[0][0]), before[2][0].startswith("1700000002.M"),
                 re.fullmatch(r"[0-9a-f]{16}", before[3][0])]
        self.assertTrue(all(kinds), before)

        ours = self.run_ours()
        self.assertEqual(listing(ours.port), before)

    def test_a_maildir_already_served_by_pop3ng_keeps_its_own_uidls(self) -> None:
        # pop3ng first, Dovecot (say, for IMAP) later on the same maildir: its uidlist must not
        # rename messages pop3ng already listed.
        self.deliver(MESSAGES[0], 0)
        ours = self.run_ours()
        first = listing(ours.port)
        ours.stop()
        self.assertEqual(first[0][0], "1700000000.M000000P4000.old-host")
        port = self.run_dovecot()
        self.assertNotEqual(listing(port)[0][0], first[0][0])
        self.stop_dovecot()
        ours = self.run_ours()
        self.assertEqual(listing(ours.port), first)
        self.assertFalse(os.path.exists(os.path.join(self.maildir(), dovecot_uidlist.MAP_NAME)))
