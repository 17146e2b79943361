"""Shared fixtures of the ``pop3ng fetch`` black-box tests: a test root with a password file and a
private state home, the real command in a subprocess (optionally signalled at an exact step), a
private Dovecot as the source, readers of what was delivered, and a scripted POP3 server.

Expected bytes come from :mod:`twisted_pop3ng.testing.rfc1939`, never from the codec under test:
the scripted server encodes its replies with it, and :func:`delivered_form` is what a delivery
must hold.
"""

from __future__ import annotations

import collections
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from twisted.trial import unittest

from twisted_pop3ng.testing import rfc1939

from .dovecot import DovecotProcess, start_dovecot
from .e2e import wait_for
from .support import ROOT, ServerProcess, make_certificates

PASSWORD = "pass word with spaces"


def make_message(i: int, size: int = 300, user: str = "bob") -> bytes:
    """A message as a Unix mail store holds it (LF line endings, as Maildir delivery writes it),
    with lines a POP3 server must dot-stuff and an mbox must quote."""
    body = (b"line %d of the body, some filler text\n" % i) * max(1, size // 40)
    return (b"From: sender@example.org\nTo: %s@example.org\nSubject: test %d\n"
            b"Message-ID: <%d.%s@test>\n\n.starts with a dot\n..two dots\nFrom the start\n"
            % (user.encode(), i, i, user.encode())) + body


def delivered_form(raw: bytes) -> bytes:
    """What a Maildir, mbox or MDA delivery holds for a served message: its RFC 1939 lines, each
    ending in LF (the line ending of a Unix mail store)."""
    return b"".join(line + b"\n" for line in rfc1939.wire_lines(raw))


def maildir_messages(path: str) -> List[bytes]:
    """The contents of every message in the Maildir at ``path`` (new/ and cur/, by file name)."""
    out = []
    for sub in ("new", "cur"):
        directory = os.path.join(path, sub)
        if os.path.isdir(directory):
            for name in sorted(os.listdir(directory)):
                with open(os.path.join(directory, name), "rb") as f:
                    out.append(f.read())
    return out


def mbox_messages(path: str) -> List[bytes]:
    """The messages in the mboxrd file ``path`` (none if it does not exist), ">From " quoting
    undone; each entry there ends with a blank line, which is not part of the message."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        entries = re.split(rb"(?m)^From MAILER-DAEMON [^\n]*\n", f.read())
    if entries[0]:
        raise AssertionError("the mbox does not start with a From line: %r" % entries[0][:100])
    return [re.sub(rb"(?m)^>(>*From )", rb"\1", entry[:-1]) for entry in entries[1:]]


def server_ca(server: ServerProcess) -> str:
    """The CA certificate file a client must trust for ``server`` (started with TLS)."""
    assert server.certs, "the server was started without TLS"
    return server.certs["ca"]


class FetchTestCase(unittest.TestCase):
    """A test root with a password file and a private ``XDG_STATE_HOME``; runs of ``pop3ng fetch``."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.state_home = os.path.join(self.root, "state-home")
        self.password_file = os.path.join(self.root, "password")
        with open(self.password_file, "w") as f:
            f.write(PASSWORD + "\n")
        self.out = os.path.join(self.root, "Maildir")  # the destination, where one is enough
        #: The messages put on the source server, by user.
        self.mail: Dict[str, List[bytes]] = collections.defaultdict(list)

    def env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = dict(os.environ, PYTHONPATH=ROOT, XDG_STATE_HOME=self.state_home)
        env.pop("POP3NG_PASSWORD", None)  # a test that wants it says so
        env.update(extra or {})
        return env

    def command(self, *args: str, kill_at: Optional[str] = None,
                term_at: Optional[str] = None) -> List[str]:
        """``pop3ng fetch ARGS``; with ``kill_at="STEP:N"`` (or ``term_at``), through the test-only
        entry point that SIGKILLs (SIGTERMs) the fetcher the N-th time it reaches STEP."""
        if kill_at is not None:
            return [sys.executable, "-m", "tests.integration.fetch_with_crash", kill_at, *args]
        if term_at is not None:
            return [sys.executable, "-m", "tests.integration.fetch_with_crash", "--term", term_at, *args]
        return [sys.executable, "-m", "twisted_pop3ng.cli", "fetch", *args]

    def fetch(self, *args: str, env: Optional[Dict[str, str]] = None,
              kill_at: Optional[str] = None) -> Tuple[int, str]:
        """Run the command to its end: (exit status, stderr)."""
        result = subprocess.run(self.command(*args, kill_at=kill_at), env=self.env(env),
                                capture_output=True, timeout=300)
        return result.returncode, result.stderr.decode("utf-8", "replace")

    def start_dovecot(self, users: Iterable[str], extra_config: str = "",
                      passwords: Optional[Dict[str, str]] = None) -> DovecotProcess:
        """A private Dovecot (STLS on ``port``) holding ``users`` with :data:`PASSWORD` (unless
        ``passwords`` says otherwise); sets ``self.certs`` and ``self.dovecot``."""
        self.certs = make_certificates(self.root)
        accounts = {user: (passwords or {}).get(user, PASSWORD) for user in users}
        self.dovecot = start_dovecot(os.path.join(self.root, "dovecot"), accounts, certs=self.certs,
                                     extra_config=extra_config)
        self.addCleanup(self.dovecot.stop)
        return self.dovecot

    def put(self, count: int, size: int = 300, user: str = "bob") -> None:
        """Deliver ``count`` more messages to ``user`` on the Dovecot source; remembered in ``mail``."""
        start = len(self.mail[user])
        for i in range(start, start + count):
            message = make_message(i, size, user)
            self.mail[user].append(message)
            self.dovecot.deliver(user, message)

    def on_server(self, user: str = "bob") -> int:
        """How many messages ``user`` still has on the Dovecot source."""
        return len(maildir_messages(self.dovecot.maildir(user)))

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition``; fail the test if it does not hold within a generous four minutes."""
        self.assertTrue(wait_for(condition, timeout=240, interval=0.02), "timed out waiting for " + what)


class ScriptedPOP3Server(socketserver.ThreadingTCPServer):
    """A POP3 server that says what a test scripted, on a real loopback socket in a thread.

    ``messages`` is a list of (UIDL, message); DELE marks, QUIT removes the marked ones, as a real
    server does. ``replies`` overrides the reply to a verb with raw bytes, ``sizes`` the LIST size
    of a message number; RETR of a UIDL in ``refuse`` is answered ``-ERR``; the first session drops
    the connection halfway through RETR ``drop_at``; ``no_uidl`` leaves UIDL out of CAPA;
    ``quit_unanswered`` makes QUIT close the connection without a reply or a deletion. Replies
    are built with the RFC 1939 oracle, so a bug in the client's codec cannot cancel out.
    """

    daemon_threads = True

    def __init__(self, messages: List[Tuple[bytes, bytes]], replies: Optional[Dict[bytes, bytes]] = None,
                 sizes: Optional[Dict[int, int]] = None, refuse: Iterable[bytes] = (),
                 drop_at: Optional[int] = None, no_uidl: bool = False,
                 quit_unanswered: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedSession)
        self.messages = list(messages)
        self.replies = dict(replies or {})
        self.sizes = dict(sizes or {})
        self.refuse: Set[bytes] = set(refuse)
        self.drop_at = drop_at
        self.no_uidl = no_uidl
        self.quit_unanswered = quit_unanswered
        # What the fetcher did: sessions opened, USER/PASS seen, RETRs by number, UIDLs deleted.
        self.sessions = 0
        self.logins = 0
        self.retrieved: List[int] = []
        self.deleted: List[bytes] = []

    @property
    def url(self) -> str:
        return "pop3://u@127.0.0.1:%d" % self.server_address[1]


def with_uids(messages: List[bytes]) -> List[Tuple[bytes, bytes]]:
    """``messages`` under the UIDLs uid-0, uid-1, ..."""
    return [(b"uid-%d" % i, m) for i, m in enumerate(messages)]


class ScriptedServerTestCase(FetchTestCase):
    """``pop3ng fetch`` against a :class:`ScriptedPOP3Server`, into the Maildir ``out``."""

    def serve(self, server: ScriptedPOP3Server) -> ScriptedPOP3Server:
        """Serve ``server`` in a thread until the test ends."""
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return server

    def fetch_from(self, server: ScriptedPOP3Server, *extra: str) -> Tuple[int, str]:
        """A run without TLS (the scripted server has none) into ``out``."""
        return self.fetch(server.url, "--allow-plaintext", "--maildir", self.out, *extra,
                          env={"POP3NG_PASSWORD": "x"})


class _ScriptedSession(socketserver.StreamRequestHandler):
    server: ScriptedPOP3Server

    def handle(self) -> None:
        try:
            self._serve()
        except ConnectionError:
            pass  # the fetcher gave up on us (abortConnection): its side is what the tests check

    def _serve(self) -> None:
        server = self.server
        server.sessions += 1
        drop_at = server.drop_at if server.sessions == 1 else None
        write = self.wfile.write
        write(b"+OK scripted\r\n")
        marked: Set[int] = set()
        for raw in self.rfile:
            words = raw.strip().split()
            verb = words[0].upper() if words else b""
            live = server.messages
            if verb in server.replies:
                write(server.replies[verb])
            elif verb == b"CAPA":
                write(b"+OK\r\nUSER\r\n%sPIPELINING\r\n.\r\n" % (b"" if server.no_uidl else b"UIDL\r\n"))
            elif verb in (b"USER", b"PASS"):
                server.logins += 1
                write(b"+OK\r\n")
            elif verb == b"UIDL" and not server.no_uidl:
                write(b"+OK\r\n" + b"".join(b"%d %s\r\n" % (i + 1, uid) for i, (uid, _) in enumerate(live))
                      + b".\r\n")
            elif verb == b"LIST":
                sizes = [server.sizes.get(i + 1, len(rfc1939.wire_message(m))) for i, (_, m) in enumerate(live)]
                write(b"+OK\r\n" + b"".join(b"%d %d\r\n" % (i + 1, size) for i, size in enumerate(sizes))
                      + b".\r\n")
            elif verb == b"RETR":
                number = int(words[1])
                server.retrieved.append(number)
                uid, message = live[number - 1]
                if uid in server.refuse:
                    write(b"-ERR [SYS/PERM] Message vanished\r\n")
                    continue
                data = b"+OK\r\n" + rfc1939.stuffed(rfc1939.wire_lines(message))
                if number == drop_at:
                    write(data[: len(data) // 2])
                    self.request.shutdown(socket.SHUT_RDWR)
                    return
                write(data)
            elif verb == b"DELE":
                marked.add(int(words[1]))
                write(b"+OK\r\n")
            elif verb == b"QUIT" and server.quit_unanswered:
                self.request.shutdown(socket.SHUT_RDWR)
                return
            elif verb == b"QUIT":
                server.deleted += [live[n - 1][0] for n in sorted(marked)]
                server.messages = [m for i, m in enumerate(live) if i + 1 not in marked]
                write(b"+OK bye\r\n")
                return
            else:
                write(b"-ERR unknown\r\n")
