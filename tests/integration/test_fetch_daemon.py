"""``pop3ng fetch --config FILE --daemon SECONDS`` as a real process against a real Dovecot:
several accounts polled again and again, SIGHUP re-reading the file, SIGTERM mid-poll ending
cleanly with exit 0, SIGKILL mid-poll then a restart losing and doubling nothing, the account lock
keeping the daemon off an account another fetcher holds, and LOGIN-DELAY honoured (our server)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

from twisted.trial import unittest

from .dovecot import start_dovecot
from .support import ROOT, make_certificates, start_server, stop_process
from .test_fetch import maildir_messages

PASSWORD = "pass word with spaces"


def make_message(user: str, i: int, size: int = 300) -> bytes:
    body = (b"line %d of the body, some filler text\n" % i) * max(1, size // 40)
    return (b"From: sender@example.org\nTo: %s@example.org\nSubject: test %d\n\n"
            % (user.encode(), i)) + body


def wait_for(condition: Callable[[], bool], timeout: float = 240.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for %s" % (what or condition))


class DaemonTestBase(unittest.TestCase):
    users = ("bob", "dave")

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.state_home = os.path.join(self.root, "state-home")
        self.password_file = os.path.join(self.root, "password")
        with open(self.password_file, "w") as f:
            f.write(PASSWORD + "\n")
        self.config_path = os.path.join(self.root, "fetch.toml")
        self.messages: Dict[str, List[bytes]] = {u: [] for u in self.users}
        self.log_path = os.path.join(self.root, "daemon.log")

    def out(self, user: str) -> str:
        return os.path.join(self.root, "Mail", user)

    def start_dovecot(self) -> None:
        self.certs = make_certificates(self.root)
        self.dovecot = start_dovecot(os.path.join(self.root, "dovecot"),
                                     {u: PASSWORD for u in self.users}, certs=self.certs)
        self.addCleanup(self.dovecot.stop)
        self.url = "pop3://%%s@localhost:%d" % self.dovecot.port

    def put(self, user: str, count: int, size: int = 300) -> None:
        start = len(self.messages[user])
        for i in range(start, start + count):
            message = make_message(user, i, size)
            self.messages[user].append(message)
            self.dovecot.deliver(user, message)

    def on_server(self, user: str) -> int:
        return len(maildir_messages(self.dovecot.maildir(user)))

    def write_config(self, users: List[str], interval: float = 0.3, extra: str = "") -> None:
        lines = ["[defaults]", 'cafile = "%s"' % self.certs["ca"],
                 'password_file = "%s"' % self.password_file, "poll_interval = %s" % interval,
                 "[daemon]", "parallel = 2", "max_backoff = 2"]
        for user in users:
            lines += ["[accounts.%s]" % user, 'url = "%s"' % (self.url % user),
                      'maildir = "%s"' % self.out(user)]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n" + extra)

    def env(self) -> Dict[str, str]:
        env = dict(os.environ, PYTHONPATH=ROOT, XDG_STATE_HOME=self.state_home)
        env.pop("POP3NG_PASSWORD", None)
        return env

    def start_daemon(self, *args: str, kill_at: Optional[str] = None,
                     term_at: Optional[str] = None) -> subprocess.Popen:
        if kill_at:
            command = [sys.executable, "-m", "tests.integration.fetch_with_crash", kill_at]
        elif term_at:
            command = [sys.executable, "-m", "tests.integration.test_fetch_daemon", term_at]
        else:
            command = [sys.executable, "-m", "twisted_pop3ng.cli", "fetch"]
        log = open(self.log_path, "ab")
        process = subprocess.Popen(command + ["--config", self.config_path, "--daemon", "60", *args],
                                   env=self.env(), stderr=log, stdout=subprocess.PIPE)
        log.close()
        self.addCleanup(stop_process, process)
        return process

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def delivered(self, user: str) -> List[bytes]:
        return maildir_messages(self.out(user))

    def assert_exactly_once(self, user: str) -> None:
        self.assertEqual(sorted(self.delivered(user)), sorted(self.messages[user]))


class DaemonTests(DaemonTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.start_dovecot()

    def test_polls_again_reloads_on_sighup_and_stops_on_sigterm(self) -> None:
        self.put("bob", 5)
        self.put("dave", 3)
        self.write_config(["bob"])
        daemon = self.start_daemon("--json")
        wait_for(lambda: len(self.delivered("bob")) == 5, what="the first poll")
        self.put("bob", 4)  # picked up by a later poll
        wait_for(lambda: len(self.delivered("bob")) == 9, what="a later poll")
        self.assertEqual(self.on_server("dave"), 3)  # not in the file yet
        self.write_config(["bob", "dave"])
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: len(self.delivered("dave")) == 3, what="the account added by SIGHUP")
        self.assertIn("reloaded %s: 2 account(s)" % self.config_path, self.log())
        # A broken file on SIGHUP: reported, the old configuration goes on.
        with open(self.config_path, "a") as f:
            f.write("[accounts.dave]\nkeep = maybe\n")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in self.log(), what="the reload failure")
        self.put("dave", 2)
        wait_for(lambda: len(self.delivered("dave")) == 5, what="polling after a failed reload")
        daemon.send_signal(signal.SIGTERM)
        stdout, _ = daemon.communicate(timeout=240)
        self.assertEqual(daemon.returncode, 0, self.log())
        self.assertIn("stopped", self.log())
        for user in self.users:
            self.assert_exactly_once(user)
            self.assertEqual(self.on_server(user), 0)
        # --json: one object per poll and line, each with the account's exit code.
        polls = [json.loads(line) for line in stdout.decode().splitlines()]
        self.assertGreaterEqual(len(polls), 3)
        self.assertEqual({p["accounts"][0]["account"] for p in polls}, {"bob", "dave"})
        self.assertEqual(sum(p["accounts"][0]["delivered"] for p in polls), 14)
        self.assertTrue(all(p["exit"] == 0 for p in polls))

    def test_sigterm_mid_poll_finishes_the_messages_in_flight(self) -> None:
        """The daemon SIGTERMs itself right after its 2nd durable batch of 16 (exactly mid-poll,
        whatever the machine's speed): what is in flight lands, nothing more is fetched."""
        self.put("bob", 400, size=5000)
        self.write_config(["bob"], extra="batch = 16\npipeline = 8\n")
        daemon = self.start_daemon(term_at="delivered:2")
        daemon.communicate(timeout=240)
        self.assertEqual(daemon.returncode, 0, self.log())
        got = self.delivered("bob")
        # two batches, then at most the RETRs in flight (8) and the ones sent before the
        # signal was handled (one more window)
        self.assertGreaterEqual(len(got), 32)
        self.assertLessEqual(len(got), 32 + 16 + 16)
        # What was delivered was also deleted on the server (DELE + QUIT before exit).
        self.assertEqual(len(got) + self.on_server("bob"), 400)
        self.assertEqual(os.listdir(os.path.join(self.out("bob"), "tmp")), [])
        self.assertEqual(len(set(got)), len(got))
        self.assertIn("stopping: finishing the messages in flight", self.log())
        daemon = self.start_daemon()
        wait_for(lambda: len(self.delivered("bob")) == 400, what="the rest after a restart")
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=240)
        self.assert_exactly_once("bob")

    def test_sigkill_mid_poll_then_restart(self) -> None:
        self.put("bob", 300, size=5000)
        self.put("dave", 300, size=5000)
        self.write_config(["bob", "dave"])
        for step, threshold in (("delivered:3", 0), (None, 150), (None, 380)):
            daemon = self.start_daemon(kill_at=step) if step else self.start_daemon()
            if step is None:
                wait_for(lambda: sum(len(self.delivered(u)) for u in self.users) >= threshold)
                daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=240)
            self.assertEqual(daemon.returncode, -signal.SIGKILL)
            self.put("bob", 20)
        daemon = self.start_daemon()
        wait_for(lambda: all(len(self.delivered(u)) == len(self.messages[u]) for u in self.users),
                 what="everything after the kills")
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=240)
        self.assertEqual(daemon.returncode, 0)
        for user in self.users:
            self.assert_exactly_once(user)
            self.assertEqual(self.on_server(user), 0)

    def test_an_account_locked_by_another_fetcher_is_left_alone(self) -> None:
        self.put("bob", 5)
        self.write_config(["bob"])
        state_dir = os.path.join(self.state_home, "pop3ng")
        os.makedirs(state_dir)
        # the state file's name is the account URL with / and : made _ (fetch.state.default_path)
        lock_path = os.path.join(state_dir, "pop3___bob@localhost_%d.json.lock" % self.dovecot.port)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another pop3ng fetch of this account would
        try:
            daemon = self.start_daemon()
            wait_for(lambda: self.log().count("another pop3ng fetch is running") >= 2,
                     what="two refused polls")
            self.assertEqual(self.delivered("bob"), [])
            self.assertEqual(self.on_server("bob"), 5)
        finally:
            os.close(fd)
        wait_for(lambda: len(self.delivered("bob")) == 5, what="the poll after the lock is free")
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=240)
        self.assertEqual(daemon.returncode, 0)
        self.assert_exactly_once("bob")

    def test_two_daemons_on_the_same_accounts(self) -> None:
        self.put("bob", 150, size=4000)
        self.put("dave", 150, size=4000)
        self.write_config(["bob", "dave"], interval=0.05)
        first, second = self.start_daemon(), self.start_daemon()
        wait_for(lambda: all(len(self.delivered(u)) >= 150 for u in self.users))
        self.put("bob", 30)
        wait_for(lambda: len(self.delivered("bob")) >= 180)
        for daemon in (first, second):
            daemon.send_signal(signal.SIGTERM)
            daemon.communicate(timeout=240)
            self.assertEqual(daemon.returncode, 0)
        for user in self.users:
            self.assert_exactly_once(user)

    def test_failing_account_backs_off_and_others_go_on(self) -> None:
        self.put("bob", 3)
        self.write_config(["bob"], extra='[accounts.broken]\nurl = "pop3://x@127.0.0.1:1"\n'
                                          'maildir = "%s"\n' % self.out("x"))
        daemon = self.start_daemon()
        wait_for(lambda: self.log().count("broken: failed (exit 5)") >= 3, what="three failures")
        wait_for(lambda: len(self.delivered("bob")) == 3)
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=240)
        delays = [float(line.rsplit("next poll in ", 1)[1].split()[0])
                  for line in self.log().splitlines() if "broken: failed" in line]
        # interval 0.3 s: 0.6, 1.2, then max_backoff 2 (each +-20% jitter)
        self.assertLessEqual(delays[0], 0.8)
        self.assertGreaterEqual(max(delays), 1.5)
        self.assertLessEqual(max(delays), 2.5)


