"""``pop3ng fetch`` end to end: the real command in a subprocess against Dovecot, our server and a
scripted server that drops the connection; real files; SIGKILL at every step, then a rerun."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import List, Tuple

from twisted_pop3ng import fetch

from .fetch_support import (PASSWORD, FetchTestCase, ScriptedPOP3Server, ScriptedServerTestCase,
                            delivered_form, make_message, maildir_messages, mbox_messages, with_uids)
from .support import Session, start_server


def _children(parent: int, name: str) -> List[int]:
    """PIDs of the processes called ``name`` whose parent is ``parent`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)
                comm = fields[0].split("(", 1)[1]
                ppid = int(fields[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent and comm == name:
                found.append(int(entry))
    return found


class DovecotFetchTests(FetchTestCase):
    def setUp(self):
        super().setUp()
        self.start_dovecot(["bob"])
        self.url = "pop3://bob@localhost:%d" % self.dovecot.port
        self.messages = self.mail["bob"]

    def args(self, *extra: str) -> List[str]:
        return ["--cafile", self.certs["ca"], "--password-file", self.password_file,
                "--maildir", self.out, *extra]

    def assert_exactly_once(self) -> None:
        got = maildir_messages(self.out)
        self.assertEqual(len(got), len(self.messages))
        self.assertEqual(sorted(got), sorted(self.messages))

    def test_300_messages_delivered_byte_exact_and_deleted(self):
        self.put(300, size=2000)
        code, err = self.fetch(self.url, *self.args())
        self.assertEqual((code, err), (0, ""))
        self.assert_exactly_once()
        self.assertEqual(self.on_server(), 0)
        self.assertEqual(os.listdir(os.path.join(self.out, "tmp")), [])
        code, err = self.fetch(self.url, *self.args())
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()

    def test_keep_over_several_runs(self):
        self.put(50)
        for _ in range(2):
            code, err = self.fetch(self.url, *self.args("--keep"))
            self.assertEqual(code, 0, err)
            self.assert_exactly_once()
            self.assertEqual(self.on_server(), 50)
        self.put(7)
        code, err = self.fetch(self.url, *self.args("--keep"))
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()
        self.assertEqual(self.on_server(), 57)
        # --keep-days 0: everything delivered is now old enough to go.
        code, err = self.fetch(self.url, *self.args("--keep", "--keep-days", "0"))
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()
        self.assertEqual(self.on_server(), 0)
        states = [name for name in os.listdir(os.path.join(self.state_home, "pop3ng"))
                  if name.endswith(".json")]
        self.assertEqual(len(states), 1)
        with open(os.path.join(self.state_home, "pop3ng", states[0])) as f:
            self.assertEqual(json.load(f)["delivered"], {})

    def test_keep_days_keeps_recent(self):
        self.put(5)
        code, err = self.fetch(self.url, *self.args("--keep", "--keep-days", "3"))
        self.assertEqual(code, 0, err)
        self.assertEqual(self.on_server(), 5)
        self.assert_exactly_once()

    def test_killed_between_delivery_and_state_write(self):
        """Batches of 10; SIGKILL right after the 3rd batch is durable, before it is recorded."""
        self.put(60)
        code, _ = self.fetch(self.url, *self.args("--batch", "10"),
                             kill_at="delivered:3")
        self.assertEqual(code, -signal.SIGKILL)
        self.assertEqual(len(maildir_messages(self.out)), 30)
        self.assertEqual(self.on_server(), 60)
        code, err = self.fetch(self.url, *self.args("--batch", "10"))
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()
        self.assertEqual(self.on_server(), 0)

    def test_killed_at_each_step_then_rerun(self):
        for step, keep in (("delivered:1", True), ("before-dele:1", False),
                           ("before-quit:1", False), ("after-quit:1", False)):
            self.put(20)
            extra = ("--keep",) if keep else ()
            code, _ = self.fetch(self.url, *self.args("--batch", "7", *extra),
                                 kill_at=step)
            self.assertEqual(code, -signal.SIGKILL, step)
            code, err = self.fetch(self.url, *self.args(*extra))
            self.assertEqual(code, 0, err)
            self.assert_exactly_once()
        code, err = self.fetch(self.url, *self.args())
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()
        self.assertEqual(self.on_server(), 0)

    def test_sigkill_mid_run_then_rerun(self):
        """Real SIGKILLs at arbitrary moments of a run; the reruns end with each message once."""
        self.put(600, size=3000)
        kills = 0
        for threshold in (40, 200, 420):
            process = subprocess.Popen(self.command(self.url, *self.args("--batch", "16")),
                                       env=self.env(), stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline:
                if len(os.listdir(os.path.join(self.out, "new"))) >= threshold \
                        if os.path.isdir(os.path.join(self.out, "new")) else False:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
                    break
                time.sleep(0.001)
            process.wait()
            process.stderr.close()
        self.assertGreaterEqual(kills, 1)
        code, err = self.fetch(self.url, *self.args())
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()
        self.assertEqual(self.on_server(), 0)

    def test_hashed_password_on_the_server(self):
        """Dovecot offers SCRAM but holds a SHA512-CRYPT hash: SCRAM fails; the fallback to PLAIN
        over TLS is opt-in (finding F18: it hands the password to the server), so without
        --allow-plain-fallback the run fails and fetches nothing, and with it the run works."""
        hashed = subprocess.check_output(["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", PASSWORD])
        with open(os.path.join(self.dovecot.root, "users"), "wb") as f:
            f.write(b"bob:" + hashed.strip() + b"\n")
        self.put(3)
        code, err = self.fetch(self.url, *self.args())
        self.assertEqual(code, fetch.EXIT_AUTH, err)
        self.assertIn("AUTH SCRAM-SHA-256", err)
        self.assertIn("--allow-plain-fallback", err)
        self.assertEqual(self.on_server(), 3)
        self.assertEqual(maildir_messages(self.out), [])
        code, err = self.fetch(self.url, *self.args("--allow-plain-fallback"))
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()
        self.assertEqual(self.on_server(), 0)

    def test_dovecot_killed_mid_retr_then_rerun(self):
        """SIGKILL Dovecot's pop3 process while messages stream; nothing is lost or doubled."""
        self.put(40, size=400000)
        process = subprocess.Popen(self.command(self.url, *self.args("--batch", "4", "--pipeline", "2")),
                                   env=self.env(), stderr=subprocess.PIPE)
        killed = False
        deadline = time.monotonic() + 60
        new = os.path.join(self.out, "new")
        while process.poll() is None and time.monotonic() < deadline:
            if os.path.isdir(new) and len(os.listdir(new)) >= 8:
                for pid in _children(self.dovecot.pid, "pop3"):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue  # listed, then gone (a login process that just finished)
                    killed = True
                if killed:
                    break
            time.sleep(0.002)
        _, err = process.communicate(timeout=60)
        self.assertTrue(killed)
        self.assertEqual(process.returncode, fetch.EXIT_CONNECTION, err)
        self.assertEqual(self.on_server(), 40)
        self.assertEqual(os.listdir(os.path.join(self.out, "tmp")), [])
        delivered = maildir_messages(self.out)
        self.assertGreaterEqual(len(delivered), 8)
        self.assertLess(len(delivered), 40)
        code, err = self.fetch(self.url, *self.args())
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()
        self.assertEqual(self.on_server(), 0)

    def test_exit_codes(self):
        self.put(2)
        with open(self.password_file, "w") as f:
            f.write("wrong\n")
        code, err = self.fetch(self.url, *self.args())
        self.assertEqual(code, fetch.EXIT_AUTH, err)
        self.assertIn("authentication failed", err)
        other = os.path.join(self.root, "other-ca.pem")
        import trustme
        trustme.CA().cert_pem.write_to_path(other)
        code, err = self.fetch(self.url, "--cafile", other, "--maildir", self.out,
                               env={"POP3NG_PASSWORD": PASSWORD})
        self.assertEqual(code, fetch.EXIT_TLS, err)
        self.assertIn("not trusted", err)
        code, err = self.fetch(self.url, "--cafile", self.certs["ca"], "--maildir", self.out)
        self.assertEqual(code, fetch.EXIT_USAGE, err)
        self.assertIn("POP3NG_PASSWORD", err)
        # There is no way to put the password on the command line, and the refusal does not
        # repeat it (argparse once read --password as --password-file and printed the "path").
        for form in (["--password", PASSWORD], ["--password=" + PASSWORD]):
            code, err = self.fetch(self.url, *form, "--maildir", self.out)
            self.assertEqual(code, fetch.EXIT_USAGE, err)
            self.assertIn("--password-file", err)
            self.assertNotIn(PASSWORD, err)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        code, err = self.fetch("pop3://bob@localhost:%d" % port, *self.args())
        self.assertEqual(code, fetch.EXIT_CONNECTION, err)
        # The password from the environment works; nothing was fetched by the failed runs.
        code, err = self.fetch(self.url, "--cafile", self.certs["ca"], "--maildir", self.out,
                               env={"POP3NG_PASSWORD": PASSWORD})
        self.assertEqual(code, 0, err)
        self.assert_exactly_once()


class OurServerFetchTests(FetchTestCase):
    def setUp(self):
        super().setUp()
        self.server = start_server(os.path.join(self.root, "server"), {"alice": PASSWORD})
        self.addCleanup(self.server.stop)
        self.url = "pop3s://alice@localhost:%d" % self.server.tls_port
        self.messages = [make_message(i) for i in range(12)]
        self.messages.append(b"Subject: no final newline\r\n\r\nFrom here\r\n>From there")
        for message in self.messages:
            self.server.deliver("alice", message)

    def base(self, *extra: str) -> List[str]:
        return ["--cafile", self.server.certs["ca"], "--password-file", self.password_file, *extra]

    def mbox_killed_at(self, step: str, cut: int = 0) -> str:
        """Fetch into an mbox in batches of 5, SIGKILLed at ``step``; then ``cut`` octets taken off
        its end, as if the kill had come in the middle of the write. Returns the mbox's path."""
        path = os.path.join(self.root, "inbox.mbox")
        code, _ = self.fetch(self.url, *self.base("--mbox", path, "--batch", "5"), kill_at=step)
        self.assertEqual(code, -signal.SIGKILL)
        if cut:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) - cut)
        return path

    def test_mbox(self):
        path = os.path.join(self.root, "inbox.mbox")
        code, err = self.fetch(self.url, *self.base("--mbox", path))
        self.assertEqual(code, 0, err)
        # mboxrd: each entry ends with a blank line; ">From " quoting is undone by one ">".
        self.assertEqual(sorted(mbox_messages(path)), sorted(delivered_form(m) for m in self.messages))
        with open(path, "rb") as f:
            self.assertIn(b"\n>From the start\n", f.read())
        self.assertEqual(len(maildir_messages(self.server.maildir("alice"))), 0)

    def test_mbox_killed_after_append_before_state_write(self):
        path = self.mbox_killed_at("delivered:2")
        code, err = self.fetch(self.url, *self.base("--mbox", path, "--batch", "5"))
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(mbox_messages(path)), sorted(delivered_form(m) for m in self.messages))
        self.assertEqual(len(maildir_messages(self.server.maildir("alice"))), 0)

    def test_mbox_partial_append_is_cut_off_and_redone(self):
        path = self.mbox_killed_at("delivered:1", cut=100)
        code, err = self.fetch(self.url, *self.base("--mbox", path))
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(mbox_messages(path)), sorted(delivered_form(m) for m in self.messages))

    def test_mbox_recovery_keeps_mail_another_program_appended(self):
        """Finding F11: fetch is killed with an append partly written, procmail appends a message,
        fetch runs again. Before the fix the rerun cut the file at the recorded offset and the
        other message was gone; now the foreign bytes stay, the user is told, nothing is lost."""
        path = self.mbox_killed_at("delivered:1", cut=100)
        theirs = b"From procmail@example.org Mon Jan  1 00:00:00 2024\nSubject: theirs\n\nkeep me\n\n"
        with open(path, "ab") as f:
            f.write(theirs)
        code, err = self.fetch(self.url, *self.base("--mbox", path))
        self.assertEqual(code, 0, err)
        self.assertIn("warning:", err)
        self.assertIn("left as it is", err)
        with open(path, "rb") as f:
            self.assertIn(theirs, f.read())
        got = set(mbox_messages(path))
        for message in self.messages:  # every message whole (the partial copy stays too)
            self.assertIn(delivered_form(message), got)
        self.assertEqual(len(maildir_messages(self.server.maildir("alice"))), 0)

    def test_50mb_message_streams_in_bounded_memory(self):
        """The fetcher's peak RSS grows by far less than the message (twisted.mail: 111 MB for 50)."""
        big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 50000
        self.server.deliver("alice", big)
        wrapper = ("import sys; from twisted_pop3ng.cli import main; code = main(sys.argv[1:]); "
                   "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0], "
                   "file=sys.stderr); sys.exit(code)")
        peaks = []
        for _ in range(2):  # with the big message, then a run with nothing to fetch
            result = subprocess.run([sys.executable, "-c", wrapper, "fetch", self.url,
                                     *self.base("--maildir", self.out)],
                                    env=self.env(), capture_output=True, timeout=300)
            err = result.stderr.decode()
            self.assertEqual(result.returncode, 0, err)
            peaks.append(int(re.search(r"VmHWM:\s+(\d+) kB", err).group(1)))
        self.assertLess(peaks[0] - peaks[1], 16 * 1024, peaks)
        self.assertIn(delivered_form(big), maildir_messages(self.out))

    def test_mda(self):
        out = os.path.join(self.root, "mda-out")
        os.makedirs(out)
        script = 'cat > "%s/$POP3NG_UIDL"' % out
        code, err = self.fetch(self.url, *self.base("--mda", script))
        self.assertEqual(code, 0, err)
        got = sorted(open(os.path.join(out, n), "rb").read() for n in os.listdir(out))
        want = sorted(delivered_form(m) for m in self.messages)
        self.assertEqual(got, want)

    def test_failing_mda_deletes_nothing(self):
        code, err = self.fetch(self.url, *self.base("--mda", "exit 75"))
        self.assertEqual(code, fetch.EXIT_DELIVERY, err)
        self.assertIn("status 75", err)
        self.assertEqual(len(maildir_messages(self.server.maildir("alice"))), len(self.messages))

    def test_oauth_token_file(self):
        from twisted_pop3ng.auth.oauth import issue_token

        root = os.path.join(self.root, "oauth-server")
        os.makedirs(root)
        key = os.path.join(root, "key")
        with open(key, "wb") as f:
            f.write(b"s" * 32)
        server = start_server(root, {"carol": "pw"}, extra_args=["--oauth-hmac-key", key])
        self.addCleanup(server.stop)
        server.deliver("carol", self.messages[0])
        token_file = os.path.join(self.root, "token")
        with open(token_file, "w") as f:
            f.write(issue_token(b"s" * 32, "carol") + "\n")
        code, err = self.fetch("pop3s://carol@localhost:%d" % server.tls_port, "--cafile",
                               server.certs["ca"], "--token-file", token_file, "--maildir", self.out)
        self.assertEqual(code, 0, err)
        self.assertEqual(maildir_messages(self.out), [delivered_form(self.messages[0])])

    def test_mailbox_in_use_means_try_later(self):
        session = Session(self.server.connect(tls=True))
        self.addCleanup(session.close)
        self.assertTrue(session.login(b"alice", PASSWORD.encode()).startswith(b"+OK"))
        code, err = self.fetch(self.url, *self.base("--maildir", self.out))
        self.assertEqual(code, fetch.EXIT_TRY_LATER, err)
        self.assertIn("IN-USE", err)
        session.command(b"QUIT")
        code, err = self.fetch(self.url, *self.base("--maildir", self.out))
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(maildir_messages(self.out)),
                         sorted(delivered_form(m) for m in self.messages))


class AccountLockTests(FetchTestCase):
    def test_second_run_for_the_same_account_waits_its_turn(self):
        import fcntl

        state = os.path.join(self.root, "state.json")
        with open(state + ".lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            code, err = self.fetch("pop3://bob@localhost:1", "--state", state, "--maildir", self.out,
                                   env={"POP3NG_PASSWORD": "x"})
        self.assertEqual(code, fetch.EXIT_TRY_LATER, err)
        self.assertIn("another pop3ng fetch is running", err)


class ScriptedServerTests(ScriptedServerTestCase):
    def test_a_refused_message_does_not_hold_back_the_others(self):
        messages = [make_message(i) for i in range(5)]
        server = self.serve(ScriptedPOP3Server(with_uids(messages), refuse={b"uid-2"}))
        for _ in range(2):
            code, err = self.fetch_from(server)
            self.assertEqual(code, fetch.EXIT_ERROR, err)
            self.assertIn("uid-2", err)
            self.assertIn("Message vanished", err)
        self.assertEqual(sorted(maildir_messages(self.out)),
                         sorted(delivered_form(m) for i, m in enumerate(messages) if i != 2))
        self.assertEqual([uid for uid, _ in server.messages], [b"uid-2"])

    def test_a_new_message_reusing_a_uidl_is_fetched(self):
        """Servers that number messages afresh once the mailbox is empty give a new message the
        UIDL of one fetched and deleted before. The Maildir file of the earlier one (its name made
        from the UIDL) was once taken for the new one's: deleted on the server, never delivered."""
        first = make_message(0)
        second = make_message(1) + b"longer\r\n"
        third = second.replace(b"longer", b"LONGER")  # the same size as the second
        server = self.serve(ScriptedPOP3Server([(b"1", first)]))
        for message in (first, second, third):
            server.messages = [(b"1", message)]
            code, err = self.fetch_from(server)
            self.assertEqual(code, 0, err)
            self.assertEqual(server.messages, [])
        self.assertEqual(sorted(maildir_messages(self.out)),
                         sorted(delivered_form(m) for m in (first, second, third)))

    def test_with_keep_a_uidl_reused_after_the_server_dropped_the_message(self):
        first, second = make_message(0), make_message(1)
        server = self.serve(ScriptedPOP3Server([(b"1", first)]))
        self.assertEqual(self.fetch_from(server, "--keep")[0], 0)
        server.messages = []  # another client deleted it; the state forgets the UIDL
        self.assertEqual(self.fetch_from(server, "--keep")[0], 0)
        server.messages = [(b"1", second)]
        code, err = self.fetch_from(server, "--keep")
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(maildir_messages(self.out)),
                         sorted(delivered_form(m) for m in (first, second)))

    def test_quit_closed_without_an_answer_is_not_a_clean_end(self):
        """A server that closes instead of answering QUIT may not have deleted anything: the run
        fails (exit 5) and keeps what it recorded, so the next run deletes without fetching
        again. It once exited 0 and forgot the messages: each run delivered them all again."""
        messages = [make_message(i) for i in range(3)]
        server = self.serve(ScriptedPOP3Server(with_uids(messages), quit_unanswered=True))
        mbox = self.out + ".mbox"

        def run() -> Tuple[int, str]:
            return self.fetch(server.url, "--allow-plaintext", "--mbox", mbox,
                              env={"POP3NG_PASSWORD": "x"})

        code, err = run()
        self.assertEqual(code, fetch.EXIT_CONNECTION, err)
        self.assertIn("without answering QUIT", err)
        self.assertEqual(len(server.messages), 3)  # nothing was deleted
        server.quit_unanswered = False
        code, err = run()
        self.assertEqual(code, 0, err)
        self.assertEqual(server.messages, [])
        self.assertEqual(sorted(mbox_messages(mbox)),
                         sorted(delivered_form(m) for m in messages))  # once each
        self.assertEqual(len(server.retrieved), 3)

    def test_drop_mid_retr_then_rerun(self):
        messages = [make_message(i, size=200000) for i in range(6)]
        server = self.serve(ScriptedPOP3Server(with_uids(messages), drop_at=4))
        code, err = self.fetch_from(server, "--batch", "2")
        self.assertEqual(code, fetch.EXIT_CONNECTION, err)
        self.assertIn("connection", err)
        got = maildir_messages(self.out)
        self.assertEqual(sorted(got), sorted(delivered_form(m) for m in messages[:3]))
        self.assertEqual(server.deleted, [])
        self.assertEqual(os.listdir(os.path.join(self.out, "tmp")), [])  # the partial one is gone
        code, err = self.fetch_from(server, "--batch", "2")
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(maildir_messages(self.out)), sorted(delivered_form(m) for m in messages))
        self.assertEqual(sorted(server.deleted), sorted(b"uid-%d" % i for i in range(6)))
        self.assertEqual(server.messages, [])

    def test_no_stls_when_tls_is_required(self):
        """pop3:// without --allow-plaintext: the server offers no STLS, so the fetcher stops
        before sending a password (exit code EXIT_TLS)."""
        server = self.serve(ScriptedPOP3Server(with_uids([make_message(0)])))
        code, err = self.fetch(server.url, "--maildir", self.out, env={"POP3NG_PASSWORD": "x"})
        self.assertEqual(code, fetch.EXIT_TLS, err)
        self.assertIn("does not offer STLS", err)
        self.assertEqual(server.logins, 0)
        self.assertEqual(maildir_messages(self.out), [])

    def test_a_message_without_a_uidl_is_reported_not_skipped_quietly(self):
        messages = [make_message(i) for i in range(3)]
        server = self.serve(ScriptedPOP3Server(with_uids(messages),
                                               replies={b"UIDL": b"+OK\r\n1 uid-0\r\n3 uid-2\r\n.\r\n"}))
        code, err = self.fetch_from(server)
        self.assertEqual(code, fetch.EXIT_ERROR, err)
        self.assertIn("message 2: the server lists it but gives it no UIDL", err)
        self.assertEqual(sorted(maildir_messages(self.out)),
                         sorted(delivered_form(m) for m in (messages[0], messages[2])))
        self.assertEqual([uid for uid, _ in server.messages], [b"uid-1"])

    def test_server_without_uidl(self):
        server = self.serve(ScriptedPOP3Server(with_uids([make_message(0)]), no_uidl=True))
        code, err = self.fetch_from(server)
        self.assertEqual(code, fetch.EXIT_ERROR, err)
        self.assertIn("does not support UIDL", err)
        self.assertEqual(maildir_messages(self.out), [])
        self.assertEqual(server.deleted, [])
