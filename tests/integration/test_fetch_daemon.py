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
from typing import List, Optional, Tuple

from .fetch_support import PASSWORD, FetchTestCase, make_message, maildir_messages, server_ca
from .support import start_server, stop_process


class DaemonTestBase(FetchTestCase):
    users: Tuple[str, ...] = ("bob", "dave")
    url: str  # with %s for the user
    ca: str  # the CA file the source server's certificate is checked with

    def setUp(self) -> None:
        super().setUp()
        self.config_path = os.path.join(self.root, "fetch.toml")
        self.log_path = os.path.join(self.root, "daemon.log")

    def maildir(self, user: str) -> str:
        """Where the daemon delivers ``user``'s mail."""
        return os.path.join(self.root, "Mail", user)

    def write_config(self, users: List[str], interval: float = 0.3, extra: str = "") -> None:
        lines = ["[defaults]", 'cafile = "%s"' % self.ca,
                 'password_file = "%s"' % self.password_file, "poll_interval = %s" % interval,
                 "[daemon]", "parallel = 2", "max_backoff = 2"]
        for user in users:
            lines += ["[accounts.%s]" % user, 'url = "%s"' % (self.url % user),
                      'maildir = "%s"' % self.maildir(user)]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n" + extra)

    def start_daemon(self, *args: str, kill_at: Optional[str] = None,
                     term_at: Optional[str] = None) -> subprocess.Popen:
        command = self.command("--config", self.config_path, "--daemon", "60", *args,
                               kill_at=kill_at, term_at=term_at)
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(command, env=self.env(), stderr=log, stdout=subprocess.PIPE)
        self.addCleanup(stop_process, process)
        return process

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def delivered(self, user: str) -> List[bytes]:
        return maildir_messages(self.maildir(user))

    def assert_exactly_once(self, user: str) -> None:
        self.assertEqual(sorted(self.delivered(user)), sorted(self.mail[user]))


