"""``pop3ng fetch`` forwarding into a real LMTP server (Dovecot's ``lmtp``, TCP with STARTTLS and
a UNIX socket) and a real SMTP server (Twisted's ``twisted.mail.smtp`` ESMTP, with STARTTLS): each
message once, byte for byte (after the trace headers the MTA adds), 4xx left on the server for the
next run, 5xx kept or deleted as configured, SIGKILL at each step costing at most one duplicate.

The source is the same private Dovecot (POP3 with STLS, user ``bob``); the LMTP recipient is
``carol`` in that Dovecot.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from typing import List, Optional, Tuple

from twisted.internet import defer, threads
from twisted.mail import smtp
from zope.interface import implementer

from twisted_pop3ng import fetch

from .dovecot import free_port
from .fetch_support import FetchTestCase, make_message, maildir_messages


_TRACE = re.compile(rb"\A(?:(?:Return-Path|Delivered-To|Received):[^\n]*\n(?:[ \t][^\n]*\n)*)*")


def without_trace(message: bytes) -> bytes:
    """The message as the sender wrote it: the MTA's Return-Path/Delivered-To/Received removed."""
    return _TRACE.sub(b"", message, count=1)


LMTP_CONFIG = """
protocols = pop3 lmtp
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %(port)d
  }
}
%(quota)s
"""
QUOTA = """
protocol lmtp {
  mail_plugins = $mail_plugins quota
}
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=%(kb)dK
}
quota_full_tempfail = %(tempfail)s
"""


class ForwardTestBase(FetchTestCase):
    quota: Optional[Tuple[int, bool]] = None  # (KB, tempfail)

    def setUp(self) -> None:
        super().setUp()
        self.lmtp_port = free_port()
        quota = ""
        if self.quota:
            quota = QUOTA % {"kb": self.quota[0], "tempfail": "yes" if self.quota[1] else "no"}
        self.start_dovecot(["bob", "carol"], passwords={"carol": "x"},
                           extra_config=LMTP_CONFIG % {"port": self.lmtp_port, "quota": quota})
        self.messages = self.mail["bob"]
        self.config_path = os.path.join(self.root, "fetch.toml")

    def forwarded(self) -> List[bytes]:
        return [without_trace(m) for m in maildir_messages(self.dovecot.maildir("carol"))]

    def write_config(self, forward: str, **extra: object) -> None:
        lines = ["[accounts.bob]",
                 'url = "pop3://bob@localhost:%d"' % self.dovecot.port,
                 'cafile = "%s"' % self.certs["ca"],
                 'password_file = "%s"' % self.password_file,
                 'forward = "%s"' % forward,
                 'forward_to = "carol"',
                 'forward_cafile = "%s"' % self.certs["ca"]]
        for key, value in extra.items():
            lines.append("%s = %s" % (key, '"%s"' % value if isinstance(value, str)
                                      else str(value).lower()))
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def fetch_configured(self, *args: str, kill_at: Optional[str] = None) -> Tuple[int, str]:
        """``pop3ng fetch --config FILE ARGS`` (the file :meth:`write_config` wrote)."""
        return self.fetch("--config", self.config_path, *args, kill_at=kill_at)

    def assert_exactly_once(self) -> None:
        self.assertEqual(sorted(self.forwarded()), sorted(self.messages))


