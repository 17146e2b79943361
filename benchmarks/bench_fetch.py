"""Benchmark ``pop3ng fetch`` beside fetchmail and getmail6 on the same private Dovecot mailbox.

Run by hand (not in CI), as root (Dovecot drops privileges), from the repository root::

    python3 benchmarks/bench_fetch.py --messages 2000 --size 10240 --repeat 3

For every tool and round: the Dovecot maildir is refilled with the same N messages, a warm-up
session makes Dovecot index them (so no tool pays for that), then the tool runs from process start
to exit; it must deliver all N messages into a fresh Maildir and leave the server empty.

* ``pop3ng``: ``pop3ng fetch pop3://bob@localhost:PORT --cafile CA --password-file F --maildir DIR``
  (STLS, certificate verified; every message fsynced and renamed into new/ before any DELE).
* ``fetchmail``: STLS (``sslproto tls1.2+``, ``sslcertck``) with an MDA writing one file per message
  (``mktemp`` in tmp/, ``cat``, ``mv`` into new/; no fsync, which only flatters fetchmail).
* ``getmail6``: it has no STLS for POP3, so ``SimplePOP3SSLRetriever`` on Dovecot's POP3S port
  (also TLS), native Maildir destination.
"""

from __future__ import annotations

import argparse
import os
import poplib
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tests.integration.dovecot import give_to_mail_user, start_dovecot  # noqa: E402
from tests.integration.support import make_certificates  # noqa: E402
from twisted_pop3ng.mailbox.maildir import deliver  # noqa: E402

USER, PASSWORD = "bob", "bench password"


def make_messages(count: int, size: int) -> List[bytes]:
    import base64

    out = []
    for i in range(count):
        head = (b"From: bench@example.org\r\nTo: bob@example.org\r\nSubject: benchmark %d\r\n"
                b"Message-ID: <bench-%d@example.org>\r\n\r\n" % (i, i))
        raw = base64.b64encode(os.urandom(size))
        lines = b"\r\n".join(raw[j:j + 76] for j in range(0, len(raw), 76))
        out.append(head + lines[: max(0, size - len(head) - 2)] + b"\r\n")
    return out


def count_maildir(path: str) -> int:
    return sum(len(os.listdir(os.path.join(path, sub))) for sub in ("new", "cur")
               if os.path.isdir(os.path.join(path, sub)))


class RunFailed(Exception):
    """A tool did not deliver everything (reported, and the round goes on with the next tool)."""


