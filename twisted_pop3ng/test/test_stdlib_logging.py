"""Records of the standard library's logging (psycopg's pool, the mbox store) reach Twisted's log,
in their logger's namespace and at their level; one that repeats is counted, not written again."""

from __future__ import annotations

import logging
from typing import Any, Dict, List

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from twisted_pop3ng.service.stdlib_logging import TwistedLogHandler, install


class HandlerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.now = 1000.0
        self.handler = TwistedLogHandler(repeat_interval=60.0, clock=lambda: self.now)
        self.logger = logging.getLogger("psycopg.pool.test-%d" % id(self))
        self.logger.propagate = False
        self.logger.addHandler(self.handler)
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def ours(self) -> List[Dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace") == self.logger.name]

    def test_level_namespace_and_text(self) -> None:
        self.logger.warning("error connecting in %r: %s", "pop3ng", "connection refused")
        self.logger.error("boom")
        self.logger.info("below the logger's level: not a record at all")
        (warning, error) = self.ours()
        self.assertEqual(warning["log_level"], LogLevel.warn)
        self.assertEqual(warning["text"], "error connecting in 'pop3ng': connection refused")
        self.assertEqual(error["log_level"], LogLevel.error)

    def test_a_traceback_is_kept(self) -> None:
        try:
            1 / 0
        except ZeroDivisionError:
            self.logger.exception("failed")
        (event,) = self.ours()
        self.assertIn("ZeroDivisionError", event["text"])

    def test_repeats_are_counted_then_reported(self) -> None:
        for attempt in range(5):
            self.logger.warning("error connecting in %r: attempt %d", "pop3ng", attempt)
            self.now += 1
        self.logger.warning("another message")
        self.assertEqual([e["text"] for e in self.ours()],
                         ["error connecting in 'pop3ng': attempt 0", "another message"])
        self.now += 60
        self.logger.warning("error connecting in %r: attempt %d", "pop3ng", 99)
        last = self.ours()[-1]
        self.assertEqual(last["suppressed"], 4)
        self.assertIn("4 more like it", last["log_format"].format(**last))

    def test_install_once(self) -> None:
        root = logging.getLogger()
        self.addCleanup(setattr, root, "handlers", list(root.handlers))
        root.handlers = [h for h in root.handlers if not isinstance(h, TwistedLogHandler)]
        install()
        install()
        self.assertEqual(len([h for h in root.handlers if isinstance(h, TwistedLogHandler)]), 1)
