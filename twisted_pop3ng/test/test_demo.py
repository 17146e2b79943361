"""``twistd pop3ng --demo``'s tree: made once, reused with the same password, and a clear usage
error (not a traceback) when ``./pop3ng-demo`` is something else."""

from __future__ import annotations

import os

from twisted.python import usage
from twisted.trial import unittest

from twisted_pop3ng.service import demo
from twisted_pop3ng.service.options import DEMO_DIR, Options


class PrepareTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())

    def test_made_once_and_reused_with_the_same_password(self) -> None:
        first = demo.prepare(self.root)
        self.assertEqual(len(os.listdir(os.path.join(self.root, "mail", "demo", "Maildir", "new"))),
                         len(demo.SAMPLES))
        self.assertEqual(demo.prepare(self.root).password, first.password)
        with open(first.passwd_file) as f:
            self.assertEqual(f.read(), "demo:{PLAIN}%s\n" % first.password)

    def test_a_file_where_the_directory_goes(self) -> None:
        with open(self.root, "w"):
            pass
        with self.assertRaises(demo.DemoError) as caught:
            demo.prepare(self.root)
        self.assertIn(self.root, str(caught.exception))

    def test_a_user_file_that_is_not_the_demos(self) -> None:
        os.makedirs(self.root)
        for text in ("garbage\n", "alice:{PLAIN}pw\n", "demo:{SHA512-CRYPT}$6$x\n", "demo:{PLAIN}\n",
                     ""):
            with open(os.path.join(self.root, "users"), "w") as f:
                f.write(text)
            with self.assertRaises(demo.DemoError, msg=text):
                demo.prepare(self.root)

    def test_twistd_says_it_as_a_usage_error(self) -> None:
        cwd = os.getcwd()
        here = os.path.abspath(self.mktemp())
        os.makedirs(here)
        os.chdir(here)
        self.addCleanup(os.chdir, cwd)
        with open(DEMO_DIR, "w"):
            pass
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["--demo"])
        self.assertIn("--demo", str(caught.exception))
        self.assertIn("remove or rename", str(caught.exception))
