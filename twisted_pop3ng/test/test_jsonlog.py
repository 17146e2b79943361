"""The JSON-lines log observer for ``twistd --logger`` (twisted_pop3ng.logs)."""

from __future__ import annotations

import io
import json
import os
from typing import Any, Dict, List

from twisted.logger import Logger, LogPublisher
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.trial import unittest

from twisted_pop3ng import logs


def emitted(emit: Any) -> List[Dict[str, Any]]:
    """The records a JSONLinesObserver writes for what ``emit(logger)`` logs, one per line."""
    out = io.StringIO()
    publisher = LogPublisher(logs.JSONLinesObserver(out))
    emit(Logger(namespace="test.ns", observer=publisher))
    text = out.getvalue()
    assert text.endswith("\n"), text
    return [json.loads(line) for line in text.splitlines()]


class RecordTests(unittest.TestCase):
    def test_stable_keys_first_then_the_fields(self) -> None:
        [rec] = emitted(lambda log: log.info("user {user} did {n} things", event="thing.done",
                                             user="alice", n=3))
        self.assertEqual(list(rec)[:5], list(logs.KEYS))
        self.assertRegex(rec["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual({k: rec[k] for k in ("level", "namespace", "event", "text", "user", "n")},
                         {"level": "info", "namespace": "test.ns", "event": "thing.done",
                          "text": "user alice did 3 things", "user": "alice", "n": 3})
        self.assertFalse([key for key in rec if key.startswith("log_")])

    def test_an_event_without_a_name_and_levels(self) -> None:
        records = emitted(lambda log: (log.warn("careful"), log.error("bad"), log.debug("d")))
        self.assertEqual([(r["level"], r["event"], r["text"]) for r in records],
                         [("warn", None, "careful"), ("error", None, "bad"), ("debug", None, "d")])

    def test_a_failure_brings_its_traceback(self) -> None:
        def emit(log: Logger) -> None:
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("while {doing}", Failure(), doing="dividing")

        [rec] = emitted(emit)
        self.assertEqual((rec["level"], rec["text"]), ("critical", "while dividing"))
        self.assertIn("ZeroDivisionError", rec["traceback"])
        self.assertIn("Traceback", rec["traceback"])

    def test_fields_json_cannot_hold_and_fields_named_like_the_keys(self) -> None:
        class Thing:
            def __str__(self) -> str:
                return "a thing"

        [rec] = emitted(lambda log: log.info("x", raw=b"caf\xc3\xa9 \xff", obj=Thing(),
                                             nested={"k": (1, b"b")}, nan=float("nan"),
                                             text="mine", namespace=7, event=12))
        self.assertEqual(rec["raw"], "café \\xff")
        self.assertEqual(rec["obj"], "a thing")
        self.assertEqual(rec["nested"], {"k": [1, "b"]})
        self.assertEqual(rec["nan"], "nan")
        self.assertEqual((rec["text"], rec["text_"]), ("x", "mine"))
        self.assertEqual((rec["namespace"], rec["namespace_"]), ("test.ns", 7))
        self.assertEqual((rec["event"], rec["event_"]), (None, 12))

    def test_a_format_that_fails_is_still_a_record(self) -> None:
        [rec] = emitted(lambda log: log.info("{missing} field"))
        self.assertIn("Unable to format event", rec["text"])

    def test_legacy_events_without_their_duplicates(self) -> None:
        out = io.StringIO()
        observer = logs.JSONLinesObserver(out)
        legacy_log.addObserver(observer)
        self.addCleanup(legacy_log.removeObserver, observer)
        legacy_log.msg("legacy hello", system="sys")
        [rec] = [json.loads(line) for line in out.getvalue().splitlines()
                 if "legacy hello" in line]
        self.assertEqual(rec["text"], "legacy hello")
        self.assertEqual(rec["system"], "sys")
        for left_out in ("message", "isError", "format"):
            self.assertNotIn(left_out, rec)


class FactoryTests(unittest.TestCase):
    def test_json_observer_writes_to_the_file_the_environment_names(self) -> None:
        path = self.mktemp()
        self.patch(os, "environ", dict(os.environ, POP3NG_LOG_FILE=path))
        observer = logs.json_observer()
        self.addCleanup(observer.out.close)
        Logger(namespace="f", observer=observer).info("one")
        Logger(namespace="f", observer=observer).info("two")
        with open(path, encoding="utf-8") as f:
            self.assertEqual([json.loads(line)["text"] for line in f], ["one", "two"])

    def test_json_observer_writes_to_stdout_by_default(self) -> None:
        import sys

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "POP3NG_LOG_FILE"})
        observer = logs.json_observer()
        self.assertIs(observer.out, out)
