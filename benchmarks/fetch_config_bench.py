"""``pop3ng fetch --config`` beside fetchmail and getmail6, into a Maildir and forwarded over LMTP.

Run by hand (not in CI), as root (Dovecot drops privileges), from the repository root::

    python3 benchmarks/fetch_config_bench.py --messages 2000 --size 10240 --repeat 3

One private Dovecot 2.3 serves POP3 (user ``bob``, the source) and LMTP on a UNIX socket (user
``carol``, the forwarding target). Every round refills bob's maildir with the same messages, warms
Dovecot's index (see :mod:`benchmarks.bench_fetch`), empties carol's, then times each tool from
process start to exit; it must deliver all N messages and leave the server empty.

* ``pop3ng-cli``: the single-account command line, as in bench_fetch (the reference);
* ``pop3ng-config``: the same account from a config file (``--config``), into a Maildir;
* ``pop3ng-lmtp``: config file, ``forward = "lmtp:SOCKET"`` into carol (each message confirmed
  with 250 and recorded before the next);
* ``fetchmail-lmtp``: fetchmail's own forwarding, ``lmtp`` to the same socket (STLS, verified);
* ``fetchmail``, ``getmail6``: into a Maildir as in bench_fetch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from typing import Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from benchmarks.bench_fetch import PASSWORD, USER, Bench, RunFailed, make_messages  # noqa: E402
from tests.integration.dovecot import start_dovecot  # noqa: E402
from tests.integration.support import make_certificates  # noqa: E402

TARGET = "carol"
#: LMTP looks users up without their domain (fetchmail sends RCPT TO:<carol@localhost>).
LMTP_CONFIG = """
protocols = pop3 lmtp
auth_username_format = %n
"""


class ConfigBench(Bench):
    def __init__(self, work: str, count: int, size: int) -> None:
        self.work = work
        self.certs = make_certificates(work)
        self.dovecot = start_dovecot(os.path.join(work, "dovecot"), {USER: PASSWORD, TARGET: "x"},
                                     certs=self.certs, extra_config=LMTP_CONFIG)
        self.socket = os.path.join(self.dovecot.base_dir, "lmtp")
        self.messages = make_messages(count, size)
        self.password_file = os.path.join(work, "password")
        with open(self.password_file, "w") as f:
            f.write(PASSWORD + "\n")
        os.chmod(self.password_file, 0o600)

    def config(self, dest: str, destination: str) -> List[str]:
        path = os.path.join(self.work, "fetch-%s.toml" % os.path.basename(dest))
        with open(path, "w") as f:
            f.write('[accounts.bob]\nurl = "pop3://%s@localhost:%d"\ncafile = "%s"\n'
                    'password_file = "%s"\nstate = "%s"\n%s\n'
                    % (USER, self.dovecot.port, self.certs["ca"], self.password_file,
                       os.path.join(self.work, "state-%s.json" % os.path.basename(dest)),
                       destination))
        return [sys.executable, "-m", "twisted_pop3ng.cli", "fetch", "-q", "--config", path]

    def ours_config(self, dest: str) -> List[str]:
        return self.config(dest, 'maildir = "%s"' % dest)

    def ours_lmtp(self, dest: str) -> List[str]:
        return self.config(dest, 'forward = "lmtp:%s"\nforward_to = "%s"' % (self.socket, TARGET))

    def fetchmail_lmtp(self, dest: str) -> List[str]:
        return self.fetchmail_command("fetchmailrc-lmtp", ' is "%s" here' % TARGET,
                                      'lmtp smtphost "%s"' % self.socket)

    def run_into(self, name: str, build: Callable[[str], List[str]], round_no: int,
                 forwarded: bool) -> float:
        target = self.dovecot.maildir(TARGET)
        for sub in ("new", "cur"):
            for entry in os.listdir(os.path.join(target, sub)):
                os.unlink(os.path.join(target, sub, entry))
        return self.run(name, build, round_no, target if forwarded else None)


TOOLS: Dict[str, tuple] = {
    "pop3ng-cli": ("ours", False), "pop3ng-config": ("ours_config", False),
    "pop3ng-lmtp": ("ours_lmtp", True), "fetchmail-lmtp": ("fetchmail_lmtp", True),
    "fetchmail": ("fetchmail", False), "getmail6": ("getmail", False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tools", default=",".join(TOOLS))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-fetch-config-")
    bench = ConfigBench(work, args.messages, args.size)
    results: Dict[str, List[float]] = {}
    try:
        for round_no in range(args.repeat):
            for name in args.tools.split(","):
                method, forwarded = TOOLS[name]
                results.setdefault(name, [])
                try:
                    rate = bench.run_into(name, getattr(bench, method), round_no, forwarded)
                except RunFailed as e:
                    print("round %d  %-15s FAILED %s" % (round_no + 1, name, e), flush=True)
                    continue
                results[name].append(rate)
                print("round %d  %-15s %8.1f msgs/s" % (round_no + 1, name, rate), flush=True)
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n%d x %d-byte messages from Dovecot 2.3 (STLS), median of %d rounds:"
          % (args.messages, args.size, args.repeat))
    print("| tool | msgs/s (median) | runs |")
    print("|---|---|---|")
    for name, rates in results.items():
        median = "%.1f" % statistics.median(rates) if rates else "failed"
        print("| %s | %s | %s |" % (name, median, ", ".join("%.0f" % r for r in rates)))


if __name__ == "__main__":
    main()
