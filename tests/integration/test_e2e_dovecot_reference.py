"""Dovecot as the reference: the same maildir content served by Dovecot 2.3 and by ``twistd pop3ng``
must give the same bytes for RETR, TOP, LIST and STAT, and the same +OK/-ERR for error paths.

Messages that hit Dovecot's known bugs are left out on purpose (they are covered byte-exact against
RFC 1939 in test_e2e_messages): a first line starting with "." (Dovecot does not stuff it), a last
line without newline and the empty message (Dovecot's LIST size does not count the CRLF it adds).
Our deliberate strictness (arguments to NOOP/STAT/RSET/CAPA are errors) is not compared either.
"""

from __future__ import annotations

import shutil
import socket
import tempfile

from twisted.trial import unittest

from .dovecot import dovecot_available, start_dovecot
from .support import Session, start_server
from .test_e2e_messages import TRICKY, boundary_messages

PASSWORD = "open  sesame with spaces"

#: Well-formed messages (every line ends with a newline, the first line does not start with ".").
def reference_messages():
    chosen = {}
    for name, raw in list(TRICKY.items()) + list(boundary_messages().items()):
        if not raw or raw.startswith(b".") or not raw.endswith(b"\n"):
            continue
        chosen[name] = raw
    return chosen


ERROR_PATHS = [b"LIST 0", b"LIST 999", b"LIST -1", b"LIST a", b"LIST 1 2", b"UIDL 0", b"UIDL 999", b"UIDL x",
               b"RETR", b"RETR 0", b"RETR 999", b"RETR x", b"DELE", b"DELE 0", b"DELE 999", b"TOP 1",
               b"TOP 1 -1", b"TOP 1 a", b"TOP 0 1", b"TOP 999 1", b"TOP 1 99999999999", b"FOO", b"USER x",
               b"PASS x", b"APOP x y",
               b"DELE 1", b"DELE 1", b"RETR 1", b"LIST 1", b"UIDL 1", b"TOP 1 0", b"RSET", b"RETR 1",
               b"NOOP", b"STAT"]


class DovecotReferenceTests(unittest.TestCase):
    def setUp(self):
        self.assertTrue(dovecot_available(), "these tests need dovecot-pop3d and root (see README)")
        self.messages = reference_messages()
        users = {"alice": PASSWORD}
        self.roots = [tempfile.mkdtemp(prefix="pop3ng-ref-"), tempfile.mkdtemp(prefix="dovecot-ref-")]
        for root in self.roots:
            self.addCleanup(shutil.rmtree, root, True)
        self.ours = start_server(self.roots[0], users=users, tls=False)
        self.addCleanup(self.ours.stop)
        self.dovecot = start_dovecot(self.roots[1], users)
        self.addCleanup(self.dovecot.stop)
        self.names = sorted(self.messages)
        for i, name in enumerate(self.names):
            filename = "%d.M%06dP1.ref" % (1_700_000_000 + i, i)
            self.ours.deliver("alice", self.messages[name], name=filename)
            self.dovecot.deliver("alice", self.messages[name], name=filename)

    def session(self, port):
        s = Session(socket.create_connection(("127.0.0.1", port), 20))
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertTrue(s.command(b"USER alice").startswith(b"+OK"))
        reply = s.command(b"PASS " + PASSWORD.encode())
        self.assertTrue(reply.startswith(b"+OK"), reply)
        return s

    def transcript(self, port, commands):
        s = self.session(port)
        out = []
        for command in commands:
            status = s.command(command)
            verb = command.split(b" ")[0]
            multi = status.startswith(b"+OK") and (verb in (b"RETR", b"TOP") or command in (b"LIST", b"UIDL"))
            out.append((status, s.body() if multi else None))
        self.assertTrue(s.command(b"QUIT").startswith(b"+OK"))
        self.assertTrue(s.closed())
        return out

    def test_same_as_dovecot(self):
        # one test: starting Dovecot costs seconds
        self.check_same_bytes()
        self.check_same_status_on_error_paths()

    def check_same_bytes(self):
        commands = [b"STAT", b"LIST"]
        for i in range(len(self.names)):
            n = i + 1
            commands += [b"LIST %d" % n, b"RETR %d" % n, b"TOP %d 0" % n, b"TOP %d 1" % n, b"TOP %d 3" % n]
        ours = self.transcript(self.ours.port, commands)
        theirs = self.transcript(self.dovecot.port, commands)
        for command, (our_status, our_body), (their_status, their_body) in zip(commands, ours, theirs):
            self.assertEqual(our_status[:3], their_status[:3], command)
            if command.startswith((b"STAT", b"LIST ")):
                self.assertEqual(our_status, their_status, command)
            if command == b"LIST":
                self.assertEqual(our_body, their_body)
            elif our_body is not None:
                self.assertEqual(our_body, their_body, (command, self.names[int(command.split()[1]) - 1]))

    def check_same_status_on_error_paths(self):
        ours = self.transcript(self.ours.port, ERROR_PATHS)
        theirs = self.transcript(self.dovecot.port, ERROR_PATHS)
        self.assertEqual([(c, o[0][:3]) for c, o in zip(ERROR_PATHS, ours)],
                         [(c, t[0][:3]) for c, t in zip(ERROR_PATHS, theirs)])
