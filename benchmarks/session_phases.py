"""Where a short session's server time goes, step by step, measured in one process.

    python3 benchmarks/session_phases.py [--sessions N] [--rounds R] [--profile STEP]

Builds the server factory exactly as ``twistd pop3ng`` does (``service.build.make_factory`` on the
lean reactor, passwd-file and maildir as the benchmark's), then runs the benchmark's session --
accept, USER, PASS, STAT, UIDL, QUIT -- on real loopback TCP connections: each connection is
accepted, given to ``LeanServer`` and its protocol, and each command line is handed to the
protocol's ``dataReceived`` directly, the replies going to the socket as in the server. No client
process, no scheduler, no reactor turn: each step's wall time is the server's own cost of it
(Python and system calls), with a spread of a few per cent from run to run, where the session rate
of ``benchmarks.run`` moves by more than that. Prints the median of each step over the sessions,
per round; ``--profile PASS`` (or ``ACCEPT``, ``USER``, ...) prints cProfile's view of that step.

The kernel work that waking a waiting client costs (about half of each reply's ``send`` in the real
benchmark) is not in these figures: the "client" here is the same process.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import socket
import statistics
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

STEPS = ("ACCEPT", "USER", "PASS", "STAT", "UIDL", "QUIT")


class _Port:
    """What a ``LeanServer`` asks of its listening port."""

    _lean_no_delay = True
    _realPortNumber = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=3000, help="sessions per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=STEPS, help="cProfile one step instead of timing")
    parser.add_argument("--root", default="/tmp/pop3ng-bench", help="the benchmark's work directory")
    args = parser.parse_args()

    from twisted_pop3ng.fastpath import reactor as lean_reactor

    reactor = lean_reactor.install()
    from twisted.internet import address

    from benchmarks import peers
    from benchmarks.peers import PASSWORD, DataSpec
    from tests.integration.support import write_users
    from twisted_pop3ng.fastpath.port import LeanServer
    from twisted_pop3ng.service import build
    from twisted_pop3ng.service.options import Options

    template = peers.prepare_template(os.path.join(args.root, "template"), DataSpec(), print)
    work = tempfile.mkdtemp(prefix="pop3ng-phases-")
    try:
        shutil.copytree(os.path.join(template, "s0"), os.path.join(work, "mail", "s0"))
        options = Options()
        options.parseOptions([
            "--auth", "passwd-file:" + write_users(os.path.join(work, "users"), {"s0": PASSWORD}),
            "--mailbox", "maildir:" + work + "/mail/{user}/Maildir",
            "--max-connections-per-address", "0", "--listen", "tcp:0:interface=127.0.0.1"])
        factory = build.make_factory(options)
        factory.doStart()
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(1024)
        listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # (as LeanPort's)
        lines = [b"USER s0\r\n", b"PASS " + PASSWORD.encode() + b"\r\n", b"STAT\r\n", b"UIDL\r\n",
                 b"QUIT\r\n"]
        port = _Port()
        clock = time.perf_counter_ns
        profile = cProfile.Profile()
        times: Dict[str, List[int]] = {step: [] for step in STEPS}

        def session(number: int) -> bytes:
            client = socket.create_connection(listening.getsockname())
            try:
                started = clock()
                if args.profile == "ACCEPT":
                    profile.enable()
                sock, peer = listening.accept()
                protocol = factory.buildProtocol(address.IPv4Address("TCP", *peer))
                protocol.makeConnection(LeanServer(sock, protocol, peer, port, number, reactor))
                if args.profile == "ACCEPT":
                    profile.disable()
                times["ACCEPT"].append(clock() - started)
                for step, line in zip(STEPS[1:], lines):
                    if args.profile == step:
                        profile.enable()
                    started = clock()
                    protocol.dataReceived(line)
                    times[step].append(clock() - started)
                    if args.profile == step:
                        profile.disable()
                return client.recv(1 << 16)
            finally:
                client.close()

        first = session(0)
        if not first.startswith(b"+OK") or b"-ERR" in first:
            raise SystemExit("the session failed: %r" % first[:200])
        for number in range(300):  # warm: the snapshot cached, the allocator settled
            session(number)
        if args.profile:
            profile = cProfile.Profile()
            for number in range(args.sessions):
                session(number)
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            return 0
        print("median microseconds per step, %d sessions a round" % args.sessions)
        print("round  " + "  ".join("%7s" % step for step in STEPS) + "    total")
        for round_ in range(args.rounds):
            for values in times.values():
                values.clear()
            for number in range(args.sessions):
                session(number)
            medians = [statistics.median(times[step]) / 1000 for step in STEPS]
            print("%5d  " % (round_ + 1) + "  ".join("%7.1f" % m for m in medians)
                  + "  %7.1f" % sum(medians))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
