"""``twistd pop3ng``'s LMTP options (checked at startup, with a clear message) and the services they
start; the old names of ``twisted_pop3ng.delivery`` (now :mod:`twisted_pop3ng.fetch.delivery`)."""

from __future__ import annotations

import os
import warnings
from typing import Any, List

from twisted.application import service
from twisted.python import usage
from twisted.trial import unittest

from twisted_pop3ng.delivery.lmtp import LMTPFactory, ThreadPoolService
from twisted_pop3ng.service import delivery_options
from twisted_pop3ng.service.options import Options


class LMTPOptionsTests(unittest.TestCase):
    def setUp(self) -> None:
        root = self.mktemp()
        os.makedirs(root)
        self.users = os.path.join(root, "users")
        with open(self.users, "w") as f:
            f.write("alice:{PLAIN}pw\n")
        self.mailbox = "maildir:" + os.path.join(root, "{user}")

    def parse(self, *extra: str, auth: str = "") -> Options:
        options = Options()
        options.parseOptions(["--auth", auth or "passwd-file:" + self.users, "--mailbox", self.mailbox]
                             + list(extra))
        return options

    def test_repeatable_listen_and_defaults(self) -> None:
        options = self.parse("--lmtp-listen", "tcp:0:interface=127.0.0.1", "--lmtp-listen=unix:/tmp/x.sock",
                             "--lmtp-trace-headers", "no", "--lmtp-max-size", "1000")
        self.assertEqual(options["lmtp-listen"], ["tcp:0:interface=127.0.0.1", "unix:/tmp/x.sock"])
        config = options["lmtp-config"]
        self.assertEqual((config.max_size, config.trace_headers, config.max_recipients, config.timeout),
                         (1000, False, 100, 300.0))

    def test_no_lmtp_without_the_option(self) -> None:
        options = self.parse()
        self.assertEqual(options["lmtp-listen"], [])
        parent = service.MultiService()
        delivery_options.add_services(options, None, parent)
        self.assertEqual(list(parent), [])

    def test_services(self) -> None:
        options = self.parse("--lmtp-listen", "tcp:0:interface=127.0.0.1", "--lmtp-listen", "unix:lmtp.sock")
        parent = service.MultiService()
        delivery_options.add_services(options, None, parent)
        children: List[Any] = list(parent)
        self.assertIsInstance(children[0], ThreadPoolService)  # first: stopped after the listeners
        self.assertEqual(children[0].pool.max, 8)
        self.assertEqual([c.description for c in children[1:]],
                         ["LMTP tcp:0:interface=127.0.0.1", "LMTP unix:lmtp.sock"])
        factory = children[1].factory
        self.assertIsInstance(factory, LMTPFactory)
        self.assertIs(factory.store, options["store"])  # the store the POP3 side serves

    def test_bad_values_are_usage_errors(self) -> None:
        for extra, text in [
            (["--lmtp-listen", "nonsense:x"], "--lmtp-listen: bad endpoint 'nonsense:x'"),
            (["--lmtp-listen", "tcp:24", "--lmtp-trace-headers", "maybe"], "--lmtp-trace-headers must be yes or no"),
            (["--lmtp-listen", "tcp:24", "--lmtp-max-size", "0"], "--lmtp-max-size must be at least 1"),
            (["--lmtp-listen", "tcp:24", "--lmtp-threads", "0"], "--lmtp-threads must be at least 1"),
            (["--lmtp-listen", "tcp:24", "--lmtp-timeout", "0"], "--lmtp-timeout must be positive"),
            (["--lmtp-listen", "tcp:99999"], "--lmtp-listen 'tcp:99999': the port must be a number"),
            (["--lmtp-listen", "tcp:24", "--lmtp-spool-dir", "/nonexistent/spool"],
             "--lmtp-spool-dir /nonexistent/spool: not a directory this server can write in"),
            (["--lmtp-max-size", "1000"], "--lmtp-max-size: only with --lmtp-listen ENDPOINT"),
            (["--lmtp-threads=4", "--lmtp-timeout", "9"],
             "--lmtp-threads, --lmtp-timeout: only with --lmtp-listen ENDPOINT"),
        ]:
            error = self.assertRaises(usage.UsageError, self.parse, *extra)
            self.assertIn(text, str(error))

    def test_workers_share_the_pop3_ports_only(self) -> None:
        # The LMTP listener and its threads stay in the main process: the worker processes are
        # handed the POP3 listeners alone (anything else has no port to share).
        from twisted_pop3ng.service import build
        from twisted_pop3ng.service.workers import WorkerPool

        options = self.parse("--listen", "tcp:0:interface=127.0.0.1", "--lmtp-listen",
                             "tcp:0:interface=127.0.0.1", "--workers", "2")
        top = build.makeService(options)
        pools = [child for child in top if isinstance(child, WorkerPool)]
        self.assertEqual(len(pools), 1)
        self.assertEqual([type(listener) for listener in pools[0].listeners], [build.ListeningService])

    def test_checkers_that_cannot_list_users(self) -> None:
        error = self.assertRaises(usage.UsageError, self.parse, "--lmtp-listen", "tcp:24", auth="anonymous")
        self.assertIn("--lmtp-listen: no --auth checker can tell which users exist", str(error))


class OldDeliveryNamesTests(unittest.TestCase):
    def test_old_names_warn_and_are_the_fetch_ones(self) -> None:
        import twisted_pop3ng.delivery as package
        from twisted_pop3ng.fetch import delivery as moved

        for name in ("SPOOL_MEMORY", "DeliveryError", "MaildirDestination", "MboxDestination",
                     "MDADestination", "open_destination"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.assertIs(getattr(package, name), getattr(moved, name))
            self.assertTrue(any("twisted_pop3ng.fetch.delivery" in str(w.message) for w in caught), name)
        self.assertRaises(AttributeError, getattr, package, "NoSuchName")
