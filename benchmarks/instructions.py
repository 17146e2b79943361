"""User-space instructions per session, counted by callgrind: a repeatable measure on a noisy host.

    python3 benchmarks/instructions.py [--what sessions|bulk] [--count N] [-- EXTRA POP3NG ARGS]

Starts ``twistd -n pop3ng`` under ``valgrind --tool=callgrind --instr-atstart=no`` on the
benchmark's generated mail (``benchmarks.peers``), warms it up, switches instrumentation on with
``callgrind_control -i on``, runs N sessions one after another with the benchmark's own client
(``sessions``: connect / USER / PASS / STAT / UIDL / QUIT; ``bulk``: 2,000 pipelined RETRs of
10 KB), switches it off and prints the instructions per session. The count is the same from run
to run within ~1 %, whatever else the machine does, so a change of a few per cent shows (seconds
do not, here). The kernel's share is not counted: look at ``strace -c`` and ``perf`` for that.
Needs Debian's ``valgrind``.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import client, peers  # noqa: E402
from benchmarks.peers import PASSWORD, DataSpec  # noqa: E402
from tests.integration.support import _PORT_RE, TWISTD_MAIN, stop_process, write_users  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--what", choices=["sessions", "bulk"], default="sessions")
    parser.add_argument("--count", type=int, default=0, help="sessions (default 300, bulk 3)")
    parser.add_argument("--root", default="/tmp/pop3ng-bench", help="the benchmark's work directory")
    parser.add_argument("extra", nargs="*", help="more twistd pop3ng arguments (after --)")
    args = parser.parse_args()
    count = args.count or (300 if args.what == "sessions" else 3)
    template = peers.prepare_template(os.path.join(args.root, "template"), DataSpec(), print)
    work = tempfile.mkdtemp(prefix="pop3ng-instructions-")
    try:
        user = "s0" if args.what == "sessions" else "bulk"
        shutil.copytree(os.path.join(template, user), os.path.join(work, "mail", user))
        users = write_users(os.path.join(work, "users"), {user: PASSWORD})
        out = os.path.join(work, "callgrind.out")
        log_path = os.path.join(work, "twistd.log")
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=" + out,
                   sys.executable, "-c", TWISTD_MAIN, "-n", "--pidfile=", "pop3ng", "--auth",
                   "passwd-file:" + users, "--mailbox", "maildir:" + work + "/mail/{user}/Maildir",
                   "--listen", "tcp:0:interface=127.0.0.1", "--max-connections-per-address", "0"]
        with open(log_path, "wb") as log:
            server = subprocess.Popen(command + args.extra, stdout=log, stderr=subprocess.STDOUT, cwd=work,
                                      env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE)))
        try:
            port = None
            deadline = time.monotonic() + 120
            while port is None and time.monotonic() < deadline and server.poll() is None:
                with open(log_path, "rb") as f:
                    found = _PORT_RE.findall(f.read())
                port = int(found[0][1]) if found else None
                time.sleep(0.1)
            if port is None:
                raise SystemExit("the server did not start; see " + log_path)
            target = client.Target("ours", port, None, None)
            login = user.encode() + b"\0" + PASSWORD.encode()

            def one() -> None:
                if args.what == "sessions":
                    client._session(port, login)
                else:
                    client.bulk(target, user, PASSWORD, DataSpec().bulk_count)

            for _ in range(30 if args.what == "sessions" else 2):
                one()
            control = ["callgrind_control", "-i"]
            subprocess.run(control + ["on", str(server.pid)], check=True, stdout=subprocess.DEVNULL)
            for _ in range(count):
                one()
            subprocess.run(control + ["off", str(server.pid)], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            time.sleep(1)
        finally:
            stop_process(server)
        total = 0
        for name in glob.glob(out + "*"):
            with open(name) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        total = max(total, int(line.split()[1]))
        print("%s: %.0f user-space instructions per %s" % (
            args.what, total / count, "session" if args.what == "sessions" else "bulk session"))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
