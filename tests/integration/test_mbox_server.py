"""Black-box: ``twistd -n pop3ng --mailbox mbox:...`` as a real process, a real POP3 client
(Python's ``poplib``), and a real MTA-style writer process appending mail mid-session.

Expected messages come from the RFC 1939 oracle of the conformance suite (CRLF after every line),
never from the server's codec.
"""

from __future__ import annotations

import io
import os
import poplib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from twisted_pop3ng.mailbox.mbox.store import MboxStore
from twisted_pop3ng.test.test_mbox_mta import mta_message
from twisted_pop3ng.testing.conformance import CORPUS, LockHolder, wire_form

from .support import ROOT, start_server

PASSWORD = "correct horse battery staple"
#: Debian's dovecot-lda (package dovecot-core, installed with dovecot-pop3d by the CI).
DOVECOT_LDA = "/usr/lib/dovecot/dovecot-lda"


def without_dovecot_fields(message: bytes) -> bytes:
    """A message less the header fields Dovecot adds to every message of an mbox it writes to."""
    head, sep, body = message.partition(b"\r\n\r\n")
    fields = [line for line in head.split(b"\r\n")
              if not re.match(rb"(?i)(X-UID|X-IMAPbase|Status|X-Status|X-Keywords|Content-Length):", line)]
    return b"\r\n".join(fields) + sep + body