class Bench:
    def __init__(self, work: str, count: int, size: int) -> None:
        self.work = work
        self.certs = make_certificates(work)
        self.dovecot = start_dovecot(os.path.join(work, "dovecot"), {USER: PASSWORD}, certs=self.certs)
        self.messages = make_messages(count, size)
        self.password_file = os.path.join(work, "password")
        with open(self.password_file, "w") as f:
            f.write(PASSWORD + "\n")
        os.chmod(self.password_file, 0o600)

    def refill(self) -> None:
        maildir = self.dovecot.maildir(USER)
        for sub in ("new", "cur", "tmp"):
            shutil.rmtree(os.path.join(maildir, sub), ignore_errors=True)
            os.makedirs(os.path.join(maildir, sub))
        for name in os.listdir(maildir):
            if name.startswith("dovecot"):
                path = os.path.join(maildir, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        for message in self.messages:
            deliver(maildir, message)
        give_to_mail_user(maildir)
        # Warm-up: Dovecot indexes the maildir and learns the sizes now, not on the tool's clock.
        context = ssl.create_default_context(cafile=self.certs["ca"])
        pop = poplib.POP3("localhost", self.dovecot.port)
        pop.stls(context)
        pop.user(USER)
        pop.pass_(PASSWORD)
        pop.list()
        pop.uidl()
        pop.quit()

    def ours(self, dest: str) -> List[str]:
        return [sys.executable, "-m", "twisted_pop3ng.cli", "fetch",
                "pop3://%s@localhost:%d" % (USER, self.dovecot.port), "--cafile", self.certs["ca"],
                "--password-file", self.password_file, "--maildir", dest, "--state",
                os.path.join(self.work, "state-%s.json" % os.path.basename(dest))]

    def fetchmail(self, dest: str) -> List[str]:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(dest, sub), exist_ok=True)
        mda = os.path.join(self.work, "mda-%s.sh" % os.path.basename(dest))
        with open(mda, "w") as f:
            f.write('#!/bin/sh\nf=$(mktemp -p "%s/tmp") && cat > "$f" && mv "$f" "%s/new/"\n'
                    % (dest, dest))
        os.chmod(mda, 0o755)
        return self.fetchmail_command("fetchmailrc", "", 'mda "%s"' % mda)

    def fetchmail_command(self, rc_name: str, local_user: str, delivery: str) -> List[str]:
        """fetchmail fetching everything from the Dovecot account over STLS into ``delivery``
        (its rc's ``mda``/``lmtp`` clause); ``local_user``: the rc's ``is … here`` clause."""
        rc = os.path.join(self.work, rc_name)
        with open(rc, "w") as f:
            f.write('set no syslog\nset no bouncemail\n'
                    'poll localhost protocol pop3 port %d\n'
                    '  user "%s" password "%s"%s\n'
                    '  sslproto tls1.2+ sslcertck sslcertfile "%s"\n'
                    '  fetchall nokeep\n'
                    '  %s\n' % (self.dovecot.port, USER, PASSWORD, local_user, self.certs["ca"],
                                 delivery))
        os.chmod(rc, 0o600)
        return ["fetchmail", "-f", rc, "--nodetach", "-s", "--pidfile",
                os.path.join(self.work, "fetchmail.pid")]

    def getmail(self, dest: str) -> List[str]:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(dest, sub), exist_ok=True)
        user = ""
        if os.geteuid() == 0:  # getmail refuses to deliver as root: deliver as nobody
            give_to_mail_user(dest)
            user = "user = nobody\n"
        gdir = os.path.join(self.work, "getmail-%s" % os.path.basename(dest))
        os.makedirs(gdir, exist_ok=True)
        with open(os.path.join(gdir, "getmailrc"), "w") as f:
            f.write("[retriever]\ntype = SimplePOP3SSLRetriever\nserver = localhost\nport = %d\n"
                    "username = %s\npassword = %s\nca_certs = %s\n\n"
                    "[destination]\ntype = Maildir\npath = %s/\n%s\n"
                    "[options]\ndelete = true\nread_all = true\nverbose = 0\n"
                    % (self.dovecot.tls_port, USER, PASSWORD, self.certs["ca"], dest, user))
        return ["getmail", "--getmaildir", gdir, "--rcfile", "getmailrc", "--quiet"]

    def run(self, name: str, build: Callable[[str], List[str]], round_no: int,
            delivered_in: Optional[str] = None) -> float:
        """Messages/s of one run of the tool ``build`` makes; ``delivered_in``: the maildir the
        tool delivers into when not the one it is given (a forward to the server's other user)."""
        self.refill()
        dest = os.path.join(self.work, "%s-%d" % (name, round_no))
        command = build(dest)
        env = dict(os.environ, PYTHONPATH=ROOT, FETCHMAILHOME=self.work)
        start = time.monotonic()
        result = subprocess.run(command, env=env, capture_output=True)
        elapsed = time.monotonic() - start
        delivered = count_maildir(delivered_in or dest)
        left = count_maildir(self.dovecot.maildir(USER))
        if result.returncode != 0 or delivered != len(self.messages) or left != 0:
            raise RunFailed("exit %d, delivered %d, left on server %d: %s" % (
                result.returncode, delivered, left, result.stderr.decode().strip()[-300:]))
        return len(self.messages) / elapsed

    def stop(self) -> None:
        self.dovecot.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tools", default="pop3ng,fetchmail,getmail6")
    args = parser.parse_args()
    tools: Dict[str, str] = {"pop3ng": "ours", "fetchmail": "fetchmail", "getmail6": "getmail"}
    work = tempfile.mkdtemp(prefix="bench-fetch-")
    bench = Bench(work, args.messages, args.size)
    results: Dict[str, List[float]] = {}
    try:
        for round_no in range(args.repeat):
            for name in args.tools.split(","):
                try:
                    rate = bench.run(name, getattr(bench, tools[name]), round_no)
                except RunFailed as e:
                    print("round %d  %-10s FAILED %s" % (round_no + 1, name, e), flush=True)
                    results.setdefault(name, [])
                    continue
                results.setdefault(name, []).append(rate)
                print("round %d  %-10s %8.1f msgs/s" % (round_no + 1, name, rate), flush=True)
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n%d x %d-byte messages from Dovecot %s, median of %d rounds:" % (
        args.messages, args.size, "2.3", args.repeat))
    print("| tool | msgs/s (median) | runs |")
    print("|---|---|---|")
    for name, rates in results.items():
        median = "%.1f" % statistics.median(rates) if rates else "failed"
        print("| %s | %s | %s |" % (name, median, ", ".join("%.0f" % r for r in rates)))
    if results.get("pop3ng") and results.get("fetchmail"):
        print("\npop3ng / fetchmail = %.2fx" % (statistics.median(results["pop3ng"]) /
                                                statistics.median(results["fetchmail"])))


if __name__ == "__main__":
    main()
