"""The backend conformance suite (:mod:`twisted_pop3ng.testing.conformance`) run on the mbox store.

All three mixins: another program can remove mail from an mbox too (a mail client rewriting the
file), which ``remove_behind_back`` does with Python's ``mailbox.mbox`` under its locks, as a
mail client would (it writes a new file and renames it over the mbox).
"""

from __future__ import annotations

import mailbox
import os
import time

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from twisted_pop3ng.mailbox import store_from_spec
from twisted_pop3ng.testing.conformance import (CrossProcessConformanceMixin, ExternalRemovalConformanceMixin,
                                                StoreConformanceMixin)


class MboxConformanceTests(StoreConformanceMixin, CrossProcessConformanceMixin, ExternalRemovalConformanceMixin,
                           unittest.TestCase):
    def make_store(self):
        self.spec = "mbox:" + self.mktemp() + "/{user}"
        return store_from_spec(self.spec)

    def remove_behind_back(self, store, user, uid):
        path = store.path_for(user)
        index = os.path.join(os.path.dirname(path), ".%s.pop3ng-uidl" % os.path.basename(path))
        with open(index) as f:
            uids = [line.split()[1] for line in f.read().splitlines()[1:]]
        return deferToThread(_remove_with_python_mailbox, path, uids.index(uid))


def _remove_with_python_mailbox(path: str, position: int) -> None:
    box = mailbox.mbox(path, create=False)
    try:
        while True:
            try:
                box.lock()
                break
            except mailbox.ExternalClashError:
                time.sleep(0.01)
        try:
            box.remove(sorted(box.keys())[position])
            box.flush()
        finally:
            box.unlock()
    finally:
        box.close()
