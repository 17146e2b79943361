"""The fuzzing seed corpus (``fuzz/corpus/TARGET/``) through its targets, in every test run.

Coverage-guided runs (``fuzz/run.py``, atheris) find new inputs; the ones worth keeping go into the
corpus, and from then on this test holds the promise each target checks (no traceback, no escaped
exception, every error a clear one).
"""

from __future__ import annotations

import os

from twisted.trial import unittest

from twisted_pop3ng.testing import fuzz_targets

from .support import ROOT

CORPUS = os.path.join(ROOT, "fuzz", "corpus")


class CorpusTests(unittest.TestCase):
    def test_every_target_has_a_seed_corpus(self) -> None:
        self.assertEqual(sorted(os.listdir(CORPUS)), sorted(fuzz_targets.TARGETS))
        for name in fuzz_targets.TARGETS:
            self.assertTrue(os.listdir(os.path.join(CORPUS, name)), name)

    def test_corpus_inputs_keep_every_promise(self) -> None:
        for name, target in sorted(fuzz_targets.TARGETS.items()):
            directory = os.path.join(CORPUS, name)
            for entry in sorted(os.listdir(directory)):
                with open(os.path.join(directory, entry), "rb") as f:
                    data = f.read()
                try:
                    target(data)
                except Exception as error:
                    self.fail("%s/%s: %s" % (name, entry, error))

    def test_a_broken_promise_is_a_finding(self) -> None:
        # The targets' oracle works: a logged traceback is reported, not swallowed.
        from twisted.logger import Logger

        def logs_a_failure() -> None:
            try:
                1 / 0
            except ZeroDivisionError:
                Logger().failure("boom")

        with self.assertRaises(fuzz_targets.FuzzFinding):
            with fuzz_targets._LoggedFailures():
                logs_a_failure()
        self.flushLoggedErrors(ZeroDivisionError)
