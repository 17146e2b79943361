"""``pop3ng fetch`` (the real command, in a subprocess) against scripted buggy or hostile servers
over real sockets: duplicate UIDLs (finding F12), and values no honest server sends (F16) -- a
10 MB UIDL line, negative and absurd sizes, control characters in UIDLs and in ``-ERR`` text, and
UIDLs shaped like paths."""

from __future__ import annotations

import os
import socketserver
import threading
from typing import Dict, List, Optional, Tuple

from twisted_pop3ng import fetch, wire

from .test_fetch import FetchTestBase, maildir_messages


class _Hostile(socketserver.StreamRequestHandler):
    """A POP3 server that says what the test scripted: ``server.messages`` is a list of
    (UIDL, message); ``server.replies`` overrides the reply to a verb with raw bytes. DELE marks,
    QUIT removes the marked messages, as a real server does."""

    def handle(self) -> None:
        try:
            self._serve()
        except (ConnectionError, BrokenPipeError):
            pass  # the fetcher gave up on us: its side is what the tests check

    def _serve(self) -> None:
        server = self.server
        write = self.wfile.write
        write(b"+OK hostile\r\n")
        marked = set()
        for raw in self.rfile:
            words = raw.strip().split()
            verb = words[0].upper() if words else b""
            live = server.messages
            if verb in server.replies:
                write(server.replies[verb])
            elif verb == b"CAPA":
                write(b"+OK\r\nUSER\r\nUIDL\r\nPIPELINING\r\n.\r\n")
            elif verb in (b"USER", b"PASS"):
                write(b"+OK\r\n")
            elif verb == b"UIDL":
                write(b"+OK\r\n" + b"".join(b"%d %s\r\n" % (i + 1, u) for i, (u, _) in enumerate(live))
                      + b".\r\n")
            elif verb == b"LIST":
                write(b"+OK\r\n" + b"".join(b"%d %d\r\n" % (i + 1, server.sizes.get(i + 1, wire.wire_size_of(m)))
                                            for i, (_, m) in enumerate(live)) + b".\r\n")
            elif verb == b"RETR":
                server.retrieved.append(int(words[1]))
                write(b"+OK\r\n" + wire.encode_message(live[int(words[1]) - 1][1]))
            elif verb == b"DELE":
                marked.add(int(words[1]))
                write(b"+OK\r\n")
            elif verb == b"QUIT":
                server.deleted += [live[n - 1][0] for n in sorted(marked)]
                server.messages = [m for i, m in enumerate(live) if i + 1 not in marked]
                write(b"+OK bye\r\n")
                return
            else:
                write(b"-ERR unknown\r\n")


def message(i: int) -> bytes:
    return b"From: a@example.org\nSubject: message %d\n\nbody %d\n" % (i, i)


