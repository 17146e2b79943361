"""``pop3ng deliver`` as an MTA runs it (a process, the message on standard input): its exit
status (sysexits.h) and stderr, and the delivered mail read back through a real ``twistd pop3ng``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional, Tuple

from twisted.trial import unittest

from .e2e import stuffed, wire_lines, wire_message
from .support import ROOT, Session, start_server, write_users
from .test_e2e_messages import TRICKY

USERS = {"alice": "alice pw", "bob@example.org": "bob pw"}
#: Stored as given, whatever the line endings, dots, CRs or octets (one process each: a few).
SAMPLES = ("bare_cr", "binary", "crlf", "dot_lines", "fake_terminator", "first_line_is_dot", "long_line_100k",
           "mixed", "no_final_newline_cr", "only_dot")


class DeliverTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.root = tempfile.mkdtemp(prefix="pop3ng-deliver-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.users = write_users(os.path.join(self.root, "users"), USERS)
        self.template = os.path.join(self.root, "mail", "{user}", "Maildir")

    def deliver(self, args: List[str], message: bytes, prefix: Optional[List[str]] = None,
                with_defaults: bool = True) -> Tuple[int, str]:
        """Run ``pop3ng deliver`` (``--mailbox``/``--auth`` of this test first); (status, stderr)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        defaults = ["--mailbox", "maildir:" + self.template, "--auth", "passwd-file:" + self.users]
        done = subprocess.run(list(prefix or []) + [sys.executable, "-m", "twisted_pop3ng.cli", "deliver"]
                              + (defaults if with_defaults else []) + args,
                              input=message, capture_output=True, env=env, timeout=60, cwd="/")
        self.assertEqual(done.stdout, b"")
        stderr = done.stderr.decode("utf-8", "replace")
        self.assertNotIn("Traceback", stderr)
        return done.returncode, stderr

    def visible(self, user: str) -> List[str]:
        maildir = self.template.replace("{user}", user)
        return [sub + "/" + name for sub in ("new", "cur", "tmp") if os.path.isdir(os.path.join(maildir, sub))
                for name in os.listdir(os.path.join(maildir, sub))]


class DeliverRoundTripTests(DeliverTestCase):
    def round_trip(self, mailbox: str, names: List[str]) -> None:
        """Deliver ``names`` to alice and one mbox-style message to bob into ``mailbox``; read
        them back through ``twistd pop3ng`` on the same store."""
        defaults = ["--mailbox", mailbox, "--auth", "passwd-file:" + self.users]
        for name in names:
            self.assertEqual(self.deliver(defaults + ["alice"], TRICKY[name], with_defaults=False), (0, ""), name)
        self.assertEqual(self.deliver(defaults + ["-f", "s@x.test", "bob@example.org"],
                                      b"From s@x.test Fri Dec  4 10:00:00 2026\nSubject: b\n\nbody\n",
                                      with_defaults=False), (0, ""))
        server = start_server(self.root, users=dict(USERS), tls=False, extra_args=["--mailbox", mailbox])
        self.addCleanup(server.stop)
        s = Session(server.connect(timeout=30))
        self.addCleanup(s.close)
        self.assertTrue(s.login(b"alice", b"alice pw").startswith(b"+OK"))
        self.assertEqual(s.command(b"STAT").split()[1], b"%d" % len(names))
        for number, name in enumerate(names, 1):
            self.assertEqual(s.command(b"LIST %d" % number),
                             b"+OK %d %d\r\n" % (number, len(wire_message(TRICKY[name]))))
            self.assertTrue(s.command(b"RETR %d" % number).startswith(b"+OK"))
            self.assertEqual(s.body(), stuffed(wire_lines(TRICKY[name])), name)
        s.command(b"QUIT")
        s = Session(server.connect(timeout=30))
        self.addCleanup(s.close)
        self.assertTrue(s.login(b"bob@example.org", b"bob pw").startswith(b"+OK"))
        self.assertTrue(s.command(b"RETR 1").startswith(b"+OK"))
        self.assertEqual(s.body(), b"Return-Path: <s@x.test>\r\nSubject: b\r\n\r\nbody\r\n.\r\n")
        self.assertNotIn("Traceback", server.log())

    def test_maildir(self) -> None:
        self.round_trip("maildir:" + self.template, sorted(SAMPLES))

    def test_mbox(self) -> None:
        self.round_trip("mbox:" + os.path.join(self.root, "mbox", "{user}"), sorted(SAMPLES)[:4])

    def test_postgresql(self) -> None:
        from twisted_pop3ng.testing.postgresql import drop_database, fresh_database

        dsn = fresh_database()
        self.addCleanup(drop_database, dsn)
        self.round_trip("postgresql:" + dsn, sorted(SAMPLES)[:4])


class ExitStatusTests(DeliverTestCase):
    def test_unknown_user(self) -> None:
        self.assertEqual(self.deliver(["carol@example.org"], b"Subject: x\n\nx\n"),
                         (67, "pop3ng deliver: carol@example.org: no such user\n"))
        self.assertFalse(os.path.exists(os.path.join(self.root, "mail")))

    def test_local_part_of_a_known_user(self) -> None:
        self.assertEqual(self.deliver(["alice@example.org"], b"Subject: x\n\nx\n"), (0, ""))
        self.assertEqual(len(self.visible("alice")), 1)

    def test_usage(self) -> None:
        status, err = self.deliver(["alice"], b"x\n", with_defaults=False)
        self.assertEqual(status, 64)
        self.assertIn("the following arguments are required: --mailbox", err)
        status, err = self.deliver(["--mailbox", "maildir:/var/mail/nouser", "alice"], b"x\n", with_defaults=False)
        self.assertEqual(status, 64)
        self.assertIn("{user}", err)

    def test_no_message(self) -> None:
        self.assertEqual(self.deliver(["alice"], b""), (65, "pop3ng deliver: no message on standard input\n"))

    def test_full_disk_is_a_temporary_failure(self) -> None:
        if os.geteuid() != 0:
            raise AssertionError("this test mounts a tmpfs: run it as root (the CI does)")
        mail = os.path.join(self.root, "mail")
        os.makedirs(mail)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mail], check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", mail], check=False)
        status, err = self.deliver(["alice"], b"Subject: big\n\n" + b"z" * 400_000 + b"\n")
        self.assertEqual(status, 75)
        self.assertEqual(err, "pop3ng deliver: alice: Insufficient system storage, try again later "
                              "(No space left on device)\n")
        self.assertEqual(self.visible("alice"), [])
        self.assertEqual(self.deliver(["alice"], b"Subject: small\n\nfits\n"), (0, ""))

    def test_no_permission(self) -> None:
        """A maildir the delivering user may not write (another user's, mode 0700)."""
        maildir = self.template.replace("{user}", "alice")
        os.makedirs(maildir, mode=0o700)
        os.chown(maildir, 65534, 65534)
        # As root, without the capability that lets root write anywhere (util-linux's setpriv).
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
        status, err = self.deliver(["alice"], b"Subject: x\n\nx\n", prefix=prefix)
        self.assertEqual(status, 77)
        self.assertIn("alice: Mail store not writable, try again later (Permission denied)", err)