class LMTPForwardTests(ForwardTestBase):
    def test_lmtp_over_tcp_with_starttls(self) -> None:
        self.put(60, size=3000)
        self.write_config("lmtp://localhost:%d" % self.lmtp_port, forward_starttls="require")
        code, err = self.fetch_configured()
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()
        self.assertEqual(self.on_server(), 0)
        self.assertIn("bob: 60 delivered", err)
        # Dovecot says how the mail came: over TLS (STARTTLS was used, the certificate verified).
        self.assertIn(b" with LMTPS\n",
                      maildir_messages(self.dovecot.maildir("carol"))[0])
        code, err = self.fetch_configured()
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()

    def test_lmtp_over_a_unix_socket(self) -> None:
        self.put(10)
        self.write_config("lmtp:%s" % os.path.join(self.dovecot.base_dir, "lmtp"))
        code, err = self.fetch_configured()
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()
        self.assertEqual(self.on_server(), 0)

    def test_forward_from_the_single_url_command_line(self) -> None:
        self.put(4)
        code, err = self.fetch(
            "pop3://bob@localhost:%d" % self.dovecot.port, "--cafile", self.certs["ca"],
            "--password-file", self.password_file,
            "--forward", "lmtp://localhost:%d" % self.lmtp_port, "--forward-to", "carol",
            "--forward-cafile", self.certs["ca"], "--forward-starttls", "require")
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()
        self.assertEqual(self.on_server(), 0)

    def test_envelope_sender_from_return_path_or_configured(self) -> None:
        self.messages.append(b"Return-Path: <list-bounces@example.org>\nSubject: s\n\nbody\n")
        self.dovecot.deliver("bob", self.messages[-1])
        self.write_config("lmtp://localhost:%d" % self.lmtp_port)
        code, err = self.fetch_configured()
        self.assertEqual(code, 0, err)
        got = maildir_messages(self.dovecot.maildir("carol"))
        self.assertEqual(len(got), 1)
        self.assertTrue(got[0].startswith(b"Return-Path: <list-bounces@example.org>\n"), got[0])
        self.messages.append(b"Subject: s2\n\nbody\n")
        self.dovecot.deliver("bob", self.messages[-1])
        self.write_config("lmtp://localhost:%d" % self.lmtp_port, forward_from="me@example.net")
        code, err = self.fetch_configured()
        self.assertEqual(code, 0, err)
        self.assertIn(b"Return-Path: <me@example.net>\n",
                      [m.split(b"\n", 1)[0] + b"\n" for m in
                       maildir_messages(self.dovecot.maildir("carol"))])

    def test_untrusted_certificate_forwards_nothing(self) -> None:
        self.put(5)
        other = os.path.join(self.root, "other-ca.pem")
        import trustme
        trustme.CA().cert_pem.write_to_path(other)
        self.write_config("lmtp://localhost:%d" % self.lmtp_port)
        text = open(self.config_path).read()
        text = re.sub(r'forward_cafile = "[^"]*"', 'forward_cafile = "%s"' % other, text)
        with open(self.config_path, "w") as f:
            f.write(text)
        code, err = self.fetch_configured()
        self.assertEqual(code, fetch.EXIT_DELIVERY, err)
        self.assertIn("certificate verify failed", err)
        self.assertEqual(self.on_server(), 5)
        self.assertEqual(self.forwarded(), [])

    def test_unknown_recipient_5xx_kept_then_deleted_on_request(self) -> None:
        self.put(3)
        self.write_config("lmtp://localhost:%d" % self.lmtp_port)
        text = open(self.config_path).read().replace('forward_to = "carol"',
                                                      'forward_to = "nosuchuser"')
        with open(self.config_path, "w") as f:
            f.write(text)
        code, err = self.fetch_configured()
        self.assertEqual(code, fetch.EXIT_ERROR, err)
        self.assertEqual(err.count("left on the server: "), 3, err)
        self.assertIn("550", err)
        self.assertEqual(self.on_server(), 3)
        with open(self.config_path, "a") as f:
            f.write('on_reject = "delete"\n')
        code, err = self.fetch_configured()
        self.assertEqual(code, 0, err)
        self.assertEqual(err.count('deleted on the server (on_reject = "delete")'), 3, err)
        self.assertEqual(self.on_server(), 0)

    def test_killed_at_each_step_at_most_one_duplicate(self) -> None:
        """SIGKILL after the MTA's 250 and before the state write, or after the data went out and
        before the reply was read: that one message is forwarded again by the next run (the only
        duplicate LMTP allows; Dovecot saves a message whose client died after its final dot); at
        the later steps, none."""
        self.write_config("lmtp://localhost:%d" % self.lmtp_port)
        duplicates = 0
        for step, duplicated in (("delivered:4", True), ("forward-sent:3", True),
                                 ("before-dele:1", False),
                                 ("before-quit:1", False), ("after-quit:1", False)):
            self.put(8)
            code, _ = self.fetch_configured(kill_at=step)
            self.assertEqual(code, -signal.SIGKILL, step)
            code, err = self.fetch_configured()
            self.assertEqual(code, 0, err)
            self.assertEqual(self.on_server(), 0, step)
            got = self.forwarded()
            duplicates += duplicated
            self.assertEqual(sorted(set(got)), sorted(self.messages), step)
            self.assertEqual(len(got), len(self.messages) + duplicates, step)

    def test_sigkill_at_random_moments(self) -> None:
        """Real SIGKILLs while messages stream into LMTP: each kill costs at most one duplicate."""
        self.put(200, size=2000)
        self.write_config("lmtp://localhost:%d" % self.lmtp_port)
        carol_new = os.path.join(self.dovecot.maildir("carol"), "new")
        kills = 0
        for threshold in (20, 90, 150):
            process = subprocess.Popen(self.command("--config", self.config_path), env=self.env(),
                                       stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while process.poll() is None and time.monotonic() < deadline:
                if len(os.listdir(carol_new)) >= threshold:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
                    break
                time.sleep(0.002)
            process.wait()
        self.assertGreaterEqual(kills, 1)
        code, err = self.fetch_configured()
        self.assertEqual(code, 0, err)
        got = self.forwarded()
        self.assertEqual(sorted(set(got)), sorted(self.messages))
        self.assertLessEqual(len(got), len(self.messages) + kills)
        self.assertEqual(self.on_server(), 0)


class LMTPQuotaTempfailTests(ForwardTestBase):
    """Dovecot with a 20 KB quota and quota_full_tempfail: a full mailbox answers 4xx."""

    quota = (20, True)

    def test_4xx_leaves_the_rest_on_the_server_for_the_next_run(self) -> None:
        self.put(12, size=3000)  # ~3.2 KB each: five or six fit
        self.write_config("lmtp://localhost:%d" % self.lmtp_port)
        code, err = self.fetch_configured()
        self.assertEqual(code, fetch.EXIT_TRY_LATER, err)
        self.assertIn("try again later", err)
        self.assertRegex(err, r"answered 4\d\d")
        got = self.forwarded()
        self.assertGreater(len(got), 0)
        self.assertLess(len(got), 12)
        self.assertEqual(self.on_server(), 12)  # a failed run deletes nothing
        self.assertEqual(len(set(got)), len(got))
        # The mailbox is emptied (the user read their mail): the next run forwards the rest.
        for sub in ("new", "cur"):
            d = os.path.join(self.dovecot.maildir("carol"), sub)
            for name in os.listdir(d):
                os.unlink(os.path.join(d, name))
        for name in os.listdir(self.dovecot.maildir("carol")):
            if name.startswith("maildirsize"):
                os.unlink(os.path.join(self.dovecot.maildir("carol"), name))
        code, err = self.fetch_configured()
        self.assertEqual(code, 0, err)
        rest = self.forwarded()
        self.assertEqual(sorted(got + rest), sorted(self.messages))
        self.assertEqual(self.on_server(), 0)


class LMTPQuotaRejectTests(ForwardTestBase):
    """A 10 KB quota without tempfail: a message larger than it is refused with 5xx."""

    quota = (10, False)

    def test_5xx_for_one_message_keeps_it_and_forwards_the_others(self) -> None:
        self.put(2, size=500)
        self.put(1, size=30000)
        self.put(2, size=500)
        self.write_config("lmtp://localhost:%d" % self.lmtp_port)
        code, err = self.fetch_configured()
        self.assertEqual(code, fetch.EXIT_ERROR, err)
        self.assertEqual(err.count("left on the server: "), 1, err)
        self.assertRegex(err, r"answered 5\d\d")
        self.assertEqual(sorted(self.forwarded()), sorted(self.messages[:2] + self.messages[3:]))
        self.assertEqual(self.on_server(), 1)


@implementer(smtp.IMessageDelivery)
class _Mailbox:
    """Twisted's ESMTP server's delivery: keeps each accepted message with its envelope."""

    def __init__(self) -> None:
        self.messages: List[Tuple[str, str, bytes]] = []
        self.refused_recipients = {"nobody@example.org"}
        #: When set, the final reply to each message waits for this Deferred (a slow MTA).
        self.gate: Optional[defer.Deferred] = None

    def receivedHeader(self, helo: object, origin: object, recipients: object) -> None:
        return None  # store what was sent, byte for byte

    def validateFrom(self, helo: object, origin: smtp.Address) -> smtp.Address:
        return origin

    def validateTo(self, user: smtp.User) -> object:
        if str(user.dest) in self.refused_recipients:
            raise smtp.SMTPBadRcpt(user)
        return lambda: _Message(self, str(user.orig), str(user.dest))


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, box: _Mailbox, sender: str, recipient: str) -> None:
        self.box, self.sender, self.recipient = box, sender, recipient
        self.lines: List[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred:
        self.box.messages.append((self.sender, self.recipient,
                                  b"".join(line + b"\n" for line in self.lines)))
        if self.box.gate is not None:
            d: defer.Deferred = defer.Deferred()
            self.box.gate.addBoth(lambda _: d.callback(None))
            return d
        return defer.succeed(None)

    def connectionLost(self) -> None:
        self.lines = []


class SMTPForwardTests(ForwardTestBase):
    """Into Twisted's own ESMTP server (an SMTP implementation independent of ours), STARTTLS."""

    def setUp(self) -> None:
        super().setUp()
        from twisted.internet import reactor
        from twisted.internet.protocol import ServerFactory
        from twisted.internet.ssl import PrivateCertificate

        with open(self.certs["cert"], "rb") as f:
            pem = f.read()
        with open(self.certs["key"], "rb") as f:
            pem += f.read()
        context = PrivateCertificate.loadPEM(pem).options()
        self.box = _Mailbox()
        box = self.box

        class Factory(ServerFactory):
            def buildProtocol(self, addr: object) -> smtp.ESMTP:
                protocol = smtp.ESMTP(contextFactory=context)
                protocol.host = b"localhost"
                protocol.delivery = box  # type: ignore[assignment]  # (typed None in twisted.mail)
                protocol.factory = self
                return protocol

        self.port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def run_fetch(self) -> defer.Deferred:
        """The fetch in a thread: this reactor serves the SMTP side meanwhile."""
        return threads.deferToThread(self.fetch_configured)

    @defer.inlineCallbacks
    def test_smtp_with_starttls_byte_for_byte(self):
        self.put(25, size=2500)
        self.messages.append(b"Return-Path: <owner@example.org>\nSubject: r\n\n.\n..\nend")
        self.dovecot.deliver("bob", self.messages[-1])
        self.write_config("smtp://localhost:%d" % self.port.getHost().port,
                          forward_starttls="require")
        text = open(self.config_path).read().replace('forward_to = "carol"',
                                                      'forward_to = "carol@example.org"')
        with open(self.config_path, "w") as f:
            f.write(text)
        code, err = yield self.run_fetch()
        self.assertEqual(code, 0, err)
        self.assertEqual(self.on_server(), 0)
        got = self.box.messages
        self.assertEqual(len(got), 26)
        self.assertEqual({recipient for _, recipient, _ in got}, {"carol@example.org"})
        self.assertEqual(sorted(m for _, _, m in got),
                         sorted(m if m.endswith(b"\n") else m + b"\n" for m in self.messages))
        self.assertEqual([s for s, _, m in got if m.startswith(b"Return-Path")],
                         ["owner@example.org"])

    @defer.inlineCallbacks
    def test_smtp_rcpt_refused_is_kept(self):
        self.put(2)
        self.write_config("smtp://localhost:%d" % self.port.getHost().port)
        text = open(self.config_path).read().replace('forward_to = "carol"',
                                                      'forward_to = "nobody@example.org"')
        with open(self.config_path, "w") as f:
            f.write(text)
        code, err = yield self.run_fetch()
        self.assertEqual(code, fetch.EXIT_ERROR, err)
        self.assertEqual(err.count("answered 550"), 2, err)
        self.assertEqual(self.on_server(), 2)
        self.assertEqual(self.box.messages, [])

    @defer.inlineCallbacks
    def test_a_slow_mta_holds_up_only_its_own_account(self):
        """Two accounts in one run: bob forwards to an MTA that does not answer the end of the
        data until released; carol's account, into a Maildir, completes meanwhile (the hand-over
        runs in a thread, not in the reactor both accounts share)."""
        from twisted.internet import reactor, task

        self.put(3)
        carol = [make_message(100 + i) for i in range(5)]
        for message in carol:
            self.dovecot.deliver("carol", message)
        carol_out = os.path.join(self.root, "carol-Maildir")
        with open(os.path.join(self.root, "carol-password"), "w") as f:
            f.write("x\n")
        self.write_config("smtp://localhost:%d" % self.port.getHost().port)
        with open(self.config_path, "a") as f:
            f.write('[accounts.carol]\nurl = "pop3://carol@localhost:%d"\ncafile = "%s"\n'
                    'password_file = "%s"\nmaildir = "%s"\n'
                    % (self.dovecot.port, self.certs["ca"],
                       os.path.join(self.root, "carol-password"), carol_out))
        self.box.gate = defer.Deferred()
        run = self.run_fetch()
        deadline = time.monotonic() + 240
        while len(maildir_messages(carol_out)) < 5 or not self.box.messages:
            self.assertLess(time.monotonic(), deadline, "carol's account did not complete")
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(run.called)  # bob's run still waits for the MTA
        self.assertEqual(len(self.box.messages), 1)  # one at a time: the first is unanswered
        self.assertEqual(self.on_server(), 3)
        self.box.gate.callback(None)
        code, err = yield run
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(maildir_messages(carol_out)), sorted(carol))
        self.assertEqual(len(self.box.messages), 3)
        self.assertEqual(self.on_server(), 0)
