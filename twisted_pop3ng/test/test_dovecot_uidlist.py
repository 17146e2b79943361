"""Dovecot's POP3 UIDLs carried over: ``dovecot-uidlist`` parsing, the UIDL map, the index's use of it.

The files here are written in the exact format Dovecot 2.3 writes (see the lines captured from a
real Dovecot in ``tests/integration/test_dovecot_migration.py``, which checks the whole switch
against Dovecot's own POP3 server).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from twisted_pop3ng.mailbox.maildir import dovecot_uidlist as du
from twisted_pop3ng.mailbox.maildir import index as mi
from twisted_pop3ng.mailbox.maildir import store as md
from twisted_pop3ng.mailbox.maildir.names import hashed_uid
from twisted_pop3ng.test.maildir_fixture import alice_maildir

#: As Dovecot 2.3 wrote it for a maildir served with pop3_save_uidl (UIDVALIDITY 1796424113 is
#: 0x6b1341b1): a saved custom UIDL, an empty P (= the base name), and a default-format message.
UIDLIST_V3 = """3 V1796424113 N6 G4446c630b141136bf86b000083ecc375
1 W20 P1796424113.1 :1700000000.M000000P1.host
2 W20 P :1700000001.M000001P1.host
4 W22 :1700000003.M000003P1.host
5 S30 W31 :1700000004.M000004P1.host
"""
NAMES = ["1700000000.M000000P1.host", "1700000001.M000001P1.host", "1700000003.M000003P1.host",
         "1700000004.M000004P1.host"]
EXPECTED = ["1796424113.1", "1700000001.M000001P1.host", "000000046b1341b1", "000000056b1341b1"]


class ParseTests(unittest.TestCase):
    def test_version_3(self) -> None:
        uidlist = du.parse_uidlist(UIDLIST_V3)
        self.assertEqual((uidlist.version, uidlist.uidvalidity, uidlist.next_uid), (3, 1796424113, 6))
        self.assertEqual(list(uidlist.pop3_uidls().items()), list(zip(NAMES, EXPECTED)))

    def test_version_1_courier_compatible(self) -> None:
        uidlist = du.parse_uidlist("1 1000 4\n1 1699.M1P1.host:2,S\n3 1700.M2P1.host\n")
        self.assertEqual(uidlist.pop3_uidls(), {"1699.M1P1.host": "00000001000003e8",
                                                "1700.M2P1.host": "00000003000003e8"})

    def test_later_line_for_a_name_wins_and_broken_lines_are_skipped(self) -> None:
        text = ("3 V7 N9\n1 :a.host\n2 :b.host\nx :c.host\n0 :d.host\n3 W1 no-colon\n"
                "4 :sub/dir\n5 :a.host\n\n")
        self.assertEqual(du.parse_uidlist(text).pop3_uidls(),
                         {"b.host": "0000000200000007", "a.host": "0000000500000007"})

    def test_broken_headers_are_errors(self) -> None:
        for header in ("", "3", "3 N5", "3 V0 N5", "2 1 2", "1 x 2", "9 V1 N1", "3 Vx N1"):
            self.assertRaises(du.UidlistError, du.parse_uidlist, header + "\n1 :a\n")

    def test_map_round_trip_with_awkward_names(self) -> None:
        rows = [("a b%c", "U1"), ("plain", "U2")]
        mapping = du.parse_map(du.format_map(rows).decode(), None)
        self.assertEqual(mapping.uidls, dict(rows))


class UIDLMapTests(unittest.TestCase):
    def test_new_messages_never_look_like_dovecot_ones(self) -> None:
        mapping = du.UIDLMap(None, {"old": "000000016b1341b1", "older": "custom"},
                             frozenset({"000000016b1341b1", "custom"}))
        self.assertEqual(mapping.uid_for("old"), "000000016b1341b1")
        self.assertEqual(mapping.uid_for("1700000009.M1P2.host"), "1700000009.M1P2.host")
        for base in ("custom", "00000001deadbeef", "00000001DEADBEEF"):
            self.assertEqual(mapping.uid_for(base), hashed_uid(base))


class MaildirTests(unittest.TestCase):
    """Through the maildir store, as a login sees it."""

    def setUp(self) -> None:
        self.root, self.store, self.path = alice_maildir(self, subdirs=True)
        for i, name in enumerate(NAMES):
            md.deliver(self.path, b"Subject: %d\r\n\r\nbody\r\n" % i, name)
        self.new_process()
        self.addCleanup(self.new_process)

    def new_process(self) -> None:
        mi.forget()
        du.forget()

    def write(self, name: str, text: str) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(text)

    def uidls(self) -> List[str]:
        box = self.store.open_mailbox("alice")
        try:
            return [info.uid for info in box.list_messages()]
        finally:
            box.close()

    def test_first_login_imports_and_later_ones_read_the_map(self) -> None:
        self.write(du.UIDLIST_NAME, UIDLIST_V3)
        self.assertEqual(self.uidls(), EXPECTED)
        with open(os.path.join(self.path, du.MAP_NAME)) as f:
            self.assertTrue(f.read().startswith(du.MAP_HEADER + "\n"))
        self.assertIn("\nuidmap ", open(os.path.join(self.path, mi.INDEX_NAME)).read())
        # Dovecot (still serving IMAP, say) rewrites its uidlist: nothing of ours changes.
        self.write(du.UIDLIST_NAME, UIDLIST_V3.replace("V1796424113", "V1"))
        md.deliver(self.path, b"new\r\n", "1700000100.M5P1.host")
        self.new_process()
        self.assertEqual(self.uidls(), EXPECTED + ["1700000100.M5P1.host"])

    def test_the_map_is_parsed_once_per_version(self) -> None:
        self.write(du.UIDLIST_NAME, UIDLIST_V3)
        self.uidls()
        first = du.uidl_map(self.path, self.path, True)
        md.deliver(self.path, b"new\r\n", "1700000100.M5P1.host")  # a scan, the same map object
        self.uidls()
        self.assertIs(du.uidl_map(self.path, self.path, True), first)
        # A changed map (an administrator's edit) is read again, and the cached snapshot dropped.
        text = open(os.path.join(self.path, du.MAP_NAME)).read().replace("1796424113.1", "edited.1")
        self.write(du.MAP_NAME, text)
        self.assertEqual(self.uidls()[0], "edited.1")
        self.assertIsNot(du.uidl_map(self.path, self.path, True), first)

    def test_a_maildir_pop3ng_served_before_never_imports(self) -> None:
        self.assertEqual(self.uidls(), NAMES)  # served by pop3ng before: no import later
        self.write(du.UIDLIST_NAME, UIDLIST_V3)
        self.new_process()
        self.assertEqual(self.uidls(), NAMES)
        self.assertFalse(os.path.exists(os.path.join(self.path, du.MAP_NAME)))

    def test_broken_uidlist_is_logged_and_our_uidls_used(self) -> None:
        events: List[Dict[str, Any]] = []
        observer: Any = events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.write(du.UIDLIST_NAME, "7 garbage\n")
        self.assertEqual(self.uidls(), NAMES)
        self.assertTrue(any("dovecot-uidlist" in str(e.get("error")) for e in events), events)

    def test_a_symlinked_uidlist_is_not_followed(self) -> None:
        target = os.path.join(self.root, "elsewhere")
        with open(target, "w") as f:
            f.write(UIDLIST_V3)
        os.symlink(target, os.path.join(self.path, du.UIDLIST_NAME))
        self.assertEqual(self.uidls(), NAMES)