class MboxServerTests(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="pop3ng-mbox-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.template = os.path.join(self.root, "spool", "{user}")
        self.store = MboxStore(self.template)
        self.server = start_server(self.root, {"alice": PASSWORD}, tls=False,
                                   extra_args=["--mailbox", "mbox:" + self.template])
        self.addCleanup(self.server.stop)
        self.path = self.store.path_for("alice")
        self.patch(poplib, "_MAXLINE", 1 << 20)  # (poplib's 2048 is below the corpus's long line)

    def deliver(self, *messages: bytes) -> list:
        return [self.store.deliver("alice", io.BytesIO(data)) for data in messages]

    def client(self) -> poplib.POP3:
        client = poplib.POP3("127.0.0.1", self.server.port, timeout=30)
        self.addCleanup(self.close_quietly, client)
        client.user("alice")
        client.pass_(PASSWORD)
        return client

    def client_once_free(self, patience: float = 30.0) -> poplib.POP3:
        """A session as soon as the server has seen a dropped connection and released its lock."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return self.client()
            except poplib.error_proto as error:
                if b"[IN-USE]" not in error.args[0] or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @staticmethod
    def close_quietly(client: poplib.POP3) -> None:
        try:
            client.close()
        except OSError:
            pass  # (already closed by the test)

    def retr(self, client: poplib.POP3, number: int) -> bytes:
        _, lines, _ = client.retr(number)
        return b"".join(line + b"\r\n" for line in lines)

    def mta(self, tag: str, count: int) -> None:
        """Append with the MTA-style writer process (fcntl + dotlock, retrying)."""
        result = subprocess.run([sys.executable, "-m", "twisted_pop3ng.test.test_mbox_mta", self.path, tag,
                                 str(count)], capture_output=True, timeout=60, cwd=ROOT)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_mta_mail_mid_session_survives_update(self):
        """Byte-exact RETR and LIST sizes; mail an MTA appends mid-session is not in the session,
        survives the UPDATE rewrite and appears in the next session, byte for byte."""
        corpus = list(CORPUS.values())
        uids = self.deliver(*corpus)
        client = self.client()
        count, _ = client.stat()
        self.assertEqual(count, len(corpus))
        sizes = [int(entry.split()[1]) for entry in client.list()[1]]
        self.assertEqual(sizes, [len(wire_form(data)) for data in corpus])
        self.assertEqual([entry.split()[1].decode() for entry in client.uidl()[1]], uids)
        for number, data in enumerate(corpus, 1):
            self.assertEqual(self.retr(client, number), wire_form(data))
        self.mta("mid-session", 2)
        self.assertEqual(client.stat()[0], len(corpus))
        client.dele(1)
        client.dele(3)
        self.assertTrue(client.quit().startswith(b"+OK"))

        again = self.client()
        kept = [data for i, data in enumerate(corpus) if i not in (0, 2)]
        expected = kept + [mta_message("mid-session", 1), mta_message("mid-session", 2)]
        self.assertEqual(again.stat()[0], len(expected))
        self.assertEqual([self.retr(again, n) for n in range(1, len(expected) + 1)],
                         [wire_form(data) for data in expected])
        listed = [entry.split()[1].decode() for entry in again.uidl()[1]]
        self.assertEqual(listed[:len(kept)], [uid for i, uid in enumerate(uids) if i not in (0, 2)])
        self.assertEqual(len(set(listed)), len(listed))
        again.quit()

    def dovecot_lda(self, data: bytes) -> None:
        """Deliver ``data`` with Debian's ``dovecot-lda`` into the spool mbox (its
        ``mbox_write_locks = dotlock fcntl``; as ``nobody`` when we are root, as Dovecot refuses
        mail access as root)."""
        home = os.path.join(self.root, "dovecot-home")
        os.makedirs(home, exist_ok=True)
        config = os.path.join(self.root, "dovecot-lda.conf")
        log = os.path.join(self.root, "dovecot-lda.log")
        with open(config, "w") as f:
            f.write("base_dir = %s\nmail_location = mbox:%s:INBOX=%s\nlog_path = %s\nssl = no\n"
                    "mbox_write_locks = dotlock fcntl\n"
                    % (os.path.join(self.root, "dovecot-run"), os.path.join(home, "mail"), self.path, log))
        command = [DOVECOT_LDA, "-c", config, "-f", "sender@example.org"]
        open(log, "ab").close()
        if os.geteuid() == 0:
            for path in (home, os.path.dirname(self.path), self.path, log):
                os.chown(path, 65534, 65534)
            for path in (self.root, config):
                os.chmod(path, 0o755)
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + command
        result = subprocess.run(command, input=data, capture_output=True, timeout=60,
                                env={"HOME": home, "USER": "alice", "PATH": os.environ.get("PATH", "")})
        logged = open(log, "rb").read() if os.path.exists(log) else b""
        self.assertEqual(result.returncode, 0, result.stderr + logged)

    def test_dovecot_lda_delivering_mid_session(self):
        """Dovecot's LDA as the MTA's delivery agent: it rewrites its X-IMAPbase header in the
        first message in place and appends during the session; UPDATE still commits (only header
        octets changed in place) and keeps its mail, whose body Dovecot left unquoted."""
        lda_body = b"From the LDA, a body line Dovecot leaves unquoted\n\nFrom here too\nend\n"
        self.deliver(CORPUS["lf"])
        self.dovecot_lda(b"From: x@example.org\nSubject: lda 1\nMessage-ID: <1@lda>\n\n" + lda_body)
        client = self.client()
        self.assertEqual(client.stat()[0], 2)
        self.deliver(CORPUS["crlf"])
        with open(self.path, "rb") as f:
            before = f.read(200)
        self.dovecot_lda(b"From: x@example.org\nSubject: lda 2\nMessage-ID: <2@lda>\n\n" + lda_body)
        with open(self.path, "rb") as f:
            self.assertNotEqual(f.read(200), before)  # (Dovecot's in-place header update)
        self.assertEqual(client.stat()[0], 2)
        client.dele(1)
        self.assertTrue(client.quit().startswith(b"+OK"))

        again = self.client()
        messages = [self.retr(again, n) for n in range(1, again.stat()[0] + 1)]
        self.assertEqual(len(messages), 3, messages)
        self.assertIn(b"Subject: lda 1\r\n", messages[0])
        self.assertTrue(messages[0].endswith(b"\r\n\r\n" + lda_body.replace(b"\n", b"\r\n")), messages[0])
        # (Dovecot's next delivery gave our message its own X-UID header, beyond the snapshot)
        self.assertEqual(without_dovecot_fields(messages[1]), wire_form(CORPUS["crlf"]))
        self.assertIn(b"Subject: lda 2\r\n", messages[2])
        self.assertTrue(messages[2].endswith(b"\r\n\r\n" + lda_body.replace(b"\n", b"\r\n")), messages[2])
        again.quit()

    def test_drop_commits_nothing(self):
        self.deliver(CORPUS["lf"], CORPUS["crlf"])
        with open(self.path, "rb") as f:
            before = f.read()
        client = self.client()
        client.dele(1)
        client.sock.shutdown(socket.SHUT_RDWR)  # dropped without QUIT (poplib's file keeps the fd)
        client.sock.close()
        third = self.client_once_free()
        self.assertEqual(third.stat()[0], 2)
        third.quit()
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_in_use_in_process_across_processes_and_after_kill(self):
        """A second session of the server, and a session while another process holds the
        maildrop, get -ERR [IN-USE] at once; SIGKILL of that process frees the maildrop."""
        self.deliver(CORPUS["lf"])
        first = self.client()
        with self.assertRaises(poplib.error_proto) as caught:
            self.client()
        self.assertIn(b"[IN-USE]", caught.exception.args[0])
        first.quit()

        holder = LockHolder("mbox:" + self.template, "alice")
        self.addCleanup(lambda: holder.cleanup())
        line = holder.process.stdout.readline()
        self.assertTrue(line.startswith(b"locked 1 "), line)
        with self.assertRaises(poplib.error_proto) as caught:
            self.client()
        self.assertIn(b"[IN-USE]", caught.exception.args[0])
        holder.process.kill()
        holder.process.wait()
        client = self.client()
        self.assertEqual(self.retr(client, 1), wire_form(CORPUS["lf"]))
        client.quit()