class LoginDelayTests(DaemonTestBase):
    """Our server announces and enforces LOGIN-DELAY 2: polls every 0.2 s would be refused."""

    users = ("alice",)

    def test_login_delay_is_honoured(self) -> None:
        self.server = start_server(os.path.join(self.root, "server"), {"alice": PASSWORD},
                                   extra_args=["--login-delay", "2"])
        self.addCleanup(self.server.stop)
        self.certs = self.server.certs
        self.url = "pop3s://%%s@localhost:%d" % self.server.tls_port
        self.write_config(["alice"], interval=0.2)
        for i in range(3):
            self.server.deliver("alice", make_message("alice", i))
        daemon = self.start_daemon()
        wait_for(lambda: self.log().count("alice: ") >= 3, what="three polls")
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=240)
        polls = [line for line in self.log().splitlines() if "alice: " in line]
        self.assertFalse([line for line in polls if "failed" in line], polls)
        self.assertTrue(all(line.endswith("next poll in 2.0 s") for line in polls), polls)
        self.assertEqual(len(self.delivered("alice")), 3)


def _term_at(spec: str) -> Callable[[str], None]:
    """A crash hook that SIGTERMs this process the N-th time step NAME is reached."""
    name, _, count = spec.rpartition(":")
    reached = [0]

    def hook(step: str) -> None:
        if step == name:
            reached[0] += 1
            if reached[0] == int(count):
                os.kill(os.getpid(), signal.SIGTERM)

    return hook


if __name__ == "__main__":
    # ``python -m tests.integration.test_fetch_daemon NAME:N ARGS...``: pop3ng fetch ARGS, which
    # SIGTERMs itself at step NAME (FetchOptions.crash_hook): a signal at an exact step.
    from twisted_pop3ng.fetch.cli import main

    sys.exit(main(sys.argv[2:], crash_hook=_term_at(sys.argv[1])))
