"""Postfix delivers into ``twistd pop3ng --lmtp-listen`` through its ``lmtp`` transport, configured
as docs/delivery.rst tells admins to, and the mail comes out of POP3 byte for byte.

The Postfix lines are read from the document itself (section *Postfix*): ``mailbox_transport`` and
``virtual_transport`` over TCP, and the commented Unix-socket alternative, with only the port (and
the queue directory, for the socket) changed to the test's. A private Postfix (:mod:`.postfix`)
takes the test's mail from Python's ``smtplib`` on a loopback port and relays it to the server; a
raw POP3 session then reads it back. Postfix adds its ``Received:`` header and the server its
trace headers (``--lmtp-trace-headers``, on by default): after those, ``RETR`` must return the
very octets the test sent, dot-stuffed as RFC 1939 says (the oracle is
:mod:`twisted_pop3ng.testing.rfc1939`, not the server's codec).

Besides the plain delivery: a recipient the server does not know is bounced to the sender with the
server's 550 (and only that recipient), and mail Postfix could not hand over -- a recipient
answered 452, or the server down -- is kept by Postfix and arrives once after ``postqueue -f``.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import smtplib
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

from twisted.trial import unittest

from twisted_pop3ng.testing.rfc1939 import stuffed, wire_lines

from .postfix import HOSTNAME, MISSING, PostfixInstance, postfix_available, start_postfix
from .support import ROOT, ServerProcess, Session, start_server

DOCS = os.path.join(ROOT, "docs", "delivery.rst")
#: Where the documented socket path lives on a stock Postfix (its queue directory).
SYSTEM_QUEUE = "/var/spool/postfix"
#: The sender is a user of the server too: the bounce for an unknown recipient comes back to it.
USERS = {"alice": "alice pw", "bob": "bob pw", "carol": "carol pw", "sender": "sender pw"}
SENDER = "sender@example.org"
VIRTUAL_DOMAIN = "example.org"
_LMTP_PORT = re.compile(r"LMTPFactory starting on (\d+)")
_DOCUMENTED = re.compile(r"\b(mailbox_transport|virtual_transport) = (lmtp:[^\s`]+)")

MULTI = (b"From: Sender <sender@example.org>\r\n"
         b"To: alice@example.org, bob@example.org, nosuchuser@example.org\r\n"
         b"Cc: carol@" + HOSTNAME.encode() + b"\r\n"
         b"Subject: one message, four recipients\r\n"
         b"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n"
         b"Message-ID: <multi@example.org>\r\n"
         b"\r\n"
         b"Each known recipient gets this once; nosuchuser is unknown to pop3ng.\r\n")
TRICKY = (b"From: Sender <sender@example.org>\r\n"
          b"To: alice@example.org\r\n"
          b"Subject: dots and 8-bit octets\r\n"
          b"Date: Mon, 01 Jan 2024 12:00:01 +0000\r\n"
          b"Message-ID: <tricky@example.org>\r\n"
          b"MIME-Version: 1.0\r\n"
          b"Content-Type: text/plain; charset=utf-8\r\n"
          b"Content-Transfer-Encoding: 8bit\r\n"
          b"\r\n"
          b".a line starting with a dot\r\n"
          b"..two dots\r\n"
          b".\r\n"  # a line that is only a dot: not the end of the message
          b"Gr\xc3\xbc\xc3\x9fe \xe2\x98\x83 \xf0\x9f\x98\x80\r\n"
          b"not UTF-8: \x80\x9f\xa0\xfe\xff\r\n"
          b"last line\r\n")


def documented_transports() -> List[Tuple[str, str]]:
    """The ``(parameter, value)`` of every ``mailbox_transport`` and ``virtual_transport`` in
    docs/delivery.rst's section *Postfix*, commented alternatives included, in order."""
    with open(DOCS, encoding="utf-8") as f:
        parts = re.split(r"\n([^\n]+)\n~{3,}\n", f.read())  # [text, title, body, title, body...]
    if "Postfix" not in parts:
        raise AssertionError("docs/delivery.rst has no section 'Postfix' any more")
    return _DOCUMENTED.findall(parts[parts.index("Postfix") + 1])


