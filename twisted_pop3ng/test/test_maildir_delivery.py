"""The one Maildir delivery (:mod:`twisted_pop3ng._maildir`): the names that the store's
``deliver`` and ``pop3ng fetch`` give files are listed by the maildir store with the UIDL a client
expects, and the writing leaves nothing in tmp/."""

from __future__ import annotations

import os
import socket
import stat

from twisted.trial import unittest

from twisted_pop3ng import _maildir
from twisted_pop3ng.fetch.delivery import MaildirDestination
from twisted_pop3ng.mailbox.maildir import store as md
from twisted_pop3ng.test.maildir_fixture import alice_maildir


class SharedNamingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root, self.store, self.path = alice_maildir(self)

    def listed(self) -> list:
        box = self.store.open_mailbox("alice")
        self.addCleanup(box.close)
        return [(info.uid, info.size) for info in box.list_messages()]

    def test_store_deliver_names_are_their_own_uidl_in_delivery_order(self) -> None:
        first = md.deliver(self.path, b"one\n")
        second = _maildir.deliver(self.path, b"two\n", _maildir.unique_name(2000000000.5))
        self.assertEqual(self.listed(), [(first, 5), (second, 5)])
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])

    def test_fetched_messages_are_listed_under_their_fetch_names(self) -> None:
        """A Maildir filled by ``pop3ng fetch`` and served by the pop3ng server: each message's
        UIDL is its file name, so it stays the same across logins, index loss and cur/ moves."""
        dest = MaildirDestination(self.path, "pop3://bob@example.org:110")
        sinks = []
        for uid, body in (("uid-1", b"a\r\nb\r\n"), ("uid-2", b"c\r\n")):
            sink = dest.begin(uid)
            sink.write(body)
            sink.finish()
            sinks.append(sink)
        dest.commit(sinks)
        expected = [(dest.name_for("uid-1"), 6), (dest.name_for("uid-2"), 3)]  # CRLF wire sizes
        self.assertTrue(all(name.startswith(_maildir.KEYED_PREFIX) for name, _ in expected))
        self.assertEqual(sorted(self.listed()), sorted(expected))
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])

    def test_keyed_name_is_per_account_uidl_and_run(self) -> None:
        one = MaildirDestination(self.path, "pop3://bob@example.org:110")
        again = MaildirDestination(self.path, "pop3://bob@example.org:110")
        other = MaildirDestination(self.path, "pop3://carol@example.org:110")
        self.assertEqual(one.name_for("uid-1"), one.name_for("uid-1"))
        self.assertNotEqual(one.name_for("uid-1"), other.name_for("uid-1"))
        self.assertNotEqual(one.name_for("uid-1"), one.name_for("uid-2"))
        # Another run, another nonce: a later message under the same UIDL gets another file.
        self.assertNotEqual(one.name_for("uid-1"), again.name_for("uid-1"))
        again.nonce = one.nonce
        self.assertEqual(one.name_for("uid-1"), again.name_for("uid-1"))

    def test_host_name_cannot_break_the_name(self) -> None:
        """A ':' would start the flags (and change the base name, so the UIDL); a '/' a path."""
        self.patch(socket, "gethostname", lambda: "odd/host:name")
        name = md.deliver(self.path, b"x\n")
        self.assertNotIn(":", name)
        self.assertNotIn("/", name)
        self.assertEqual(self.listed(), [(name, 3)])

    def test_file_modes(self) -> None:
        """The store's ``deliver`` writes as ``open()`` does (the umask decides: a Dovecot running
        as the mail user must read what root delivered); ``pop3ng fetch`` keeps mail private."""
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        name = md.deliver(self.path, b"x\n")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.path, "new", name)).st_mode), 0o644)
        dest = MaildirDestination(self.path, "pop3://bob@example.org:110")
        sink = dest.begin("uid-1")
        sink.write(b"y\r\n")
        sink.finish()
        dest.commit([sink])
        fetched = os.path.join(self.path, "new", dest.name_for("uid-1"))
        self.assertEqual(stat.S_IMODE(os.stat(fetched).st_mode), 0o600)

    def test_planted_link_in_tmp_is_not_written_through(self) -> None:
        # audit F17: fetch's names are predictable; a hard link (fs.protected_hardlinks=0) or a
        # symlink planted at tmp/NAME must not make root truncate or overwrite its target
        _maildir.make_maildir(self.path)
        victim = os.path.join(self.root, "victim")
        with open(victim, "wb") as f:
            f.write(b"root's precious file\n")
        for plant in (os.link, os.symlink):
            name = _maildir.keyed_name("account\x00%s" % plant.__name__)
            plant(victim, os.path.join(self.path, "tmp", name))
            self.assertEqual(_maildir.deliver(self.path, b"fetched\n", name), name)
            with open(victim, "rb") as f:
                self.assertEqual(f.read(), b"root's precious file\n")
            with open(os.path.join(self.path, "new", name), "rb") as f:
                self.assertEqual(f.read(), b"fetched\n")
            self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
