"""LMTP delivery into maildir, side by side: ``twistd pop3ng --lmtp-listen`` vs Dovecot's LMTP.

Run by hand (as root: Dovecot drops privileges), e.g.::

    python3 benchmarks/lmtp_bench.py --messages 2000 --size 10240 --connections 8 --rounds 5

Both servers deliver into maildirs on the same filesystem and fsync every message before they
answer 250: ours fsyncs the file and ``new/`` (``MaildirStore.deliver``); Dovecot runs with
``mail_fsync = always`` (its default, ``optimized``, fsyncs a saved mail too; ``always`` also the
directories, as we do). Both add their trace headers (Return-Path, Delivered-To, Received). The
client is the same for both: ``--connections`` parallel connections, each sending its share of the
messages as pipelined transactions (MAIL, RCPT, DATA in one write, then the body), one recipient
per message, recipients spread over ``--users`` users. The rounds alternate between the servers;
each round starts each server afresh over new, empty maildirs (no index or cache of an earlier
round); the figure is messages per second over the whole batch.

``--postgresql`` adds our server over ``--mailbox postgresql:`` (a private cluster with
``fsync=on``, :class:`twisted_pop3ng.testing.postgresql.TestCluster`, a fresh database each round).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.peers import make_message  # noqa: E402
from twisted_pop3ng.delivery.body import encode_data  # noqa: E402

PASSWORD = "bench password"


# -- the client -----------------------------------------------------------------------------------

async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One (possibly multi-line) reply; its last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return line


async def _connection(port: int, jobs: List[Tuple[str, bytes]]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _reply(reader)
    writer.write(b"LHLO bench.client\r\n")
    await _reply(reader)
    delivered = 0
    for recipient, data in jobs:
        writer.write(b"MAIL FROM:<bench@example.org>\r\nRCPT TO:<%s>\r\nDATA\r\n" % recipient.encode())
        for expected in (b"250", b"250", b"354"):
            line = await _reply(reader)
            if not line.startswith(expected):
                raise RuntimeError("expected %r, got %r" % (expected, line))
        writer.write(data)
        line = await _reply(reader)
        if not line.startswith(b"250"):
            raise RuntimeError("delivery failed: %r" % (line,))
        delivered += 1
    writer.write(b"QUIT\r\n")
    await _reply(reader)
    writer.close()
    return delivered


def deliver_batch(port: int, messages: List[bytes], users: List[str], connections: int) -> float:
    """Deliver every message once over ``connections`` connections; messages per second."""
    jobs = [(users[i % len(users)], data) for i, data in enumerate(messages)]
    shares = [jobs[i::connections] for i in range(connections)]

    async def run() -> int:
        counts = await asyncio.gather(*(_connection(port, share) for share in shares))
        return sum(counts)

    started = time.perf_counter()
    delivered = asyncio.run(run())
    elapsed = time.perf_counter() - started
    assert delivered == len(messages)
    return delivered / elapsed


# -- the servers ----------------------------------------------------------------------------------

def start_ours(root: str, users: Dict[str, str], mailbox: str = "") -> Tuple[int, Callable[[], None]]:
    from tests.integration.test_lmtp import start_lmtp_server

    extra = ["--mailbox", mailbox] if mailbox else []
    server, port = start_lmtp_server(root, extra, users=users)
    return port, server.stop


DOVECOT_LMTP = """
protocols = pop3 lmtp
mail_fsync = always
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %d
  }
  process_limit = 100
}
"""


def start_dovecot(root: str, users: Dict[str, str]) -> Tuple[int, Callable[[], None]]:
    from tests.integration.dovecot import free_port, start_dovecot as start

    port = free_port()
    dovecot = start(root, users, extra_config=DOVECOT_LMTP % port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            asyncio.run(_probe(port))
            return port, dovecot.stop
        except OSError:
            time.sleep(0.1)
    dovecot.stop()
    raise RuntimeError("Dovecot's LMTP did not answer:\n" + dovecot.log()[-3000:])


async def _probe(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _reply(reader)
    writer.close()


def count_delivered(root: str) -> int:
    mail = os.path.join(root, "mail")
    return sum(len(os.listdir(os.path.join(mail, user, "Maildir", "new"))) for user in os.listdir(mail))


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgresql", action="store_true", help="also ours into PostgreSQL")
    args = parser.parse_args(argv)
    users = {"user%02d" % i: PASSWORD for i in range(args.users)}
    names = sorted(users)
    messages = [encode_data(make_message(args.size, i)) for i in range(args.messages)]
    base = tempfile.mkdtemp(prefix="lmtp-bench-", dir=os.environ.get("BENCH_DIR"))
    peers: Dict[str, Tuple[str, Callable[..., Tuple[int, Callable[[], None]]]]] = {
        "ours (maildir)": (os.path.join(base, "ours"), start_ours),
        "dovecot (maildir)": (os.path.join(base, "dovecot"), start_dovecot),
    }
    cluster = None
    if args.postgresql:
        from twisted_pop3ng.testing.postgresql import TestCluster

        cluster = TestCluster(fsync=True)  # committed means on disk, as in production
        cluster.start()
        pg = cluster

        def start_ours_postgresql(root: str, u: Dict[str, str]) -> Tuple[int, Callable[[], None]]:
            return start_ours(root, u, "postgresql:" + pg.create_database(True))  # a fresh database each round

        peers["ours (postgresql)"] = (os.path.join(base, "ours-pg"), start_ours_postgresql)
    results: Dict[str, List[float]] = {name: [] for name in peers}
    try:
        for round_number in range(args.rounds):
            for name, (root, start) in peers.items():
                here = os.path.join(root, "round%d" % round_number)
                os.makedirs(here)
                port, stop = start(here, users)
                try:
                    rate = deliver_batch(port, messages, names, args.connections)
                finally:
                    stop()
                if "maildir" in name:
                    assert count_delivered(here) == args.messages, name
                shutil.rmtree(here, ignore_errors=True)
                results[name].append(rate)
                print("round %d  %-20s %8.0f msg/s" % (round_number + 1, name, rate), flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    print("\n%d x %d-octet messages, %d connections, %d rounds (median, min-max, msg/s):"
          % (args.messages, args.size, args.connections, args.rounds))
    for name, rates in results.items():
        print("  %-20s %8.0f   %6.0f-%-6.0f" % (name, statistics.median(rates), min(rates), max(rates)))
    ours, dovecot = statistics.median(results["ours (maildir)"]), statistics.median(results["dovecot (maildir)"])
    paired = [a / b for a, b in zip(results["ours (maildir)"], results["dovecot (maildir)"])]
    print("  ours / dovecot into maildir: %.2fx of the medians; per round %s (goal >= 1.5x)"
          % (ours / dovecot, " ".join("%.2f" % r for r in paired)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
