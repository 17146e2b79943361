"""Black-box conformance of ``twistd pop3ng`` itself: command-line errors (a clear message, a non-zero
exit, no traceback) and the inactivity timeouts."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from .e2e import TwistdTestCase, maildir_files
from .lifecycle import start_demo
from .support import ROOT, TWISTD_MAIN, make_certificates, write_users


class CommandLineErrorTests(unittest.TestCase):
    @classmethod
    def _setup(cls):
        if getattr(cls, "root", None) is None:
            cls.root = tempfile.mkdtemp(prefix="pop3ng-cli-")
            import atexit
            atexit.register(shutil.rmtree, cls.root, True)
            cls.certs = make_certificates(cls.root)
            cls.users = write_users(os.path.join(cls.root, "users"), {"alice": "a b c"})

    def setUp(self):
        self._setup()

    def twistd(self, *args, base=True):
        argv = [sys.executable, "-c", TWISTD_MAIN, "-n", "--pidfile=", "pop3ng"]
        if base:
            argv += ["--auth", "passwd-file:" + self.users,
                     "--mailbox", "maildir:" + os.path.join(self.root, "mail", "{user}", "Maildir")]
        argv += list(args)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        try:
            result = subprocess.run(argv, capture_output=True, timeout=30, cwd=self.root, env=env)
        except subprocess.TimeoutExpired as e:
            self.fail("twistd kept running instead of exiting: %r" % (e.stdout or b"")[-2000:])
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        self.assertNotEqual(result.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Unhandled", output)
        return output

    def test_missing_certificate_file(self):
        missing = os.path.join(self.root, "no-such-cert.pem")
        out = self.twistd("--listen", "tcp:0:interface=127.0.0.1", "--tls-listen", "tcp:0:interface=127.0.0.1",
                          "--tls-cert", missing, "--tls-key", self.certs["key"])
        self.assertIn(missing, out)

    def test_missing_key_file(self):
        missing = os.path.join(self.root, "no-such-key.pem")
        out = self.twistd("--tls-listen", "tcp:0:interface=127.0.0.1", "--tls-cert", self.certs["cert"],
                          "--tls-key", missing)
        self.assertIn(missing, out)

    def test_key_is_not_a_key(self):
        out = self.twistd("--tls-listen", "tcp:0:interface=127.0.0.1", "--tls-cert", self.certs["cert"],
                          "--tls-key", self.certs["ca"])
        self.assertIn("key", out.lower())

    def test_a_chain_without_its_key(self):
        """--tls-cert of a chain-only file (fullchain.pem) and no --tls-key: the error says what
        is missing (it used to end "(..., None): Valid PEM but no BEGIN/END delimiters")."""
        out = self.twistd("--tls-listen", "tcp:0:interface=127.0.0.1", "--tls-cert", self.certs["cert"])
        self.assertIn("no private key: %s holds none, and no --tls-key was given" % self.certs["cert"], out)

    def test_bad_endpoint(self):
        for bad in ("tcp:notaport", "bogus:1", "tcp:99999", "tcp:110:interface"):
            out = self.twistd("--listen", bad)
            self.assertIn(bad, out)

    def test_bad_tls_endpoint(self):
        out = self.twistd("--tls-listen", "tcp:xyz", "--tls-cert", self.certs["cert"], "--tls-key",
                          self.certs["key"])
        self.assertIn("tcp:xyz", out)

    def test_unknown_mailbox_scheme(self):
        out = self.twistd("--auth", "passwd-file:" + self.users, "--mailbox", "mbox9:/var/mail/{user}",
                          "--listen", "tcp:0:interface=127.0.0.1", base=False)
        self.assertIn("mbox9", out)
        self.assertIn("--help-mailbox", out)

    def test_mailbox_without_user_placeholder(self):
        out = self.twistd("--auth", "passwd-file:" + self.users, "--mailbox", "maildir:/var/mail/Maildir",
                          "--listen", "tcp:0:interface=127.0.0.1", base=False)
        self.assertIn("{user}", out)

    def test_mailbox_template_with_another_placeholder(self):
        # A misspelt or unsupported {...} once became a literal directory for every user.
        for spec, other in (("maildir:%s/{user}/{bogus}/Maildir", "{bogus}"),
                            ("mbox:%s/{domain}/{user}", "{domain}")):
            out = self.twistd("--auth", "passwd-file:" + self.users, "--mailbox", spec % self.root,
                              "--listen", "tcp:0:interface=127.0.0.1", base=False)
            self.assertIn(other, out)
            self.assertIn("the only placeholder is {user}", out)
        self.assertFalse(os.path.exists(os.path.join(self.root, "alice")))

    def test_tls_listen_without_certificate(self):
        out = self.twistd("--tls-listen", "tcp:0:interface=127.0.0.1")
        self.assertIn("--tls-cert", out)

    def test_missing_passwd_file(self):
        missing = os.path.join(self.root, "no-such-users")
        out = self.twistd("--auth", "passwd-file:" + missing, "--mailbox", "maildir:/tmp/{user}",
                          "--listen", "tcp:0:interface=127.0.0.1", base=False)
        self.assertIn("--auth passwd-file:%s: cannot read" % missing, out)
        self.assertNotIn("Unexpected error", out)

    def test_memory_checker_errors_do_not_show_its_passwords(self):
        out = self.twistd("--auth", "memory:alice:s3cr3t:bob", "--mailbox", "maildir:/tmp/{user}",
                          "--listen", "tcp:0:interface=127.0.0.1", base=False)
        self.assertIn("--auth memory:***", out)
        self.assertNotIn("s3cr3t", out)

    def taken_port(self) -> int:
        """A port this test listens on (for as long as it runs)."""
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        return sock.getsockname()[1]

    def test_port_in_use(self):
        port = self.taken_port()
        out = self.twistd("--listen", "tcp:%d:interface=127.0.0.1" % port)
        self.assertIn(str(port), out)

    def test_port_in_use_for_tls(self):
        port = self.taken_port()
        out = self.twistd("--listen", "tcp:0:interface=127.0.0.1", "--tls-listen",
                          "tcp:%d:interface=127.0.0.1" % port, "--tls-cert", self.certs["cert"],
                          "--tls-key", self.certs["key"])
        self.assertIn(str(port), out)


#: How long a test waits for a timeout the server should have applied long before (under any load).
PATIENCE = 60


class LoginTimeoutTests(TwistdTestCase):
    """The timers' lower bounds are what is checked: the socket's own timeout (``PATIENCE``) is the
    deadline for a timer that never fires; nothing depends on how fast the machine is."""

    extra_args = ["--login-timeout", "1", "--idle-timeout", "2"]

    def wait_for_reply(self, s) -> "tuple[bytes, float]":
        start = time.monotonic()
        s.sock.settimeout(PATIENCE)
        try:
            reply = s.line()
        except (socket.timeout, TimeoutError):
            self.fail("the server never timed the session out")
        return reply, time.monotonic() - start

    def test_login_timeout(self):
        s = self.session()
        s.line()
        reply, elapsed = self.wait_for_reply(s)
        self.assertTrue(reply.startswith(b"-ERR"), reply)
        self.assertTrue(any(w in reply.lower() for w in (b"inactiv", b"idle", b"time")), reply)
        self.assertTrue(s.closed(PATIENCE))
        self.assertGreater(elapsed, 0.5)  # (the timer started at the connection, before the greeting)

    def test_idle_timeout_after_login_commits_nothing(self):
        user, _ = self.fresh_user()
        self.server.deliver(user, b"Subject: x\n\ny\n")
        s = self.login(user)
        self.ok(s, b"DELE 1")
        reply, elapsed = self.wait_for_reply(s)
        self.assertTrue(reply.startswith(b"-ERR"), reply)
        self.assertTrue(s.closed(PATIENCE))
        self.assertGreater(elapsed, 1.5)  # the idle timeout (2 s), not the login timeout (1 s)
        self.assertEqual(len(maildir_files(self.server, user)), 1)

    def test_login_timeout_without_tls_handshake(self):
        sock = socket.create_connection(("127.0.0.1", self.server.tls_port), 10)
        self.addCleanup(sock.close)
        sock.settimeout(PATIENCE)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except (socket.timeout, TimeoutError):
            self.fail("a client that never starts the TLS handshake was never disconnected")

    def test_idle_timeout_closes_a_client_that_never_reads(self):
        # loseConnection waits for the write buffer to drain, which never happens here: the
        # timeout must still end the session (and release the maildrop lock).
        from .test_e2e_load import write_big_message

        user, password = self.fresh_user()
        write_big_message(self.server.maildir(user), 8 * 1024 * 1024, "1700000000.M1P1.stuck")
        s = self.login(user)
        s.send(b"RETR 1\r\n")
        deadline = time.monotonic() + 30
        while True:
            t = self.session()
            t.line()
            t.command(b"USER " + user.encode())
            reply = t.command(b"PASS " + password.encode())
            t.close()
            if reply.startswith(b"+OK"):
                break
            self.assertTrue(reply.startswith(b"-ERR [IN-USE]"), reply)
            self.assertLess(time.monotonic(), deadline, "the stuck session was never closed")
            time.sleep(0.5)


class ActivityTests(TwistdTestCase):
    """Each command restarts the login timer: a client that keeps talking stays connected well past
    the timeout. Commands go ten times as often as the timeout; a round the scheduler delayed past
    it proves nothing, so it starts over rather than fail."""

    extra_args = ["--login-timeout", "3"]

    def test_activity_keeps_the_session(self):
        for _ in range(5):
            s = self.session()
            s.line()
            connected = time.monotonic()
            last = connected
            while time.monotonic() - connected < 7.5:  # 2.5 timeouts
                time.sleep(0.3)
                if time.monotonic() - last > 2.5:
                    break  # this machine stalled near the timeout: inconclusive, start over
                self.assertTrue(s.command(b"CAPA").startswith(b"+OK"))
                s.body()
                last = time.monotonic()
            else:
                return
            s.close()
        self.fail("the machine stalled for seconds in every round")


class DemoTests(unittest.TestCase):
    """``twistd -n pop3ng --demo`` (the README's first command) serves mail its printed curl lines fetch."""

    def test_demo_prints_working_curl_lines(self):
        import re

        demo = start_demo(os.path.abspath(self.mktemp()))
        self.addCleanup(demo.stop)
        # (the curl lines are printed before the listeners start)
        lines = re.findall(r"^\s*(curl .*)$", demo.output(), re.M)
        self.assertEqual(len(lines), 2, demo.output())
        schemes = set()
        for line in lines:
            result = subprocess.run(line + " --silent --show-error --max-time 20", shell=True,
                                    capture_output=True, timeout=60, cwd="/")
            self.assertEqual(result.returncode, 0, (line, result.stderr))
            self.assertIn(b"Subject:", result.stdout)
            schemes.add(line.split("://")[0].split()[-1])
        self.assertEqual(schemes, {"pop3", "pop3s"})
        self.assertNotIn("Traceback", demo.output())


class InstalledCommandTests(unittest.TestCase):
    """The installed ``twistd`` and ``pop3ng`` scripts find the plugins from any directory, with no
    PYTHONPATH: as an admin runs them. (The other tests put the checkout on PYTHONPATH; an
    editable install once hid ``twisted/plugins/`` from Twisted, and ``twistd pop3ng`` said
    "Unknown command" outside the checkout.)"""

    def script(self, name: str) -> str:
        path = os.path.join(os.path.dirname(sys.executable), name)
        if not os.path.exists(path):
            path = shutil.which(name) or ""
        self.assertTrue(path, "the %s script is not installed" % name)
        return path

    def run_elsewhere(self, *argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        away = tempfile.mkdtemp(prefix="pop3ng-away-")
        self.addCleanup(shutil.rmtree, away, True)
        return subprocess.run(list(argv), cwd=away, env=env, input=stdin, capture_output=True,
                              timeout=120)

    def test_twistd_knows_pop3ng(self):
        result = self.run_elsewhere(self.script("twistd"), "pop3ng", "--help")
        self.assertEqual(result.returncode, 0, result.stderr + result.stdout)
        self.assertIn(b"--mailbox", result.stdout)
        self.assertIn(b"--auth", result.stdout)

    def test_pop3ng_deliver_uses_the_plugin_checkers(self):
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        users = write_users(os.path.join(root, "users"), {"alice": "x"})
        result = self.run_elsewhere(
            self.script("pop3ng"), "deliver", "--auth", "passwd-file:" + users,
            "--mailbox", "maildir:" + os.path.join(root, "{user}", "Maildir"), "alice",
            stdin=b"Subject: from afar\n\nbody\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        maildir = os.path.join(root, "alice", "Maildir")
        self.assertEqual(len(os.listdir(os.path.join(maildir, "new"))), 1, result.stderr)


#: A third-party --mailbox backend as its author would ship it: one drop-in file.
THIRD_PARTY_DROP_IN = """
from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_pop3ng.interfaces import IMailboxStoreFactory


@implementer(IPlugin, IMailboxStoreFactory)
class GreetingStoreFactory:
    scheme = "greeting"
    help = "One message saying ARGS to every user (a test backend)."

    def makeStore(self, argstring):
        from twisted_pop3ng.mailbox.memory import MemoryStore

        store = MemoryStore()
        store.deliver("alice", b"Subject: greeting\\n\\n" + argstring.encode() + b"\\n")
        return store


greeting = GreetingStoreFactory()
"""


class MailboxPluginTests(unittest.TestCase):
    """``--mailbox`` schemes are Twisted plugins: listed by ``--help-mailbox``, and a third-party
    backend is one drop-in file in a ``twisted/plugins`` directory on the path."""

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="pop3ng-plugin-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, self.env.get("PYTHONPATH")]))

    def run_twistd(self, *args):
        argv = [sys.executable, "-c", TWISTD_MAIN, "-n", "--pidfile=", "pop3ng"] + list(args)
        return subprocess.run(argv, capture_output=True, timeout=60, cwd=self.root, env=self.env)

    def add_drop_in(self):
        plugins = os.path.join(self.root, "site", "twisted", "plugins")
        os.makedirs(plugins)  # no __init__.py: twisted.plugins gathers every such directory
        with open(os.path.join(plugins, "pop3ng_greeting_backend.py"), "w") as f:
            f.write(THIRD_PARTY_DROP_IN)
        self.env["PYTHONPATH"] = os.pathsep.join([os.path.join(self.root, "site"),
                                                  self.env["PYTHONPATH"]])

    def test_help_mailbox_lists_the_schemes(self):
        result = self.run_twistd("--help-mailbox")
        out = result.stdout.decode()
        self.assertEqual(result.returncode, 0, out + result.stderr.decode())
        self.assertIn("maildir:/var/mail/{user}/Maildir", out)
        self.assertRegex(out, r"(?m)^  maildir$")
        self.assertRegex(out, r"(?m)^  memory$")
        self.assertNotIn("greeting", out)

    def test_a_third_party_backend_is_one_drop_in_file(self):
        self.add_drop_in()
        result = self.run_twistd("--help-mailbox")
        out = result.stdout.decode()
        self.assertEqual(result.returncode, 0, out + result.stderr.decode())
        self.assertRegex(out, r"(?m)^  greeting$")
        self.assertIn("One message saying ARGS", out)
        self.assertRegex(out, r"(?m)^  maildir$")

        import re
        import signal

        from .support import Session

        users = write_users(os.path.join(self.root, "users"), {"alice": "a b c"})
        log_path = os.path.join(self.root, "twistd.log")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", TWISTD_MAIN, "-n", "--pidfile=", "pop3ng",
                 "--auth", "passwd-file:" + users, "--mailbox", "greeting:hello from a plugin",
                 "--listen", "tcp:0:interface=127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=self.env)

        def stop():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(10)
        self.addCleanup(stop)
        deadline = time.monotonic() + 30
        port = None
        while port is None and time.monotonic() < deadline:
            with open(log_path, "rb") as f:
                found = re.search(rb"POP3ServerFactory starting on (\d+)", f.read())
            port = found and int(found.group(1))
            self.assertIsNone(process.poll(), open(log_path).read())
            time.sleep(0.05)
        self.assertIsNotNone(port, open(log_path).read())
        session = Session(socket.create_connection(("127.0.0.1", port), timeout=10))
        self.addCleanup(session.close)
        self.assertTrue(session.login(b"alice", b"a b c").startswith(b"+OK"))
        self.assertTrue(session.command(b"RETR 1").startswith(b"+OK"))
        self.assertIn(b"hello from a plugin", session.body())
