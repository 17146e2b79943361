"""The mbox format: separators, mboxrd / mboxo quoting, sizes, and scans at every chunking.

Expected values come from a line-by-line oracle written here from the rules (jwz's separator
rule, one ``>`` removed per quoted line, one empty line before a separator dropped), never from
the code under test; sizes from the RFC 1939 oracle of the conformance suite.
"""

from __future__ import annotations

import io
import os
import random
import re
from typing import List

from twisted.trial import unittest

from twisted_pop3ng.mailbox.mbox import format as mbox_format
from twisted_pop3ng.mailbox.mbox.store import MboxStore
from twisted_pop3ng.testing.conformance import wire_form


def oracle(data: bytes, fmt: str) -> List[bytes]:
    """The stored messages of an mbox, by the rules, one line at a time."""
    quoted = re.compile(rb">+From " if fmt == "mboxrd" else rb">From ")
    messages: List[List[bytes]] = []
    previous_blank = True
    for line in re.findall(rb"[^\n]*\n|[^\n]+\Z", data):  # (LF ends a line; a CR is data)
        dated = re.search(rb"\d\d?:\d\d", line) and re.search(rb"(?<!\d)\d{4}(?!\d)", line)
        if line.startswith(b"From ") and previous_blank and dated:
            if messages and messages[-1] and messages[-1][-1] in (b"\n", b"\r\n"):
                messages[-1].pop()
            messages.append([])
        elif messages:
            messages[-1].append(line[1:] if quoted.match(line) else line)
        previous_blank = line in (b"\n", b"\r\n")
    if messages and messages[-1] and messages[-1][-1] in (b"\n", b"\r\n"):
        messages[-1].pop()
    return [b"".join(lines) for lines in messages]


def scan_bytes(test: unittest.TestCase, data: bytes, fmt: str = "mboxrd"):
    path = test.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    test.addCleanup(os.close, fd)
    result = mbox_format.scan(fd, fmt, len(data))
    texts = [b"".join(mbox_format.MessageReader(fd, r.content_start, r.content_end, fmt).chunks())
             for r in result.records]
    return result, texts


FROM_LINES = b"From a@b Thu Dec  3 10:00:00 2026\n"


class QuotingTests(unittest.TestCase):
    def test_mboxrd_round_trip(self):
        """Every ``>*From `` line survives an mboxrd write and read, byte for byte; on disk each
        gained exactly one ``>``."""
        body = (b"Subject: quoting\n\nFrom start\n>From one\n>>From two\n>>>From three\nFrom\n"
                b" From not at the start\n>From\nFrom \n>\n")
        store = MboxStore(self.mktemp() + "/{user}")
        store.deliver("alice", io.BytesIO(body))
        with open(store.path_for("alice"), "rb") as f:
            disk = f.read()
        self.assertIn(b"\n>From start\n>>From one\n>>>From two\n>>>>From three\nFrom\n"
                      b" From not at the start\n>From\n>From \n>\n\n", disk)
        result, texts = scan_bytes(self, disk)
        self.assertEqual(texts, [body])
        self.assertEqual(result.records[0].size, len(wire_form(body)))

    def test_mboxo_reading(self):
        """An mbox as Exim, Postfix local and procmail write it (only ``From `` quoted): read
        with format=mboxo, ``>From `` loses its ``>`` and ``>>From `` is left alone; read as
        mboxrd, ``>>From `` would lose one too -- the ambiguity the option settles."""
        disk = FROM_LINES + b"Subject: o\n\n>From quoted by the MTA\n>>From as the sender wrote it\n\n"
        _, texts = scan_bytes(self, disk, "mboxo")
        self.assertEqual(texts, [b"Subject: o\n\nFrom quoted by the MTA\n>>From as the sender wrote it\n"])
        _, texts = scan_bytes(self, disk, "mboxrd")
        self.assertEqual(texts, [b"Subject: o\n\nFrom quoted by the MTA\n>From as the sender wrote it\n"])

    def test_mboxo_store_writes_mboxo(self):
        """A format=mboxo store quotes as the MTAs writing that file do: ``From `` only; a line
        that was ``>From `` comes back as ``From `` (mboxo's own loss, docs/mbox.rst)."""
        store = MboxStore.from_spec(self.mktemp() + "/{user}?format=mboxo")
        store.deliver("alice", io.BytesIO(b"Subject: o\n\nFrom me\n>From you\n"))
        with open(store.path_for("alice"), "rb") as f:
            disk = f.read()
        self.assertTrue(disk.endswith(b"\nSubject: o\n\n>From me\n>From you\n\n"), disk)
        _, texts = scan_bytes(self, disk, "mboxo")
        self.assertEqual(texts, [b"Subject: o\n\nFrom me\nFrom you\n"])

    def test_quote_and_unquote_are_inverse(self):
        """mboxrd quoting undone by mboxrd unquoting is the identity, at any line start."""
        data = b"From x\n>From y\n>>From z\nplain\n>x\n>>\nFrom\n"
        self.assertEqual(mbox_format.unquote(mbox_format.quote(data, True), "mboxrd", True), data)

    def test_quote_turns_only_plain_crlf_into_lf(self):
        """CRLF line ends are stored as LF (as MTAs store mail), except a CRLF after a CR, whose
        wire form would change."""
        self.assertEqual(mbox_format.quote(b"a\r\nb\r\r\n\r\n", True), b"a\nb\r\r\n\n")
        for data in (b"a\r\nb\r\r\n\r\n", b"x\r\r\n", b"\r\n\r\n"):
            self.assertEqual(wire_form(mbox_format.quote(data, True)), wire_form(data))


