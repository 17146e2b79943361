"""docs/tutorial.rst and docs/quickstart.rst, run. The tutorial's script
(docs/examples/pop3s-server.sh) sets up and starts a POP3S-only server with hashed passwords as an
unprivileged user; ``pop3ng fetch`` then moves mail out of it as the tutorial's last step shows,
and a SIGHUP makes it serve a renewed certificate. The quickstart's ``pop3ng fetch`` line fetches
the demo server's mail."""

from __future__ import annotations

import grp
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List

from twisted.trial import unittest

from twisted_pop3ng.mailbox.maildir import deliver

from .lifecycle import start_demo
from .support import _PORT_RE, ROOT, make_certificates, stop_process

SCRIPT = os.path.join(ROOT, "docs", "examples", "pop3s-server.sh")
PASSWORD = "tutorial password"


def _others_can_import() -> bool:
    """Whether a user other than root can reach this Python's files: the server imports some modules
    (the password hashes) after it dropped privileges, which the tutorial tells to plan for."""
    import passlib

    path = os.path.realpath(os.path.dirname(passlib.__file__))
    while True:
        if os.stat(path).st_mode & 0o001 == 0:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _server_account() -> Dict[str, str]:
    """Root drops to nobody, as the tutorial's server drops to its own user, unless this Python is
    installed where nobody cannot read it (under /root, say): then the server stays root, and the
    privilege drop is what test_e2e_semantics checks. Anyone else runs the server as themselves
    (``--uid`` to one's own uid is allowed)."""
    if os.geteuid() == 0 and _others_can_import():
        return {"POP3NG_USER": "nobody", "POP3NG_GROUP": grp.getgrgid(65534).gr_name}
    return {"POP3NG_USER": pwd.getpwuid(os.geteuid()).pw_name, "POP3NG_GROUP": grp.getgrgid(os.getegid()).gr_name}


class TutorialScriptTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        for path in (os.path.dirname(self.root), self.root):  # trial makes the first one 0700
            os.chmod(path, 0o755)
        self.certs = make_certificates(self.root)
        self.account = _server_account()
        self.env = dict(os.environ, ALICE_PASSWORD=PASSWORD, POP3S_PORT="0:interface=127.0.0.1",
                        POP3NG_ETC=os.path.join(self.root, "etc"), POP3NG_MAIL=os.path.join(self.root, "mail"),
                        POP3NG_RUN=os.path.join(self.root, "run"), POP3NG_CERT=self.certs["cert"],
                        POP3NG_KEY=self.certs["key"], **self.account)
        # twistd finds the pop3ng plugin in this checkout, as the other end-to-end tests run it
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
        self.log_path = os.path.join(self.root, "server.log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(["sh", SCRIPT], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.addCleanup(stop_process, self.process)
        self.port = self._wait_for_port()

    def _log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                found = _PORT_RE.findall(f.read())
            if found:
                return int(found[0][1])
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.fail("the tutorial's server did not start:\n" + self._log())

    def fetch(self, cafile: str, into: str) -> subprocess.CompletedProcess:
        password_file = os.path.join(self.root, "alice-password")
        with open(password_file, "w") as f:
            f.write(PASSWORD + "\n")
        return subprocess.run(
            [sys.executable, "-m", "twisted_pop3ng.cli", "fetch", "-q", "--cafile", cafile,
             "--state", os.path.join(self.root, "fetch-state.json"), "--password-file", password_file,
             "pop3s://alice@127.0.0.1:%d" % self.port, "--maildir", into],
            capture_output=True, text=True, timeout=120, env=self.env)

    def files(self, maildir: str) -> List[bytes]:
        found = []
        for sub in ("new", "cur"):
            for name in sorted(os.listdir(os.path.join(maildir, sub))):
                with open(os.path.join(maildir, sub, name), "rb") as f:
                    found.append(f.read())
        return found

    def test_setup_then_fetch(self) -> None:
        # the passwd-file holds a SHA512-CRYPT hash, readable by the server's group only
        with open(os.path.join(self.root, "etc", "users")) as f:
            line = f.read()
        self.assertTrue(line.startswith("alice:{SHA512-CRYPT}$6$"), line)
        self.assertNotIn(PASSWORD, line)
        self.assertEqual(os.stat(os.path.join(self.root, "etc", "users")).st_mode & 0o777, 0o640)
        # the server runs as the unprivileged user
        with open("/proc/%d/status" % self.process.pid) as f:
            uid = [line.split()[1] for line in f if line.startswith("Uid:")][0]
        self.assertEqual(int(uid), pwd.getpwnam(self.account["POP3NG_USER"]).pw_uid)
        # mail delivered to alice's Maildir (created by the server at the first login otherwise)
        maildir = os.path.join(self.root, "mail", "alice", "Maildir")
        message = b"From: bob@example.org\nSubject: hello\n\nFirst message.\n"
        deliver(maildir, message, "1700000000.M1P1.tutorial")
        info = pwd.getpwnam(self.account["POP3NG_USER"])
        for directory, _, names in os.walk(os.path.dirname(maildir)):
            for path in [directory] + [os.path.join(directory, n) for n in names]:
                os.chown(path, info.pw_uid, info.pw_gid)
        inbox = os.path.join(self.root, "inbox")
        result = self.fetch(self.certs["ca"], inbox)
        self.assertEqual(result.returncode, 0, result.stderr + self._log())
        self.assertEqual(self.files(inbox), [message])
        self.assertEqual(self.files(maildir), [])  # deleted on the server after delivery

    def test_tls_only_and_certificate_reload(self) -> None:
        # no plaintext POP3 anywhere: a client that waits for a greeting in clear gets none
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.settimeout(2)
            with self.assertRaises(socket.timeout):
                sock.recv(100)
        # a renewed certificate (another CA) is served after SIGHUP, as the tutorial's renewal hook does
        renewed = make_certificates(os.path.join(self.root, "etc"))
        os.replace(renewed["cert"], self.certs["cert"])
        os.replace(renewed["key"], self.certs["key"])
        os.chmod(self.certs["cert"], 0o644)
        os.chmod(self.certs["key"], 0o644)
        with open(os.path.join(self.root, "run", "twistd.pid")) as f:
            os.kill(int(f.read()), signal.SIGHUP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            result = self.fetch(renewed["ca"], os.path.join(self.root, "inbox"))
            if result.returncode == 0:
                break
            time.sleep(0.5)
        self.assertEqual(result.returncode, 0, result.stderr + self._log())
        self.assertEqual(self.fetch(self.certs["ca"], os.path.join(self.root, "inbox")).returncode, 4)


class QuickstartTests(unittest.TestCase):
    """docs/quickstart.rst's ``pop3ng fetch`` command, as printed there, against the demo server."""

    def quickstart_command(self) -> str:
        with open(os.path.join(ROOT, "docs", "quickstart.rst")) as f:
            text = f.read()
        start = text.index("    POP3NG_PASSWORD=")
        command = []
        for line in text[start:].splitlines():
            command.append(line.strip().rstrip("\\").strip())
            if not line.rstrip().endswith("\\"):
                break
        return " ".join(command)

    def test_fetch_from_the_demo(self) -> None:
        demo = start_demo(os.path.abspath(self.mktemp()))
        self.addCleanup(demo.stop)
        work = demo.work
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        found = re.search(r"^\s*password:\s+(\S+)$", demo.output(), re.M)
        password = found and found.group(1)
        self.assertIsNotNone(password, demo.output())
        command = self.quickstart_command()
        self.assertIn("pop3ng fetch", command)
        inbox = os.path.join(work, "inbox")
        command = (command.replace("yrFq3s0D9xg1nT2k", password).replace(":9950", ":%d" % demo.secure)
                   .replace("/tmp/inbox", inbox))
        result = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True,
                                timeout=120)
        self.assertEqual(result.returncode, 0, (command, result.stderr))
        self.assertEqual(len(os.listdir(os.path.join(inbox, "new"))), 2)  # the demo's two samples
