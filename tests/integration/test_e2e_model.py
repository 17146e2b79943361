"""Black-box conformance against a model: random command sequences (valid and invalid, one at a
time and pipelined), every reply predicted byte for byte where RFC 1939 fixes it, +OK/-ERR elsewhere;
at QUIT exactly the messages marked deleted are gone."""

from __future__ import annotations

import random

from .e2e import TwistdTestCase, stuffed, top_lines, wire_lines, wire_message
from .test_e2e_messages import TRICKY


class Model:
    def __init__(self, messages, uids):
        self.messages = messages
        self.uids = uids
        self.deleted = set()

    def sizes(self):
        return [len(wire_message(m)) for m in self.messages]

    def live(self):
        return [i for i in range(len(self.messages)) if i not in self.deleted]

    def valid(self, n):
        return 1 <= n <= len(self.messages) and n - 1 not in self.deleted

    def expect(self, command):
        """(exact status or b"+OK"/b"-ERR" prefix, exact body or None, is_multi)."""
        words = command.split()  # trailing blanks are tolerated (as Dovecot does for "LIST ")
        if not words:
            return b"-ERR", None, False
        verb, args = words[0].upper(), words[1:]
        sizes = self.sizes()
        if verb == b"STAT" and not args:
            live = self.live()
            return b"+OK %d %d\r\n" % (len(live), sum(sizes[i] for i in live)), None, False
        if verb == b"LIST" and not args:
            return b"+OK", b"".join(b"%d %d\r\n" % (i + 1, sizes[i]) for i in self.live()) + b".\r\n", True
        if verb == b"UIDL" and not args:
            return b"+OK", b"".join(b"%d %s\r\n" % (i + 1, self.uids[i]) for i in self.live()) + b".\r\n", True
        if verb in (b"LIST", b"UIDL", b"RETR", b"DELE") and len(args) == 1:
            n = int(args[0]) if args[0].isdigit() else -1
            if not self.valid(n):
                return b"-ERR", None, False
            if verb == b"LIST":
                return b"+OK %d %d\r\n" % (n, sizes[n - 1]), None, False
            if verb == b"UIDL":
                return b"+OK %d %s\r\n" % (n, self.uids[n - 1]), None, False
            if verb == b"RETR":
                return b"+OK", stuffed(wire_lines(self.messages[n - 1])), True
            self.deleted.add(n - 1)
            return b"+OK", None, False
        if verb == b"TOP" and len(args) == 2:
            n = int(args[0]) if args[0].isdigit() else -1
            if not self.valid(n) or not args[1].isdigit():
                return b"-ERR", None, False
            return b"+OK", stuffed(top_lines(self.messages[n - 1], int(args[1]))), True
        if verb in (b"NOOP", b"RSET") and not args:
            if verb == b"RSET":
                self.deleted.clear()
            return b"+OK", None, False
        return b"-ERR", None, False


def random_command(rng, count):
    n = rng.choice([rng.randint(1, count), rng.randint(1, count), rng.randint(0, count + 2), rng.choice([-1, 0])])
    arg = str(n).encode() if rng.random() > 0.05 else rng.choice([b"x", b"1x", b"", b"+1"])
    choice = rng.randrange(13)
    if choice == 0:
        return b"STAT"
    if choice == 1:
        return b"LIST"
    if choice == 2:
        return b"UIDL"
    if choice in (3, 4):
        return b"LIST " + arg
    if choice == 5:
        return b"UIDL " + arg
    if choice == 6:
        return b"RETR " + arg
    if choice == 7:
        return b"TOP %s %d" % (arg, rng.choice([0, 1, 2, 5, 1000]))
    if choice in (8, 9):
        return b"DELE " + arg
    if choice == 10:
        return b"RSET" if rng.random() < 0.3 else b"NOOP"
    if choice == 11:
        return rng.choice([b"FOO", b"LIST 1 2", b"STAT 1", b"USER x", b"", b"TOP 1"])
    return b"NOOP"


class ModelTests(TwistdTestCase):
    def run_model(self, seed, pipelined):
        rng = random.Random(seed)
        user, _ = self.fresh_user()
        names = sorted(TRICKY)[:15]
        messages = [TRICKY[n] for n in names]
        for i, raw in enumerate(messages):
            self.server.deliver(user, raw, name="%d.M%06dP1.model" % (1_700_000_000 + i, i))
        s = self.login(user)
        uids = [u for _, u in sorted(self.uidl_map(s).items())]
        model = Model(messages, uids)
        commands = [random_command(rng, len(messages)) for _ in range(400)]
        if pipelined:
            s.send(b"".join(c + b"\r\n" for c in commands))
        for command in commands:
            if not pipelined:
                s.send(command + b"\r\n")
            status = s.line()
            want_status, want_body, multi = model.expect(command)
            if want_status in (b"+OK", b"-ERR"):
                self.assertTrue(status.startswith(want_status), (seed, command, status))
            else:
                self.assertEqual(status, want_status, (seed, command))
            if multi:
                self.assertEqual(s.body(), want_body, (seed, command))
        self.assertTrue(s.command(b"QUIT").startswith(b"+OK"))
        self.assertTrue(s.closed())
        s = self.login(user)
        self.assertEqual(sorted(self.uidl_map(s).values()), sorted(uids[i] for i in model.live()))

    def test_one_at_a_time(self):
        for seed in range(5):
            self.run_model(seed, pipelined=False)

    def test_pipelined(self):
        for seed in range(5, 10):
            self.run_model(seed, pipelined=True)
