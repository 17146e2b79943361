"""The maildrop lock file names the process that holds it, also in a forked ``--workers`` child."""

from __future__ import annotations

import os

from twisted.trial import unittest

from twisted_pop3ng.mailbox.maildir import store as md


class LockHolderTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = md.MaildirStore(os.path.abspath(self.mktemp()) + "/{user}/Maildir")
        self.lock_path = os.path.join(self.store.path_for("alice"), md.LOCK_NAME)

    def holder(self) -> str:
        with open(self.lock_path) as f:
            return f.read()

    def test_names_this_process(self) -> None:
        mailbox = self.store.open_mailbox("alice")
        try:
            self.assertEqual(self.holder().split("@")[0], str(os.getpid()))
        finally:
            mailbox.close()

    def test_names_a_forked_child_not_its_parent(self) -> None:
        # Open once in the parent first: the file then holds the parent's pid, which the child
        # must replace with its own (a worker forked after the parent served a login).
        self.store.open_mailbox("alice").close()
        child = os.fork()
        if child == 0:  # pragma: no cover (the child's code runs, but exits with its verdict)
            try:
                mailbox = self.store.open_mailbox("alice")
                mailbox.close()
                os._exit(0)
            finally:
                os._exit(1)
        _, status = os.waitpid(child, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertEqual(self.holder().split("@")[0], str(child))

    def test_held_lock_refuses_a_second_session(self) -> None:
        first = self.store.open_mailbox("alice")
        try:
            self.assertRaises(md.MailboxInUse, self.store.open_mailbox, "alice")
        finally:
            first.close()
        self.store.open_mailbox("alice").close()