class HostileServerFetchTests(FetchTestBase):
    def serve(self, messages: List[Tuple[bytes, bytes]],
              replies: Optional[Dict[bytes, bytes]] = None) -> Tuple[socketserver.TCPServer, str]:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Hostile)
        server.daemon_threads = True
        server.messages, server.replies, server.deleted = list(messages), dict(replies or {}), []
        # (LIST sizes to announce instead of the true ones, by message number; RETRs seen)
        server.sizes, server.retrieved = {}, []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return server, "pop3://u@127.0.0.1:%d" % server.server_address[1]

    def run_fetch(self, url: str, *extra: str) -> Tuple[int, str]:
        return self.fetch(url, "--allow-plaintext", "--maildir", self.out, *extra,
                          env={"POP3NG_PASSWORD": "x"})

    def assert_refused(self, messages: List[Tuple[bytes, bytes]], replies: Dict[bytes, bytes],
                       text: str) -> str:
        server, url = self.serve(messages, replies)
        code, err = self.run_fetch(url)
        self.assertEqual(code, fetch.EXIT_CONNECTION, err)
        self.assertIn(text, err)
        self.assertNotIn("Traceback", err)
        self.assertTrue(err.strip().isprintable(), repr(err))
        self.assertEqual(maildir_messages(self.out), [])
        self.assertEqual(server.deleted, [])
        self.assertEqual(len(server.messages), len(messages))
        return err

    def test_duplicate_uidls_are_neither_fetched_nor_deleted(self):
        """F12: two messages under one UIDL. Before the fix they shared a tmp/ file, the run
        failed, and the next run took both for delivered and deleted both: one was lost."""
        messages = [(b"a", message(0)), (b"dup", message(1)), (b"b", message(2)),
                    (b"dup", message(3))]
        server, url = self.serve(messages)
        for _ in range(2):
            code, err = self.run_fetch(url)
            self.assertEqual(code, fetch.EXIT_ERROR, err)
            self.assertIn("dup: the server gives this UIDL to messages", err)
            self.assertIn("left on the server", err)
        self.assertEqual(sorted(maildir_messages(self.out)), sorted([message(0), message(2)]))
        self.assertEqual(sorted(server.deleted), [b"a", b"b"])
        self.assertEqual(server.messages, [(b"dup", message(1)), (b"dup", message(3))])
        self.assertEqual(os.listdir(os.path.join(self.out, "tmp")), [])

    def test_ten_megabyte_uidl_line(self):
        self.assert_refused([(b"a", message(0))],
                            {b"UIDL": b"+OK\r\n1 " + b"u" * (10 << 20) + b"\r\n.\r\n"},
                            "listing line longer than")

    def test_negative_size(self):
        self.assert_refused([(b"a", message(0))], {b"LIST": b"+OK\r\n1 -5\r\n.\r\n"},
                            "malformed LIST reply")

    def test_huge_size(self):
        self.assert_refused([(b"a", message(0))],
                            {b"LIST": b"+OK\r\n1 999999999999999999\r\n.\r\n"},
                            "implausible number in the LIST reply")

    def test_uidl_with_control_characters(self):
        for uid in (b"evil\x1b]0;pwned\x07", b"nul\x00byte", b"new\nline"):
            replies = {b"UIDL": b"+OK\r\n1 " + uid + b"\r\n.\r\n"}
            err = self.assert_refused([(b"a", message(0))], replies, "invalid UIDL")
            self.assertNotIn("\x1b", err)
            self.assertNotIn("\x00", err)

    def test_uidl_shaped_like_a_path_never_names_a_file(self):
        """Valid UIDLs (0x21-0x7E) may hold ``/`` and ``..``: the files are named by a digest."""
        uids = [b"../../escaped-1", b"/tmp/escaped-2", b"..", b"tmp/../../escaped-3"]
        messages = [(uid, message(i)) for i, uid in enumerate(uids)]
        server, url = self.serve(messages)
        code, err = self.run_fetch(url)
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(maildir_messages(self.out)), sorted(m for _, m in messages))
        self.assertEqual(sorted(server.deleted), sorted(uids))
        for sub in ("new", "cur", "tmp"):
            for name in os.listdir(os.path.join(self.out, sub)):
                self.assertRegex(name, r"^pop3ng-[0-9a-f]{40}$")
        for directory, _, files in os.walk(self.root):
            self.assertFalse([f for f in files if "escaped" in f], directory)
        self.assertFalse(os.path.exists("/tmp/escaped-2"))

    def test_message_far_larger_than_listed_is_left_on_the_server(self):
        """F16: the server announces 100 octets and sends 5 MB. Before the fix all of it was
        written to the maildir (a hostile server could fill the disk); now at most twice the
        LIST size plus 1 MiB reaches the disk, the message stays on the server and is reported,
        the others are delivered, and the exit status is 1."""
        huge = b"Subject: huge\n\n" + (b"x" * 998 + b"\n") * 5000
        messages = [(b"a", message(0)), (b"huge", huge), (b"b", message(2))]
        server, url = self.serve(messages)
        server.sizes[2] = 100
        code, err = self.run_fetch(url)
        self.assertEqual(code, fetch.EXIT_ERROR, err)
        self.assertIn("huge: the server sent", err)
        self.assertIn("listed at 100", err)
        self.assertIn("left on the server", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(sorted(maildir_messages(self.out)), sorted([message(0), message(2)]))
        self.assertEqual(sorted(server.deleted), [b"a", b"b"])
        self.assertEqual([uid for uid, _ in server.messages], [b"huge"])
        self.assertEqual(os.listdir(os.path.join(self.out, "tmp")), [])
        # The next run asks again (the server may have been fixed) and refuses again.
        server.sizes = {1: 100}  # (it is message 1 now)
        code, err = self.run_fetch(url)
        self.assertEqual(code, fetch.EXIT_ERROR, err)
        self.assertIn("huge: the server sent", err)
        self.assertEqual([uid for uid, _ in server.messages], [b"huge"])

    def test_max_message_size(self):
        """``--max-message-size``: a message LIST gives as larger is not even retrieved; one
        whose body turns out larger is dropped like an over-sized one."""
        big = b"Subject: big\n\n" + b"y" * 5000 + b"\n"
        messages = [(b"a", message(0)), (b"big", big), (b"liar", big)]
        server, url = self.serve(messages)
        server.sizes[3] = 100
        code, err = self.run_fetch(url, "--max-message-size", "4000")
        self.assertEqual(code, fetch.EXIT_ERROR, err)
        self.assertIn("big: %d octets, more than --max-message-size 4000" % wire.wire_size_of(big), err)
        self.assertIn("liar: the server sent", err)
        self.assertNotIn(2, server.retrieved)
        self.assertEqual(maildir_messages(self.out), [message(0)])
        self.assertEqual(sorted(uid for uid, _ in server.messages), [b"big", b"liar"])
        code, err = self.run_fetch(url, "--max-message-size", "0")
        self.assertEqual(code, fetch.EXIT_USAGE, err)

    def test_err_text_cannot_drive_the_terminal(self):
        server, url = self.serve([(b"a", message(0))],
                                 {b"PASS": b"-ERR [AUTH] \x1b]0;pwned\x07\x1b[2J denied\r\n"})
        code, err = self.run_fetch(url)
        self.assertEqual(code, fetch.EXIT_AUTH, err)
        self.assertNotIn("\x1b", err)
        self.assertNotIn("\x07", err)
        self.assertIn("\\x1b]0;pwned\\x07", err)
        self.assertEqual(server.deleted, [])