def documented(parameter: str, kind: str) -> str:
    """The first documented value of ``parameter`` that is an ``lmtp:KIND:`` transport."""
    for name, value in documented_transports():
        if name == parameter and value.startswith("lmtp:%s:" % kind):
            return value
    raise AssertionError("docs/delivery.rst's Postfix section shows no %s = lmtp:%s:..." % (parameter, kind))


def on_port(transport: str, port: int) -> str:
    """A documented ``lmtp:inet:127.0.0.1:24`` with the test server's port instead of 24."""
    head, host, _ = transport.rsplit(":", 2)
    if host != "127.0.0.1":
        raise AssertionError("the documented LMTP host is %r, not loopback" % host)
    return "%s:%s:%d" % (head, host, port)


def in_queue(transport: str, queue_dir: str) -> Tuple[str, str]:
    """A documented ``lmtp:unix:PATH`` for the private instance: (the transport, where the server's
    socket is in the file system). A path below the stock queue directory moves into the private
    one; a relative path is relative to the queue directory (Postfix's rule)."""
    path = transport[len("lmtp:unix:"):]
    if path.startswith(SYSTEM_QUEUE + "/"):
        path = queue_dir + path[len(SYSTEM_QUEUE):]
        return "lmtp:unix:" + path, path
    if os.path.isabs(path):
        raise AssertionError("the documented socket %s is outside Postfix's queue directory" % path)
    return transport, os.path.join(queue_dir, path)


def unfold(header: bytes) -> List[Tuple[bytes, bytes]]:
    """(name, value) of each field of a CRLF header block, continuation lines joined."""
    fields: List[Tuple[bytes, bytes]] = []
    for line in header.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + b"\r\n" + line)
        else:
            name, _, value = line.partition(b": ")
            fields.append((name, value))
    return fields


