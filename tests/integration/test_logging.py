"""``twistd --logger twisted_pop3ng.logs.json_observer pop3ng --log-sessions``: the real twistd
writes JSON lines (to its standard output, or daemonized to ``POP3NG_LOG_FILE``); sessions (a
failed login, a RETR and DELE over POP3S, a dropped connection) come out as structured events, and
no secret is in them."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

from twisted.trial import unittest

from twisted_pop3ng._fs import create_temporary
from twisted_pop3ng.mailbox.mbox.rewrite import journal_path
from twisted_pop3ng.mailbox.mbox.store import MboxStore

from tests.integration.support import ROOT, TWISTD_MAIN, Session, start_server, write_users

PASSWORD = "Tr0ub4dor&3-never-logged"
WRONG = "wrong-password-never-logged"
MESSAGE = b"Subject: logged\r\n\r\nbody\r\n"
MESSAGE_WIRE = MESSAGE + b".\r\n"


class JSONLogTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = tempfile.mkdtemp(prefix="pop3ng-jsonlog-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.server = start_server(
            self.root, {"alice": PASSWORD},
            twistd_args=["--logger", "twisted_pop3ng.logs.json_observer"],
            extra_args=["--log-sessions", "--log-logins", "--auth-failure-delay", "0.1"])
        self.addCleanup(self.server.stop)
        self.server.deliver("alice", MESSAGE)

    def session(self, tls: bool = False) -> Session:
        s = Session(self.server.connect(tls=tls))
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))
        return s

    def records(self) -> List[Dict[str, Any]]:
        """Every line of the log, each parsed as JSON (a line that is not fails the test)."""
        with open(self.server.log_path, encoding="utf-8") as f:
            return [json.loads(line) for line in f.read().splitlines()]

    def wait_for(self, event: str, count: int) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + 30
        while True:
            found = [r for r in self.records() if r["event"] == event]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def test_sessions_as_json_events(self) -> None:
        s1 = self.session()
        self.assertTrue(s1.command(b"USER alice").startswith(b"+OK"))
        self.assertTrue(s1.command(b"PASS " + WRONG.encode()).startswith(b"-ERR [AUTH]"))
        self.assertTrue(s1.command(b"QUIT").startswith(b"+OK"))
        s2 = self.session(tls=True)
        self.assertTrue(s2.command(b"USER alice").startswith(b"+OK"))
        self.assertTrue(s2.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK"))
        self.assertTrue(s2.command(b"RETR 1").startswith(b"+OK"))
        self.assertEqual(s2.body(), MESSAGE_WIRE)
        self.assertTrue(s2.command(b"DELE 1").startswith(b"+OK"))
        self.assertTrue(s2.command(b"QUIT").startswith(b"+OK"))
        s2.close()
        s3 = self.session()
        s3.close()

        ends = self.wait_for("session.end", 3)
        records = self.records()
        for record in records:
            self.assertEqual(list(record)[:5], ["time", "level", "namespace", "event", "text"])
        self.assertEqual(len(ends), 3, records)
        connects = [r for r in records if r["event"] == "session.connect"]
        self.assertEqual([(r["namespace"], r["rip"], r["lip"], r["listener"]) for r in connects],
                         [("pop3ng.session", "127.0.0.1", "127.0.0.1", "plain"),
                          ("pop3ng.session", "127.0.0.1", "127.0.0.1", "tls"),
                          ("pop3ng.session", "127.0.0.1", "127.0.0.1", "plain")])
        [failed] = [r for r in records if r["event"] == "auth.failed"]
        self.assertEqual({k: failed[k] for k in ("level", "namespace", "user", "mechanism", "rip",
                                                 "tls", "reason")},
                         {"level": "info", "namespace": "pop3ng.auth", "user": "alice",
                          "mechanism": "USER", "rip": "127.0.0.1", "tls": "no",
                          "reason": "password"})
        self.assertTrue(failed["text"].startswith("auth failed: user=alice mechanism=USER"))
        [ok] = [r for r in records if r["event"] == "auth.ok"]
        self.assertEqual((ok["user"], ok["mechanism"], ok["tls"]), ("alice", "USER", "yes"))
        summary = [{k: r[k] for k in ("user", "listener", "tls", "commands", "retrieved", "bytes",
                                      "deleted", "end")} for r in ends]
        self.assertEqual(summary, [
            {"user": "", "listener": "plain", "tls": "no", "commands": 3, "retrieved": 0,
             "bytes": 0, "deleted": 0, "end": "quit"},
            {"user": "alice", "listener": "tls", "tls": "yes", "commands": 5, "retrieved": 1,
             "bytes": len(MESSAGE_WIRE), "deleted": 1, "end": "quit"},
            {"user": "", "listener": "plain", "tls": "no", "commands": 0, "retrieved": 0,
             "bytes": 0, "deleted": 0, "end": "drop"},
        ])
        for record in ends:
            self.assertIsInstance(record["duration"], float)
            self.assertGreaterEqual(record["duration"], 0)
        # The POP3 ports are in the log too (the text of twistd's own events).
        self.assertTrue(any("POP3ServerFactory starting on %d" % self.server.port in r["text"]
                            for r in records))
        with open(self.server.log_path, encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn(PASSWORD, text)
        self.assertNotIn(WRONG, text)
        self.assertFalse([r for r in records if r["level"] in ("error", "critical")], records)

    def test_the_message_is_gone_after_the_logged_quit(self) -> None:
        """What the summary says was deleted is: the maildir is empty after the session."""
        s = self.session(tls=True)
        self.assertTrue(s.command(b"USER alice").startswith(b"+OK"))
        self.assertTrue(s.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK"))
        self.assertTrue(s.command(b"DELE 1").startswith(b"+OK"))
        self.assertTrue(s.command(b"QUIT").startswith(b"+OK"))
        s.close()
        [end] = self.wait_for("session.end", 1)
        self.assertEqual((end["deleted"], end["end"]), (1, "quit"))
        maildir = self.server.maildir("alice")
        self.assertEqual(os.listdir(os.path.join(maildir, "new")) +
                         os.listdir(os.path.join(maildir, "cur")), [])


class LibraryLogTests(unittest.TestCase):
    """What is logged through the standard library's ``logging`` (the mbox store here; psycopg's
    pool the same way) is a JSON record too, not a bare line on stderr in the middle of them."""

    def test_an_mbox_warning_is_a_json_record(self) -> None:
        root = tempfile.mkdtemp(prefix="pop3ng-jsonlog-mbox-")
        self.addCleanup(shutil.rmtree, root, True)
        template = os.path.join(root, "spool", "{user}")
        store = MboxStore(template)
        store.deliver("alice", io.BytesIO(MESSAGE.replace(b"\r\n", b"\n")))
        stale, fd = create_temporary(journal_path(store.path_for("alice")))  # (a killed rewrite's)
        os.close(fd)
        server = start_server(root, {"alice": PASSWORD}, tls=False,
                              twistd_args=["--logger", "twisted_pop3ng.logs.json_observer"],
                              extra_args=["--mailbox", "mbox:" + template])
        self.addCleanup(server.stop)
        s = Session(server.connect())
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))
        for command in (b"USER alice", b"PASS " + PASSWORD.encode(), b"DELE 1", b"QUIT"):
            self.assertTrue(s.command(command).startswith(b"+OK"), command)
        deadline = time.monotonic() + 30
        while True:
            with open(server.log_path, encoding="utf-8") as f:
                records = [json.loads(line) for line in f.read().splitlines()]  # (every line JSON)
            found = [r for r in records if r["namespace"] == "twisted_pop3ng.mailbox.mbox.rewrite"]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual([(r["level"], r["text"]) for r in found],
                         [("warn", "removed %s, left by a writer that was killed" % os.path.basename(stale))])
        self.assertFalse(os.path.exists(stale))


class DaemonLogFileTests(unittest.TestCase):
    """A daemonized twistd has no standard output: ``POP3NG_LOG_FILE`` names the JSON log file."""

    def test_a_daemon_writes_json_lines_to_the_named_file(self) -> None:
        root = tempfile.mkdtemp(prefix="pop3ng-jsonlog-daemon-")
        self.addCleanup(shutil.rmtree, root, True)
        users = write_users(os.path.join(root, "users"), {"alice": PASSWORD})
        pidfile = os.path.join(root, "twistd.pid")
        log_file = os.path.join(root, "pop3ng.jsonl")
        env = dict(os.environ, POP3NG_LOG_FILE=log_file, PYTHONPATH=os.pathsep.join(
            filter(None, [ROOT, os.environ.get("PYTHONPATH")])))

        def stop() -> None:
            try:
                with open(pidfile) as f:
                    os.kill(int(f.read()), signal.SIGTERM)
            except (OSError, ValueError):
                return
            deadline = time.monotonic() + 10
            while os.path.exists(pidfile) and time.monotonic() < deadline:
                time.sleep(0.05)

        self.addCleanup(stop)
        subprocess.run([sys.executable, "-c", TWISTD_MAIN, "--pidfile", pidfile, "--logger",
                        "twisted_pop3ng.logs.json_observer", "pop3ng", "--auth",
                        "passwd-file:" + users, "--mailbox", "maildir:" + root + "/{user}",
                        "--listen", "tcp:0:interface=127.0.0.1", "--log-sessions"],
                       cwd=root, env=env, check=True, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            if os.path.exists(log_file):
                with open(log_file, encoding="utf-8") as f:
                    for line in f.read().splitlines():
                        text = json.loads(line)["text"]
                        if text.startswith("POP3ServerFactory starting on "):
                            port = int(text.rsplit(" ", 1)[1])
            time.sleep(0.05)
        self.assertIsNotNone(port)
        s = Session(socket.create_connection(("127.0.0.1", port), 10))
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))
        self.assertTrue(s.command(b"QUIT").startswith(b"+OK"))
        deadline = time.monotonic() + 30
        ends: List[Dict[str, Any]] = []
        while not ends and time.monotonic() < deadline:
            with open(log_file, encoding="utf-8") as f:
                ends = [r for r in map(json.loads, f.read().splitlines())
                        if r["event"] == "session.end"]
            time.sleep(0.05)
        self.assertEqual([(r["end"], r["commands"]) for r in ends], [("quit", 1)])
