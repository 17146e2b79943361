"""The pure parts of ``pop3ng fetch``'s second round: forward URLs, the envelope sender taken from
a (hostile) message, the daemon's backoff, the progress line and the summaries."""

from __future__ import annotations

import io
import json
import os

from twisted.trial import unittest

from twisted_pop3ng.fetch.daemon import next_delay
from twisted_pop3ng.fetch.delivery import _Spool
from twisted_pop3ng.fetch.forward import _return_path, parse_forward_url
from twisted_pop3ng.fetch.progress import AccountReport, ProgressBar, json_summary, summary_line


class ForwardURLTests(unittest.TestCase):
    def test_valid(self) -> None:
        cases = {
            "smtp://mx.example.org": ("smtp", "mx.example.org", 25, None),
            "smtp://127.0.0.1:2525": ("smtp", "127.0.0.1", 2525, None),
            "smtps://mx.example.org": ("smtps", "mx.example.org", 465, None),
            "lmtp://localhost": ("lmtp", "localhost", 24, None),
            "lmtp:/run/dovecot/lmtp": ("lmtp", None, None, "/run/dovecot/lmtp"),
            "LMTP:///run/dovecot/lmtp": ("lmtp", None, None, "/run/dovecot/lmtp"),
        }
        for text, (scheme, host, port, path) in cases.items():
            url = parse_forward_url(text)
            self.assertEqual((url.scheme, url.host, url.port, url.socket_path),
                             (scheme, host, port, path), text)

    def test_invalid(self) -> None:
        for text, words in (("http://x", "a forward URL is"), ("lmtp:run/lmtp", "absolute"),
                            ("smtp://", "HOST"), ("smtp://h:99999", "port"),
                            ("smtp://user@h", "nothing after it"), ("smtp://h/path", "nothing")):
            with self.assertRaises(ValueError) as caught:
                parse_forward_url(text)
            self.assertIn(words, str(caught.exception), text)


def spool(data: bytes) -> _Spool:
    sink = _Spool("uid")
    sink.write(data)
    return sink


class ReturnPathTests(unittest.TestCase):
    def test_taken_from_the_header(self) -> None:
        self.assertEqual(_return_path(spool(b"Return-Path: <a@example.org>\r\nSubject: x\r\n\r\nb")),
                         "a@example.org")
        self.assertEqual(_return_path(spool(b"return-path:   <>\r\n\r\nbody")), "")

    def test_never_from_the_body_nor_a_hostile_value(self) -> None:
        for message in (b"Subject: x\r\n\r\nReturn-Path: <a@example.org>\r\n",
                        b"Return-Path: <a b@c>\r\n\r\n",
                        b"Return-Path: <a@b\rRCPT TO:<evil@x>>\r\n\r\n",
                        b"Return-Path: a@b\r\n\r\n"):
            self.assertEqual(_return_path(spool(message)), "", message)


class BackoffTests(unittest.TestCase):
    def test_exponential_up_to_the_cap_with_jitter(self) -> None:
        low = [next_delay(60, n, 600, rand=lambda a, b: a) for n in range(6)]
        high = [next_delay(60, n, 600, rand=lambda a, b: b) for n in range(6)]
        self.assertEqual(low, [48.0, 96.0, 192.0, 384.0, 480.0, 480.0])
        # max_backoff is the longest wait, jitter included (it once reached 1.2 times it)
        self.assertEqual(high, [72.0, 144.0, 288.0, 576.0, 600.0, 600.0])

    def test_try_later_is_not_a_failure_and_login_delay_is_a_floor(self) -> None:
        one = lambda a, b: 1.0  # noqa: E731
        self.assertEqual(next_delay(60, 3, 600, try_later=True, rand=one), 60.0)
        self.assertEqual(next_delay(60, 0, 600, login_delay=900, rand=one), 900.0)
        self.assertEqual(next_delay(60, 0, 30, rand=one), 60.0)  # a cap below the interval


class ProgressTests(unittest.TestCase):
    def test_bar_over_two_accounts(self) -> None:
        now = [100.0]
        stream = io.StringIO()
        bar = ProgressBar(stream, clock=lambda: now[0])
        first, second = bar.account(), bar.account()
        first.start(10, 1_000_000)
        second.start(30, 3_000_000)
        now[0] += 2.0
        first.advance(10, 1_000_000)
        self.assertEqual(bar.line(), "[######..................] 10/40 msgs  1.0 MB/4.0 MB  "
                                     "5 msg/s  ETA 0:06")
        now[0] += 6.0
        second.advance(30, 3_000_000)
        self.assertTrue(stream.getvalue().endswith("\r\x1b[K[########################] 40/40 msgs  "
                                                   "4.0 MB/4.0 MB  5 msg/s"))
        bar.clear()
        self.assertTrue(stream.getvalue().endswith("\r\x1b[K"))

    def test_summaries(self) -> None:
        ok = AccountReport("work", 0, listed=5, delivered=3, skipped=2, deleted=5, octets=2500)
        failed = AccountReport("home", 3, error="authentication failed: -ERR [AUTH] no")
        self.assertEqual(summary_line(ok), "work: 3 delivered (2.5 KB), 2 already delivered, "
                                           "5 deleted on the server")
        self.assertEqual(summary_line(failed),
                         "home: failed (exit 3): authentication failed: -ERR [AUTH] no")
        data = json.loads(json_summary([ok, failed], 3))
        self.assertEqual(data["exit"], 3)
        self.assertEqual([(a["account"], a["exit"]) for a in data["accounts"]],
                         [("work", 0), ("home", 3)])
        self.assertEqual(data["accounts"][0]["already_delivered"], 2)


class JournalTests(unittest.TestCase):
    """The state journal of the forward and MDA destinations (fetch.state)."""

    def test_journal_survives_without_a_save_and_a_torn_line_is_ignored(self) -> None:
        from twisted_pop3ng.fetch.state import FetchState

        path = os.path.join(os.path.abspath(self.mktemp()), "state.json")
        state = FetchState.load(path, "acct")
        state.journal({"a": 10})
        state.journal({"b": 20})
        state.close()  # a kill: no save
        with open(path + ".journal", "ab") as f:
            f.write(b'["c", 3')  # torn by a kill mid-write
        again = FetchState.load(path, "acct")
        self.assertTrue(again.is_delivered("a", 10))
        self.assertTrue(again.is_delivered("b", 20))
        self.assertFalse(again.is_delivered("c"))
        again.save()  # the state file now holds them: the journal is emptied
        self.assertEqual(os.path.getsize(path + ".journal"), 0)
        third = FetchState.load(path, "acct")
        self.assertEqual(sorted(third.delivered), ["a", "b"])
