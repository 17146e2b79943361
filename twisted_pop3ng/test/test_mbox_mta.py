"""An MTA-style mbox writer for the mbox tests, run as a process of its own:

    python -m twisted_pop3ng.test.test_mbox_mta MBOX TAG COUNT [--hold]

It appends COUNT messages (:func:`mta_message`) with Python's ``mailbox.mbox``, each under
``lock()``/``unlock()`` -- fcntl (lockf) and then the ``MBOX.lock`` dotlock, both non-blocking
(Debian Policy 11.6's order) -- retrying while someone else holds them, as an MTA's delivery
retries. It prints ``clash`` the first time a lock is busy, ``holding`` with ``--hold`` once the
first message is written and the locks are still held (until stdin closes), and ``wrote COUNT``
at the end. Python's writer quotes mboxo-style (``From `` becomes ``>From ``), as Debian's
Exim, Postfix ``local`` and procmail do.

The tests of the writer itself check that what it writes is what ``mailbox.mbox`` reads back.
"""

from __future__ import annotations

import mailbox
import sys
import time

from twisted.trial import unittest


def mta_message(tag: str, number: int) -> bytes:
    """A message as an MTA hands it over (LF lines), with a body line an mbox writer must quote."""
    return (b"From: mta@example.org\nTo: alice@example.org\nSubject: %s %d\nMessage-ID: <%s.%d@mta.example.org>\n\n"
            b"From the MTA, a line an mbox writer must quote\nbody of %s %d\n.a dot line\n"
            % (tag.encode(), number, tag.encode(), number, tag.encode(), number))


def main(argv: list) -> int:
    path, tag, count = argv[0], argv[1], int(argv[2])
    hold = "--hold" in argv[3:]
    said_clash = False
    for number in range(1, count + 1):
        box = mailbox.mbox(path, create=True)
        while True:
            try:
                box.lock()
                break
            except mailbox.ExternalClashError:
                if not said_clash:
                    print("clash", flush=True)
                    said_clash = True
                time.sleep(0.01)
        try:
            envelope = b"From mta@example.org " + time.asctime(time.gmtime()).encode() + b"\n"
            box.add(envelope + mta_message(tag, number))
            box.flush()
            if hold and number == 1:
                print("holding", flush=True)
                sys.stdin.read()
        finally:
            box.unlock()
            box.close()
    print("wrote %d" % count, flush=True)
    return 0


class WriterTests(unittest.TestCase):
    def test_messages_read_back_by_python(self):
        """The writer's messages are what Python's own mbox reader gives back (mboxo quoting)."""
        path = self.mktemp()
        self.assertEqual(main([path, "t", "2"]), 0)
        box = mailbox.mbox(path, create=False)
        try:
            got = [box.get_bytes(key) for key in box.keys()]
        finally:
            box.close()
        self.assertEqual(len(got), 2)
        for number, data in enumerate(got, 1):
            self.assertEqual(data.replace(b"\n>From the MTA", b"\nFrom the MTA"), mta_message("t", number))
        with open(path, "rb") as f:
            self.assertIn(b"\n>From the MTA", f.read())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