class PostfixLMTPTests(unittest.TestCase):
    """Each test runs its own Postfix and ``twistd pop3ng`` (about 2 s to start both)."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.server: Optional[ServerProcess] = None
        self.postfix_root = tempfile.mkdtemp(prefix="pop3ng-postfix-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.postfix_root, True)

    # -- the two servers ---------------------------------------------------------------------------

    def start_pop3ng(self, lmtp_listen: str = "tcp:0:interface=127.0.0.1", *extra: str) -> int:
        """``twistd pop3ng`` with a passwd-file of :data:`USERS` and one LMTP listener; its TCP
        port (0 for a Unix socket). Stopped (and its log checked for tracebacks) at the end."""
        server = self.server = start_server(self.root, users=dict(USERS), tls=False,
                                            extra_args=["--lmtp-listen", lmtp_listen] + list(extra))
        self.addCleanup(server.stop)
        if not lmtp_listen.startswith("tcp:"):
            return 0
        found: List[str] = []

        def listening() -> bool:
            found[:] = _LMTP_PORT.findall(server.log())
            return bool(found)

        self.assertTrue(self.poll(listening), "no LMTP listener:\n" + server.log())
        return int(found[0])

    def start_postfix(self, settings: Dict[str, str]) -> PostfixInstance:
        """The private Postfix with ``settings`` in its main.cf; without Postfix the test fails
        (in its body, so trial reports a failure, not an error), never skips."""
        if not postfix_available():
            self.fail(MISSING)
        postfix = self.postfix = start_postfix(self.postfix_root, settings)
        self.addCleanup(postfix.stop)
        return postfix

    def send(self, recipients: List[str], message: bytes) -> None:
        """Submit ``message`` to Postfix's smtpd as an 8BITMIME body; Postfix must take every
        recipient (it does not know pop3ng's users: the LMTP server decides)."""
        client = smtplib.SMTP("127.0.0.1", self.postfix.port, timeout=30)
        try:
            refused = client.sendmail(SENDER, recipients, message, mail_options=["BODY=8BITMIME"])
            client.quit()
        finally:
            client.close()
        self.assertEqual(refused, {})

    # -- waiting ----------------------------------------------------------------------------------

    @staticmethod
    def poll(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def count(self, user: str) -> int:
        """Messages in ``user``'s maildrop (the server writes them to new/)."""
        assert self.server is not None
        maildir = self.server.maildir(user)
        return sum(len(os.listdir(os.path.join(maildir, sub)))
                   for sub in ("new", "cur") if os.path.isdir(os.path.join(maildir, sub)))

    def wait_delivered(self, counts: Dict[str, int], log_from: int = 0, hint: str = "") -> None:
        """Until each user in ``counts`` has that many messages and Postfix's queue is empty (all
        handed over or bounced); fails at once, with the line and ``hint``, if Postfix logs a
        deferral after offset ``log_from`` of its log, and after 30 s with its log."""
        deferred: List[str] = []

        def done() -> bool:
            deferred[:] = [line for line in self.postfix.log()[log_from:].splitlines() if "status=deferred" in line]
            return bool(deferred) or (all(self.count(u) == n for u, n in counts.items())
                                      and not self.postfix.queue_ids())

        finished = self.poll(done)
        if deferred:
            self.fail("Postfix deferred mail it should have delivered:\n%s%s" % ("\n".join(deferred), hint))
        self.assertTrue(finished, "not delivered within 30 s (have %r, want %r); Postfix's log:\n%s"
                        % ({u: self.count(u) for u in counts}, counts, self.postfix.log()[-4000:]))

    def wait_logged(self, pattern: str) -> re.Match:
        """The first match of ``pattern`` in Postfix's log, waiting up to 30 s for it."""
        found: List[re.Match] = []

        def logged() -> bool:
            found[:] = list(re.finditer(pattern, self.postfix.log()))[:1]
            return bool(found)

        self.assertTrue(self.poll(logged), "Postfix never logged %r:\n%s" % (pattern, self.postfix.log()[-4000:]))
        return found[0]

    # -- reading it back --------------------------------------------------------------------------

    def mailbox(self, user: str) -> List[Tuple[bytes, int, bytes]]:
        """(UIDL, LIST size, raw dot-stuffed RETR body) of each message in ``user``'s maildrop."""
        assert self.server is not None
        session = Session(self.server.connect(timeout=30))
        self.addCleanup(session.close)
        self.assertTrue(session.login(user.encode(), USERS[user].encode()).startswith(b"+OK"))
        count = int(session.command(b"STAT").split()[1])
        messages = []
        for n in range(1, count + 1):
            uidl = session.command(b"UIDL %d" % n).split()[2]
            size = int(session.command(b"LIST %d" % n).split()[2])
            self.assertTrue(session.command(b"RETR %d" % n).startswith(b"+OK"))
            messages.append((uidl, size, session.body()))
        self.assertTrue(session.command(b"QUIT").startswith(b"+OK"))
        return messages

    def assertArrivedIntact(self, body: bytes, size: int, original: bytes, recipient: str) -> None:
        """``body`` (a RETR body) is ``original`` as sent, after exactly the trace headers: the
        server's Return-Path (the envelope sender), Delivered-To (the recipient Postfix gave) and
        Received, then Postfix's one Received; and LIST reported its size."""
        expected = stuffed(wire_lines(original))
        self.assertTrue(body.endswith(expected), "the message did not arrive intact:\n%r" % (body,))
        trace = unfold(body[:-len(expected)])
        self.assertEqual([name for name, _ in trace], [b"Return-Path", b"Delivered-To", b"Received", b"Received"],
                         body[:-len(expected)])
        self.assertEqual(trace[0][1], b"<%s>" % SENDER.encode())
        self.assertEqual(trace[1][1], recipient.encode())
        self.assertIn(b" with LMTP id ", trace[2][1])
        self.assertIn(b"by %s (Postfix) with ESMTP id " % HOSTNAME.encode(), trace[3][1])
        lines = body[:-3].split(b"\r\n")[:-1]
        self.assertEqual(size, sum(len(line) + 2 - line.startswith(b".") for line in lines))

    # -- the tests --------------------------------------------------------------------------------

    def test_local_and_virtual_domains_over_tcp(self) -> None:
        """The documented ``mailbox_transport`` (local domain) and ``virtual_transport`` (a virtual
        domain) over TCP: a message for three known users and an unknown one, and a message with
        dot lines and 8-bit octets, arrive intact; the unknown recipient is refused at RCPT with
        the server's 550, bounced to the sender, and stored nowhere."""
        port = self.start_pop3ng()
        self.start_postfix({"mydestination": "$myhostname",
                            "mailbox_transport": on_port(documented("mailbox_transport", "inet"), port),
                            "virtual_mailbox_domains": VIRTUAL_DOMAIN,
                            "virtual_transport": on_port(documented("virtual_transport", "inet"), port)})
        local_carol = "carol@" + HOSTNAME
        self.send(["alice@example.org", "bob@example.org", "nosuchuser@example.org", local_carol], MULTI)
        self.send(["alice@example.org"], TRICKY)
        self.wait_delivered({"alice": 2, "bob": 1, "carol": 1, "sender": 1})

        alice = self.mailbox("alice")
        self.assertEqual(len(alice), 2)
        for uidl, size, body in alice:
            self.assertArrivedIntact(body, size, MULTI if b"<multi@example.org>" in body else TRICKY,
                                     "alice@example.org")
        self.assertEqual({b"<multi@example.org>" in body for _, _, body in alice}, {True, False})
        # The UIDL the server answered Postfix with (in Postfix's log) is the one POP3 shows.
        logged = re.findall(r"to=<alice@example\.org>, .* status=sent \(250 2\.0\.0 <alice@example\.org> "
                            r"Delivered as (\S+)\)", self.postfix.log())
        self.assertEqual(sorted(logged), sorted(uidl.decode() for uidl, _, _ in alice))
        [(_, size, body)] = self.mailbox("bob")
        self.assertArrivedIntact(body, size, MULTI, "bob@example.org")
        [(_, size, body)] = self.mailbox("carol")
        self.assertArrivedIntact(body, size, MULTI, local_carol)

        # The unknown recipient: refused before the body was sent, bounced to the sender alone.
        self.assertRegex(self.postfix.log(), r"to=<nosuchuser@example\.org>, .* status=bounced \(host 127\.0\.0\.1"
                         r"\[127\.0\.0\.1\] said: 550 5\.1\.1 <nosuchuser@example\.org> No such user here "
                         r"\(in reply to RCPT TO command\)\)")
        [(_, _, bounce)] = self.mailbox("sender")
        self.assertTrue(bounce.startswith(b"Return-Path: <>\r\nDelivered-To: sender@example.org\r\n"), bounce)
        self.assertEqual(re.findall(rb"Final-Recipient: rfc822; (\S+)", bounce), [b"nosuchuser@example.org"])
        self.assertIn(b"\r\nAction: failed\r\nStatus: 5.1.1\r\n", bounce)
        self.assertIn(b"\r\nDiagnostic-Code: smtp; 550 5.1.1 <nosuchuser@example.org> No such user here\r\n", bounce)
        self.assertFalse(os.path.exists(os.path.join(self.root, "mail", "nosuchuser")))

    def test_unix_socket_as_documented(self) -> None:
        """The documented Unix-socket ``mailbox_transport`` (moved into the private queue
        directory), with Postfix's ``lmtp`` chrooted as Debian ships it and the socket
        ``mode=660`` in Postfix's group, as the docs say for the listener."""
        transport, socket_path = in_queue(documented("mailbox_transport", "unix"),
                                          os.path.join(self.postfix_root, "spool"))
        self.start_postfix({"mydestination": "$myhostname", "mailbox_transport": transport})
        self.start_pop3ng("unix:%s:mode=660" % socket_path)
        self.assertTrue(self.poll(lambda: os.path.exists(socket_path)), "no LMTP socket at " + socket_path)
        os.chown(socket_path, -1, grp.getgrnam("postfix").gr_gid)
        recipient = "alice@" + HOSTNAME
        self.send([recipient], TRICKY)
        self.wait_delivered({"alice": 1}, hint=(
            "\n(Postfix's lmtp runs chrooted in the queue directory and looks the socket path up "
            "there: lmtp:unix:private/pop3ng-lmtp is QUEUE/private/pop3ng-lmtp, an absolute path "
            "QUEUE/private/pop3ng-lmtp is QUEUE/QUEUE/private/pop3ng-lmtp)"))
        [(_, size, body)] = self.mailbox("alice")
        self.assertArrivedIntact(body, size, TRICKY, recipient)

    def test_recipient_answered_452_is_retried_alone(self) -> None:
        """With ``--lmtp-max-recipients 1`` the second recipient of a message gets ``452 4.5.3``:
        Postfix delivers the first, keeps the message for the second only, and after
        ``postqueue -f`` each recipient has the message exactly once (the docs: only the
        recipients that got a 4xx are retried)."""
        port = self.start_pop3ng("tcp:0:interface=127.0.0.1", "--lmtp-max-recipients", "1")
        self.start_postfix({"virtual_mailbox_domains": VIRTUAL_DOMAIN,
                            "virtual_transport": on_port(documented("virtual_transport", "inet"), port)})
        self.send(["alice@example.org", "bob@example.org"], MULTI)
        deferred = self.wait_logged(r"to=<(\w+)@example\.org>, .* dsn=4\.5\.3, status=deferred \(host 127\.0\.0\.1"
                                    r"\[127\.0\.0\.1\] said: 452 4\.5\.3 ")
        later = deferred.group(1)
        first = ({"alice", "bob"} - {later}).pop()
        self.wait_logged(r"to=<%s@example\.org>, .* status=sent " % first)
        self.assertEqual((self.count(first), self.count(later)), (1, 0))
        self.assertEqual(len(self.postfix.queue_ids()), 1)

        mark = len(self.postfix.log())
        self.postfix.flush()
        self.wait_delivered({first: 1, later: 1}, log_from=mark)
        self.assertNotRegex(self.postfix.log()[mark:], r"to=<%s@" % first)
        for user in (first, later):
            [(_, size, body)] = self.mailbox(user)
            self.assertArrivedIntact(body, size, MULTI, user + "@example.org")

    def test_mail_deferred_while_the_server_is_down_arrives_after_flush(self) -> None:
        """The server is down: Postfix defers the mail and keeps it; once the server is back on its
        port, ``postqueue -f`` delivers it, once and intact."""
        port = self.start_pop3ng()
        self.start_postfix({"mydestination": "$myhostname",
                            "mailbox_transport": on_port(documented("mailbox_transport", "inet"), port)})
        assert self.server is not None
        self.server.stop()
        recipient = "alice@" + HOSTNAME
        self.send([recipient], TRICKY)
        self.wait_logged(r"to=<%s>, .* status=deferred \(connect to 127\.0\.0\.1\[127\.0\.0\.1\]:%d: "
                         r"Connection refused\)" % (re.escape(recipient), port))
        self.assertEqual(len(self.postfix.queue_ids()), 1)

        self.start_pop3ng("tcp:%d:interface=127.0.0.1" % port)
        mark = len(self.postfix.log())
        self.postfix.flush()
        self.wait_delivered({"alice": 1}, log_from=mark)
        [(_, size, body)] = self.mailbox("alice")
        self.assertArrivedIntact(body, size, TRICKY, recipient)