class SeparatorTests(unittest.TestCase):
    def test_from_line_needs_an_empty_line_before_it(self):
        """A ``From `` line after a non-empty line is content (a writer that did not quote it),
        not a new message; after an empty line it starts one, and that empty line is dropped."""
        disk = (FROM_LINES + b"Subject: 1\n\nbody\nFrom here on, unquoted\n\n"
                + FROM_LINES + b"Subject: 2\n\nsecond\n\n")
        result, texts = scan_bytes(self, disk)
        self.assertEqual(texts, [b"Subject: 1\n\nbody\nFrom here on, unquoted\n", b"Subject: 2\n\nsecond\n"])
        self.assertEqual([r.start for r in result.records], [0, disk.index(FROM_LINES, 1)])

    def test_from_line_needs_a_date(self):
        """An unquoted ``From `` body line after an empty line without a date (Dovecot does not
        quote them) is content; with a time and a year it starts a message."""
        disk = (FROM_LINES + b"Subject: 1\n\nFrom the LDA, unquoted\n\n"
                + b"From bob@example.org  Fri Dec 04 22:59:24 2026\nSubject: 2\n\n"
                + b"From x 4 Dec 2026 22:59:24 +0000\nSubject: 3\n\n")
        _, texts = scan_bytes(self, disk)
        self.assertEqual(texts, [b"Subject: 1\n\nFrom the LDA, unquoted\n", b"Subject: 2\n", b"Subject: 3\n"])

    def test_last_message_without_separator(self):
        """A last message without its empty line (or without a final newline) keeps its content."""
        _, texts = scan_bytes(self, FROM_LINES + b"Subject: a\n\nno separator\n")
        self.assertEqual(texts, [b"Subject: a\n\nno separator\n"])
        result, texts = scan_bytes(self, FROM_LINES + b"Subject: a\n\nno newline")
        self.assertEqual(texts, [b"Subject: a\n\nno newline"])
        self.assertEqual(result.records[0].size, len(wire_form(texts[0])))

    def test_crlf_mbox(self):
        """An mbox with CRLF lines: the CRLF empty line is the separator; sizes are wire sizes."""
        disk = (b"From a Thu Dec  3 10:00:00 2026\r\nSubject: 1\r\n\r\none\r\n\r\n"
                b"From a Thu Dec  3 10:00:00 2026\r\nSubject: 2\r\n\r\ntwo\r\n\r\n")
        result, texts = scan_bytes(self, disk)
        self.assertEqual(texts, [b"Subject: 1\r\n\r\none\r\n", b"Subject: 2\r\n\r\ntwo\r\n"])
        self.assertEqual([r.size for r in result.records], [len(wire_form(t)) for t in texts])

    def test_text_before_the_first_from_line_is_no_message(self):
        result, texts = scan_bytes(self, b"junk\n\n" + FROM_LINES + b"Subject: x\n\nx\n")
        self.assertEqual(texts, [b"Subject: x\n\nx\n"])

    def test_empty_message(self):
        result, texts = scan_bytes(self, FROM_LINES + b"\n" + FROM_LINES + b"Subject: x\n\n")
        self.assertEqual(texts, [b"", b"Subject: x\n"])
        self.assertEqual(result.records[0].size, 0)


class ChunkingTests(unittest.TestCase):
    """The scan and the reader work on chunks that end at line ends; at tiny chunk and line
    limits every line, separator and quoted line crosses a chunk boundary somewhere."""

    def setUp(self):
        self.patch(mbox_format, "READ_CHUNK", mbox_format.READ_CHUNK)
        self.patch(mbox_format, "LINE_LIMIT", mbox_format.LINE_LIMIT)

    def random_mbox(self, rng: random.Random) -> bytes:
        lines = [b"From ", b">From ", b">>From x", b"", b"\r", b".", b"Subject: s", b"X-UIDL: u%d",
                 b"x" * 40, b"From x", b"a\rb", b"end", b"From y Thu Dec  3 10:00:00 2026", b"From 10:30 to 2026"]
        parts = []
        for number in range(rng.randint(1, 6)):
            parts.append(FROM_LINES)
            for _ in range(rng.randint(0, 12)):
                line = rng.choice(lines)
                line = line % number if b"%d" in line else line
                parts.append(line + rng.choice([b"\n", b"\n", b"\r\n"]))
            parts.append(b"\n")
        return b"".join(parts)

    def test_every_chunking_agrees_with_the_oracle(self):
        rng = random.Random(1939)
        for _ in range(60):
            data = self.random_mbox(rng)
            expected = oracle(data, "mboxrd")
            for chunk, limit in ((9, 64), (17, 64), (64, 64), (1 << 18, 1 << 16)):
                mbox_format.READ_CHUNK = chunk
                mbox_format.LINE_LIMIT = limit
                result, texts = scan_bytes(self, data)
                self.assertEqual(texts, expected, (chunk, data))
                self.assertEqual([r.size for r in result.records], [len(wire_form(t)) for t in texts])
                self.assertEqual([r.length for r in result.records], [len(t) for t in texts])

    def test_long_lines(self):
        """Lines longer than LINE_LIMIT are read in pieces: content and size stay exact."""
        mbox_format.LINE_LIMIT = 40  # (above the From_ line's length: its date must be seen)
        mbox_format.READ_CHUNK = 16
        body = b"Subject: long\n\n" + b"y" * 100 + b"\n>From " + b"z" * 50 + b"\n" + b"w" * 40
        disk = FROM_LINES + mbox_format.quote(body, True) + b"\n\n"
        result, texts = scan_bytes(self, disk)
        self.assertEqual(texts, [body + b"\n"])
        self.assertEqual(result.records[0].size, len(wire_form(body)))
