"""What ``pop3ng fetch --config`` tells its user: a progress bar on a terminal (a real pty), one
summary line per account otherwise, ``--json`` with each account's exit code, and the overall exit
code (the first failing account's)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
from typing import Dict, Tuple

from twisted_pop3ng import fetch

from .fetch_support import PASSWORD, FetchTestCase, server_ca
from .support import start_server



class ReportingTests(FetchTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = start_server(os.path.join(self.root, "server"),
                                   {"alice": PASSWORD, "bob": PASSWORD})
        self.addCleanup(self.server.stop)
        self.wrong_file = os.path.join(self.root, "wrong")
        with open(self.wrong_file, "w") as f:
            f.write("wrong\n")
        self.config_path = os.path.join(self.root, "fetch.toml")

    def write_config(self, accounts: Dict[str, str]) -> None:
        """``accounts``: name -> password file; each account fetches the user of that name."""
        lines = ["[defaults]", 'cafile = "%s"' % server_ca(self.server)]
        for name, password_file in accounts.items():
            lines += ["[accounts.%s]" % name,
                      'url = "pop3s://%s@localhost:%d"' % (name, self.server.tls_port),
                      'password_file = "%s"' % password_file,
                      'maildir = "%s"' % os.path.join(self.root, "Mail", name)]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def deliver(self, user: str, count: int, size: int = 2000) -> None:
        for i in range(count):
            self.server.deliver(user, b"Subject: %d\r\n\r\n" % i + b"x" * size + b"\r\n")

    def run_fetch(self, *args: str) -> Tuple[int, str, str]:
        """``pop3ng fetch --config FILE ARGS``: (exit status, stdout, stderr)."""
        result = subprocess.run(self.command("--config", self.config_path, *args), env=self.env(),
                                capture_output=True, timeout=120)
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    def test_summary_lines_and_json_with_per_account_exit_codes(self) -> None:
        self.deliver("alice", 7)
        self.deliver("bob", 2)
        self.write_config({"alice": self.password_file, "bob": self.wrong_file})
        code, out, err = self.run_fetch()
        self.assertEqual(code, fetch.EXIT_AUTH, err)
        self.assertEqual(out, "")
        lines = err.splitlines()
        self.assertEqual(len(lines), 2, err)
        self.assertRegex(err, r"(?m)^pop3ng fetch: alice: 7 delivered \(14\.\d KB\), 0 already "
                              r"delivered, 7 deleted on the server$")
        self.assertRegex(err, r"(?m)^pop3ng fetch: bob: failed \(exit 3\): authentication failed")
        self.deliver("alice", 1)
        code, out, err = self.run_fetch("--json")
        self.assertEqual(code, fetch.EXIT_AUTH, err)
        summary = json.loads(out)
        self.assertEqual(summary["exit"], fetch.EXIT_AUTH)
        alice, bob = summary["accounts"]
        self.assertEqual((alice["account"], alice["exit"], alice["delivered"], alice["deleted"],
                          alice["error"]), ("alice", 0, 1, 1, None))
        self.assertEqual((bob["account"], bob["exit"], bob["delivered"]), ("bob", 3, 0))
        self.assertIn("authentication failed", bob["error"])
        # --account picks accounts; alone, the good one exits 0
        code, out, err = self.run_fetch("--account", "alice", "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual([a["account"] for a in json.loads(out)["accounts"]], ["alice"])
        code, out, err = self.run_fetch("--account", "carol")
        self.assertEqual(code, fetch.EXIT_USAGE)
        self.assertIn("no account named carol (the file has: alice, bob)", err)

    def test_json_for_a_single_url(self) -> None:
        """--json works on the single-account command line too, in the same shape."""
        self.deliver("alice", 3)
        command = self.command("--json", "pop3s://alice@localhost:%d" % self.server.tls_port,
                               "--cafile", server_ca(self.server), "--password-file", self.password_file,
                               "--maildir", os.path.join(self.root, "Mail", "single"))
        result = subprocess.run(command, env=self.env(), capture_output=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        summary = json.loads(result.stdout)
        self.assertEqual(summary["exit"], 0)
        [account] = summary["accounts"]
        self.assertEqual((account["delivered"], account["deleted"], account["error"]), (3, 3, None))
        result = subprocess.run(command[:-1] + [os.path.join(self.root, "Mail", "single")],
                                env=dict(self.env(), XDG_STATE_HOME=os.path.join(self.root, "s2")),
                                capture_output=True, timeout=120)
        self.assertEqual(json.loads(result.stdout)["accounts"][0]["listed"], 0)

    def test_quiet_prints_nothing_on_success(self) -> None:
        self.deliver("alice", 2)
        self.write_config({"alice": self.password_file})
        code, out, err = self.run_fetch("-q")
        self.assertEqual((code, out, err), (0, "", ""))

    def test_progress_bar_on_a_terminal(self) -> None:
        self.deliver("alice", 300, size=3000)
        self.deliver("bob", 100, size=3000)
        self.write_config({"alice": self.password_file, "bob": self.password_file})
        master, slave = pty.openpty()
        process = subprocess.Popen(self.command("--config", self.config_path), env=self.env(), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        screen = b""
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            screen += data
        os.close(master)
        self.assertEqual(process.wait(timeout=60), 0, screen)
        text = screen.decode("utf-8", "replace")
        bars = re.findall(r"\[[#.]{24}\] (\d+)/(\d+) msgs  ([\d.]+ \w+)/([\d.]+ \w+)  \d+ msg/s",
                          text)
        self.assertTrue(bars, text)
        # the totals are both accounts' (400 messages), counted up as they land
        self.assertEqual({total for _, total, _, _ in bars} - {"300", "100"}, {"400"})
        done = [int(n) for n, total, _, _ in bars if total == "400"]
        self.assertEqual(done, sorted(done))
        self.assertEqual(done[-1], 400)
        self.assertIn("ETA", text)
        # the bar is cleared before each summary line, which stays on the screen
        self.assertRegex(text, r"\r\x1b\[Kpop3ng fetch: alice: 300 delivered")
        self.assertRegex(text, r"\r\x1b\[Kpop3ng fetch: bob: 100 delivered")