class DaemonTests(DaemonTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.start_dovecot(self.users)
        self.ca = self.certs["ca"]
        self.url = "pop3://%%s@localhost:%d" % self.dovecot.port

    def test_polls_again_reloads_on_sighup_and_stops_on_sigterm(self) -> None:
        self.put(5, user="bob")
        self.put(3, user="dave")
        self.write_config(["bob"])
        daemon = self.start_daemon("--json")
        self.wait_until(lambda: len(self.delivered("bob")) == 5, "the first poll")
        self.put(4, user="bob")  # picked up by a later poll
        self.wait_until(lambda: len(self.delivered("bob")) == 9, "a later poll")
        self.assertEqual(self.on_server("dave"), 3)  # not in the file yet
        self.write_config(["bob", "dave"])
        daemon.send_signal(signal.SIGHUP)
        self.wait_until(lambda: len(self.delivered("dave")) == 3, "the account added by SIGHUP")
        self.assertIn("reloaded %s: 2 account(s)" % self.config_path, self.log())
        # A broken file on SIGHUP: reported, the old configuration goes on.
        with open(self.config_path, "a") as f:
            f.write("[accounts.dave]\nkeep = maybe\n")
        daemon.send_signal(signal.SIGHUP)
        self.wait_until(lambda: "reload failed" in self.log(), "the reload failure")
        self.put(2, user="dave")
        self.wait_until(lambda: len(self.delivered("dave")) == 5, "polling after a failed reload")
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
        self.put(400, user="bob", size=5000)
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
        self.assertEqual(os.listdir(os.path.join(self.maildir("bob"), "tmp")), [])
        self.assertEqual(len(set(got)), len(got))
        self.assertIn("stopping: finishing the messages in flight", self.log())
        daemon = self.start_daemon()
        self.wait_until(lambda: len(self.delivered("bob")) == 400, "the rest after a restart")
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=240)
        self.assert_exactly_once("bob")

    def test_sigkill_mid_poll_then_restart(self) -> None:
        self.put(300, user="bob", size=5000)
        self.put(300, user="dave", size=5000)
        self.write_config(["bob", "dave"])
        for step, threshold in (("delivered:3", 0), (None, 150), (None, 380)):
            daemon = self.start_daemon(kill_at=step) if step else self.start_daemon()
            if step is None:
                self.wait_until(lambda: sum(len(self.delivered(u)) for u in self.users) >= threshold,
                                "%d messages delivered" % threshold)
                daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=240)
            self.assertEqual(daemon.returncode, -signal.SIGKILL)
            self.put(20, user="bob")
        daemon = self.start_daemon()
        self.wait_until(lambda: all(len(self.delivered(u)) == len(self.mail[u]) for u in self.users),
                        "everything after the kills")
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=240)
        self.assertEqual(daemon.returncode, 0)
        for user in self.users:
            self.assert_exactly_once(user)
            self.assertEqual(self.on_server(user), 0)

    def test_an_account_locked_by_another_fetcher_is_left_alone(self) -> None:
        self.put(5, user="bob")
        self.write_config(["bob"])
        state_dir = os.path.join(self.state_home, "pop3ng")
        os.makedirs(state_dir)
        # the state file's name is the account URL with / and : made _ (fetch.state.default_path)
        lock_path = os.path.join(state_dir, "pop3___bob@localhost_%d.json.lock" % self.dovecot.port)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another pop3ng fetch of this account would
        try:
            daemon = self.start_daemon()
            self.wait_until(lambda: self.log().count("another pop3ng fetch is running") >= 2,
                            "two refused polls")
            self.assertEqual(self.delivered("bob"), [])
            self.assertEqual(self.on_server("bob"), 5)
        finally:
            os.close(fd)
        self.wait_until(lambda: len(self.delivered("bob")) == 5, "the poll after the lock is free")
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=240)
        self.assertEqual(daemon.returncode, 0)
        self.assert_exactly_once("bob")

    def test_two_daemons_on_the_same_accounts(self) -> None:
        self.put(150, user="bob", size=4000)
        self.put(150, user="dave", size=4000)
        self.write_config(["bob", "dave"], interval=0.05)
        first, second = self.start_daemon(), self.start_daemon()
        self.wait_until(lambda: all(len(self.delivered(u)) >= 150 for u in self.users),
                        "both accounts fetched")
        self.put(30, user="bob")
        self.wait_until(lambda: len(self.delivered("bob")) >= 180, "the 30 new messages")
        for daemon in (first, second):
            daemon.send_signal(signal.SIGTERM)
            daemon.communicate(timeout=240)
            self.assertEqual(daemon.returncode, 0)
        for user in self.users:
            self.assert_exactly_once(user)

    def test_failing_account_backs_off_and_others_go_on(self) -> None:
        self.put(3, user="bob")
        self.write_config(["bob"], extra='[accounts.broken]\nurl = "pop3://x@127.0.0.1:1"\n'
                                          'maildir = "%s"\n' % self.maildir("x"))
        daemon = self.start_daemon()
        self.wait_until(lambda: self.log().count("broken: failed (exit 5)") >= 3, "three failures")
        self.wait_until(lambda: len(self.delivered("bob")) == 3, "bob's messages")
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
        self.ca = server_ca(self.server)
        self.url = "pop3s://%%s@localhost:%d" % self.server.tls_port
        self.write_config(["alice"], interval=0.2)
        for i in range(3):
            self.server.deliver("alice", make_message(i, user="alice"))
        daemon = self.start_daemon()
        self.wait_until(lambda: self.log().count("alice: ") >= 3, "three polls")
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=240)
        polls = [line for line in self.log().splitlines() if "alice: " in line]
        self.assertFalse([line for line in polls if "failed" in line], polls)
        self.assertTrue(all(line.endswith("next poll in 2.0 s") for line in polls), polls)
        self.assertEqual(len(self.delivered("alice")), 3)
