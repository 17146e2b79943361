"""Helpers of the black-box end-to-end suite (``tests/test_e2e_*.py``).

The expected wire form of a stored message comes from :mod:`twisted_pop3ng.testing.rfc1939`,
computed line by line from RFC 1939 (CRLF line endings, dot-stuffing), never with the server's
codec, so a shared bug cannot hide itself.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Tuple, Type

from twisted.trial import unittest

from twisted_pop3ng.testing.rfc1939 import stuffed, top_lines, wire_lines, wire_message  # noqa: F401

from .support import ServerProcess, Session, start_server

#: Passwords with single, double, leading-word and trailing-word spaces (all {PLAIN}).
POOL = 60
USERS: Dict[str, str] = {"user%02d" % i: "correct horse  battery staple %d" % i for i in range(POOL)}

STATUS_RE = re.compile(rb"\A(\+OK|-ERR)( [\x20-\x7e]*)?\r\n\Z")


def read_status(session: Session) -> bytes:
    line = session.line()
    assert STATUS_RE.match(line), line
    return line


class StreamingBody:
    """Reads one multi-line body from a socket without holding it: un-stuffs, hashes and counts.

    Independent of the server codec: whole lines are un-stuffed one by one (fast path: blocks of
    lines with ``\\r\\n.`` replaced, checked for the terminator first).
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.sha = hashlib.sha256()
        self.size = 0
        self.bad_line_ending = False
        self.bad_stuffing = False

    def read(self) -> Tuple[str, int]:
        carry, self.session.buffer = self.session.buffer, b""
        while True:
            last_nl = carry.rfind(b"\n")
            if last_nl != -1:
                # ``block`` starts at a line start and holds whole lines only.
                block, carry = carry[: last_nl + 1], carry[last_nl + 1:]
                if block.startswith(b".\r\n"):
                    end = 0
                else:
                    end = block.find(b"\r\n.\r\n")
                    end = -1 if end == -1 else end + 2
                if end != -1:
                    self._take(block[:end])
                    self.session.buffer = block[end + 3:] + carry
                    return self.sha.hexdigest(), self.size
                self._take(block)
            data = self.session.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed inside a multi-line response")
            carry += data

    def _take(self, block: bytes) -> None:
        if not block:
            return
        if b"\n" in block.replace(b"\r\n", b""):
            self.bad_line_ending = True
        probe = b"\n" + block
        if probe.count(b"\n.") != probe.count(b"\n.."):
            self.bad_stuffing = True
        if block.startswith(b"."):
            block = block[1:]
        block = block.replace(b"\r\n.", b"\r\n")
        self.sha.update(block)
        self.size += len(block)


class TwistdTestCase(unittest.TestCase):
    """One real ``twistd pop3ng`` per class (started exactly as in the judging command line)."""

    extra_args: List[str] = []
    #: Options of twistd itself (before ``pop3ng``).
    twistd_args: List[str] = []
    tls = True
    tracebacks_allowed = False
    server: ServerProcess
    _server: Optional[ServerProcess] = None
    #: Per class, set when its server starts: the server's directory, the next unused user of the
    #: pool, and how many of the class's tests are still to run (the last one stops the server).
    _root: str = ""
    _next_user = 0
    _remaining: int = 0

    # trial calls neither setUpClass nor tearDownClass: the class's server is started by the first
    # setUp in a process and stopped after the last of the class's tests in it (or at exit, when
    # ``trial -j`` spread the class over several workers).

    #: The class whose server runs in this process (tests arrive class by class, also with -j).
    _active: Optional[Type["TwistdTestCase"]] = None

    def setUp(self) -> None:
        cls = type(self)
        previous = TwistdTestCase._active
        if previous is not None and previous is not cls:
            previous._stop_server()
        TwistdTestCase._active = cls
        server: Optional[ServerProcess] = cls.__dict__.get("_server")
        if server is None:
            root = tempfile.mkdtemp(prefix="pop3ng-e2e-")
            server = cls._server = start_server(root, users=dict(USERS), tls=cls.tls,
                                                extra_args=list(cls.extra_args), twistd_args=list(cls.twistd_args))
            # Each test checks its own part of the log (tearDown), with its own allowance.
            server.tracebacks_allowed = True
            cls._root = root
            cls._next_user = 0
            cls._remaining = len([n for n in dir(cls) if n.startswith("test")])
            atexit.register(cls._stop_server)
        self.server = server
        self._log_mark = len(self.server.log())

    def tearDown(self) -> None:
        cls = type(self)
        log = self.server.log()[self._log_mark:]
        cls._remaining -= 1
        if cls._remaining <= 0:
            cls._stop_server()
        if "Traceback" in log and not self.tracebacks_allowed:
            self.fail("traceback in the server log:\n" + log[-5000:])

    @classmethod
    def _stop_server(cls) -> None:
        server = cls.__dict__.get("_server")
        if server is not None:
            cls._server = None
            server.stop()
            shutil.rmtree(cls._root, ignore_errors=True)

    def fresh_user(self) -> Tuple[str, str]:
        """A user no other test of this class has touched (so no lock or mail is left over)."""
        cls = type(self)
        name = "user%02d" % cls._next_user
        cls._next_user += 1
        assert cls._next_user <= POOL, "user pool exhausted"
        return name, USERS[name]

    def session(self, tls: bool = False, timeout: float = 20.0) -> Session:
        s = Session(self.server.connect(tls=tls, timeout=timeout))
        self.addCleanup(s.close)
        return s

    def login(self, user: str, tls: bool = False) -> Session:
        s = self.session(tls=tls)
        reply = s.login(user.encode(), USERS[user].encode())
        self.assertEqual(reply[:4], b"+OK ", reply)
        return s

    def assertNoTraceback(self) -> None:
        log = self.server.log()
        self.assertNotIn("Traceback", log, log[-3000:])

    def ok(self, session: Session, command: bytes) -> bytes:
        reply = session.command(command)
        self.assertTrue(reply.startswith(b"+OK"), (command, reply))
        self.assertTrue(STATUS_RE.match(reply), reply)
        return reply

    def err(self, session: Session, command: bytes) -> bytes:
        reply = session.command(command)
        self.assertTrue(reply.startswith(b"-ERR"), (command, reply))
        self.assertTrue(STATUS_RE.match(reply), reply)
        self.assertLessEqual(len(reply), 512)
        return reply

    def multi(self, session: Session, command: bytes) -> Tuple[bytes, bytes]:
        status = self.ok(session, command)
        return status, session.body()

    def retr(self, session: Session, number: int) -> bytes:
        return self.multi(session, b"RETR %d" % number)[1]

    def uidl_map(self, session: Session) -> Dict[int, bytes]:
        _, body = self.multi(session, b"UIDL")
        result = {}
        for line in body.split(b"\r\n")[:-2]:
            number, uid = line.split(b" ")
            result[int(number)] = uid
        return result

    def list_map(self, session: Session) -> Dict[int, int]:
        _, body = self.multi(session, b"LIST")
        result = {}
        for line in body.split(b"\r\n")[:-2]:
            number, size = line.split(b" ")
            result[int(number)] = int(size)
        return result


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def maildir_files(server: ServerProcess, user: str) -> List[str]:
    md = server.maildir(user)
    out = []
    for sub in ("new", "cur"):
        path = os.path.join(md, sub)
        if os.path.isdir(path):
            out += [sub + "/" + n for n in sorted(os.listdir(path))]
    return out
