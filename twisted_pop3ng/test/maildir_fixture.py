"""The maildir the maildir tests share: alice's, under the test's own temporary directory."""

from __future__ import annotations

import os
from typing import Tuple

from twisted.trial import unittest

from twisted_pop3ng.mailbox.maildir import index as mi
from twisted_pop3ng.mailbox.maildir import store as md


def alice_maildir(test: unittest.TestCase, subdirs: bool = False,
                  fresh_cache: bool = False) -> Tuple[str, md.MaildirStore, str]:
    """(root, store, alice's maildir path) for ``test``: a store of ``ROOT/{user}/Maildir``.
    ``subdirs``: create cur/ new/ tmp/ now (else the first delivery or login does);
    ``fresh_cache``: the in-process snapshot cache starts and ends the test empty."""
    root = os.path.abspath(test.mktemp())
    store = md.MaildirStore(os.path.join(root, "{user}", "Maildir"))
    path = store.path_for("alice")
    if subdirs:
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(path, sub))
    if fresh_cache:
        mi.forget()
        test.addCleanup(mi.forget)
    return root, store, path
