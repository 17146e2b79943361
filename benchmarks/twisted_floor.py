"""The floor of the session-rate test: a Twisted server that does nothing but answer.

    python3 benchmarks/twisted_floor.py [--seconds 4] [--clients 4] [--lean]

A ``LineReceiver`` on Twisted's default reactor sends canned replies to USER / PASS / STAT / UIDL /
QUIT (the benchmark's session) and closes after QUIT: no authentication, no maildrop, no lock.
Whatever any Twisted-based POP3 server does per session comes on top of this, so its rate bounds
what ``twistd pop3ng`` (and ``twisted.mail``) can reach with the same client on the same machine.

``--lean`` does around the canned replies what ``twistd pop3ng`` does around its protocol on plain
TCP: replies go straight to the socket, QUIT closes at once, and the port is ``server_port.LeanPort``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import client  # noqa: E402

UIDL = b"".join(b"%d 17000000%02d.M%06dP4242.bench\r\n" % (i, i, i) for i in range(1, 11))


def serve(lean: bool) -> None:
    from twisted.internet import error, protocol, reactor
    from twisted.protocols.basic import LineReceiver
    from twisted.python.failure import Failure

    from twisted_pop3ng.fastpath.port import LeanTCPReactor

    done = Failure(error.ConnectionDone())

    class Canned(LineReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)
            self.send(b"+OK ready\r\n")

        def send(self, data: bytes) -> None:
            if lean:  # straight to the socket, as twistd pop3ng does on plain TCP
                self.transport.socket.send(data)
            else:
                self.transport.write(data)

        def lineReceived(self, line: bytes) -> None:
            verb = line[:4].upper()
            if verb == b"UIDL":
                self.send(b"+OK\r\n" + UIDL + b".\r\n")
            elif verb == b"STAT":
                self.send(b"+OK 10 40960\r\n")
            elif verb == b"QUIT":
                self.send(b"+OK bye\r\n")
                if lean:  # closed at once, as twistd pop3ng does
                    self.transport.connectionLost(done)
                else:
                    self.transport.loseConnection()
            else:
                self.send(b"+OK\r\n")

    factory = protocol.Factory.forProtocol(Canned)
    listener = LeanTCPReactor(reactor) if lean else reactor
    port = listener.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


def _loop(job: tuple) -> tuple:
    port, seconds = job
    return client.session_loop(port, "user", "password", seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--lean", action="store_true",
                        help="send straight to the socket, close at once, accept with LeanPort "
                             "(what twistd pop3ng does around its protocol)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.lean)
        return 0
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"]
                              + (["--lean"] if args.lean else []), stdout=subprocess.PIPE)
    try:
        port = int(server.stdout.readline())
        with multiprocessing.get_context("fork").Pool(args.clients) as pool:
            start = time.perf_counter()
            results = pool.map(_loop, [(port, args.seconds)] * args.clients)
            elapsed = time.perf_counter() - start
    finally:
        server.kill()
        server.wait()
    print("twisted floor%s: %.0f sessions/s (%d failed)"
          % (" (lean)" if args.lean else "", sum(r[0] for r in results) / elapsed,
                                                         sum(r[1] for r in results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
