"""The PostgreSQL backend measured beside our maildir, in one run (issue 15's speed goals).

    python3 -m benchmarks.postgresql_bench            # full sizes (a few minutes on 2 cores)
    python3 -m benchmarks.postgresql_bench --quick    # smaller (about a minute)

Run from the repository root. It starts a PostgreSQL cluster of its own (initdb in a temporary
directory, 127.0.0.1 only, fsync on as in production), fills it and a maildir with the same mail
(``benchmarks.peers.make_message``), starts ``twistd pop3ng`` on each, and prints:

* ``bulk``: pipelined ``RETR 1..N`` of N small messages in one session, MB/s, PostgreSQL / maildir
  (goal: >= 0.5);
* ``big``: one 50 MB ``RETR``, MB/s, and how much the server grew meanwhile;
* ``many``: login + STAT on a 100,000-message maildrop, seconds (goal: <= 0.1 s with PostgreSQL);
* ``sessions``: connect/login/STAT/UIDL/QUIT sessions per second with one front end and with two
  on the same database (clients split between them);
* ``deliver``: ``IMailboxDelivery.deliver`` of N small messages into each store, messages/s
  (one thread, every message durable before the next);
* ``driver``: the cost of one chunk query through psycopg 3 directly, through the store's worker
  threads (what the server pays) and through psycopg's asyncio API (the alternative), µs per query.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import client, peers  # noqa: E402
from benchmarks.peers import PASSWORD, Running  # noqa: E402


def log(text: str) -> None:
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), text))
    sys.stderr.flush()


def best_rate(repeat: int, run: Callable[[], Tuple[float, int]]) -> float:
    """Highest MB/s over ``repeat`` runs."""
    return max(octets / seconds / 1e6 for seconds, octets in (run() for _ in range(repeat)))


# -- data ---------------------------------------------------------------------------------------

def fill_postgres(dsn: str, args: Any) -> None:
    """The same mail as the maildir, through the store's own delivery (the 100,000-message
    maildrop with one INSERT ... SELECT: a million fsynced deliveries would take the whole run)."""
    import psycopg

    from twisted_pop3ng.mailbox.postgresql.store import PostgresStore

    store = PostgresStore.from_spec(dsn + " pool_size=2")
    try:
        for i in range(args.bulk_count):
            store.deliver("bulk", io.BytesIO(peers.make_message(args.bulk_size, i % 16)))
        for user in session_users(args):
            for i in range(10):
                store.deliver(user, io.BytesIO(peers.make_message(4096, 100 + i)))
        store.deliver("big", BigSource(args.big_mb))
        body = peers.make_message(2048, 7)
        store.deliver("many", io.BytesIO(body))  # makes the maildrop and one real message
        with psycopg.connect(dsn) as conn:
            conn.execute("""
                WITH m AS (
                    INSERT INTO messages (maildrop_id, wire_size, octets, chunks)
                    SELECT d.id, w.wire_size, w.octets, 1
                      FROM maildrops d, messages w, generate_series(2, %s)
                     WHERE d.username = 'many' AND w.maildrop_id = d.id
                    RETURNING id)
                INSERT INTO message_chunks (message_id, seq, data) SELECT id, 0, %s FROM m""",
                         (args.many, body))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # the visibility map, for index-only snapshot scans
    finally:
        store.stop()


class BigSource:
    """``megabytes`` MiB of message made on the fly (never whole in this process either)."""

    def __init__(self, megabytes: int) -> None:
        self.block = peers.make_message(1 << 20, 99)
        self.left = megabytes
        self.head = b"From: big@example.org\nSubject: big\n\n"

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out, self.head = self.head, b""
            return out
        if self.left <= 0:
            return b""
        self.left -= 1
        return self.block


def fill_maildir(root: str, args: Any) -> None:
    mail = os.path.join(root, "mail")
    peers.fill_maildir(os.path.join(mail, "bulk", "Maildir"), args.bulk_count, args.bulk_size)
    peers.big_message_file(os.path.join(mail, "big", "Maildir"), args.big_mb)
    for n, user in enumerate(session_users(args)):
        peers.fill_maildir(os.path.join(mail, user, "Maildir"), 10, 4096, seed=100 + n)


def session_users(args: Any) -> List[str]:
    return ["s%d" % i for i in range(args.session_clients)]


def users(args: Any) -> Dict[str, str]:
    return {name: PASSWORD for name in ["bulk", "big", "many"] + session_users(args)}


# -- the measurements ---------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (0 when it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CPUMeter:
    """CPU used by a set of process trees between start and stop (processes born meanwhile, such
    as PostgreSQL backends, count from zero)."""

    def __init__(self, roots: List[int]) -> None:
        from tests.integration.support import process_tree

        self.tree = lambda: [p for root in roots for p in process_tree(root)]
        self.before = {pid: cpu_seconds(pid) for pid in self.tree()}

    def seconds(self) -> float:
        return sum(cpu_seconds(pid) - self.before.get(pid, 0.0) for pid in self.tree())


#: The per-round ratios of the last :func:`interleaved_bulk`, for the report.
BULK_RATIOS: List[float] = []


def interleaved_bulk(maildir: Running, postgres: Running, cluster_pid: int, args: Any,
                     results: Dict[str, Dict[str, float]]) -> None:
    """Pipelined RETR rounds alternating between the two servers (a loaded machine's swings hit
    both alike): the best rate of each, the median of the per-round ratios, and CPU per message
    (the server; PostgreSQL's own processes besides)."""
    ratios: List[float] = []
    rates: Dict[str, List[float]] = {"maildir": [], "postgresql": []}
    cpu = {"maildir": 0.0, "postgresql": 0.0, "postgres_server": 0.0}
    for _ in range(args.repeat + 2):
        round_rates = {}
        for name, peer in (("maildir", maildir), ("postgresql", postgres)):
            meter = CPUMeter([peer.root_pid])
            db_meter = CPUMeter([cluster_pid])
            seconds, octets = client.bulk(peer.target, "bulk", PASSWORD, args.bulk_count)
            cpu[name] += meter.seconds()
            if name == "postgresql":
                cpu["postgres_server"] += db_meter.seconds()
            round_rates[name] = octets / seconds / 1e6
            rates[name].append(round_rates[name])
        ratios.append(round_rates["postgresql"] / round_rates["maildir"])
    messages = (args.repeat + 2) * args.bulk_count
    for name in ("maildir", "postgresql"):
        results[name]["bulk"] = max(rates[name])
        results[name]["bulk_cpu_us"] = cpu[name] / messages * 1e6
    results["postgresql"]["bulk_db_cpu_us"] = cpu["postgres_server"] / messages * 1e6
    results["postgresql"]["bulk_ratio"] = statistics.median(ratios)
    BULK_RATIOS[:] = ratios


def measure_big(peer: Running, args: Any, out: Dict[str, float]) -> None:
    before = peers.reset_peak(peer.pids())
    out["big"] = best_rate(args.repeat, lambda: client.one_message(peer.target, "big", PASSWORD))
    out["big_rss_mb"] = peers.peak_growth_kb(before) / 1024


def measure_many(peer: Running, out: Dict[str, float]) -> None:
    times = [client.big_maildir(peer.target, "many", PASSWORD)[0] for _ in range(7)]
    out["many_first"] = times[0]
    out["many"] = statistics.median(times[1:])


def _session_worker(job: Tuple[int, str, float]) -> Tuple[int, int]:
    port, user, seconds = job
    return client.session_loop(port, user, PASSWORD, seconds)


def sessions_rate(ports: List[int], args: Any) -> Tuple[float, int]:
    """Sessions/s of ``session_clients`` clients spread over ``ports``; (rate, failures)."""
    jobs = [(ports[i % len(ports)], user, args.session_seconds) for i, user in enumerate(session_users(args))]
    best, failures = 0.0, 0
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
        for _ in range(args.repeat):
            start = time.perf_counter()
            results = pool.map(_session_worker, jobs)
            best = max(best, sum(r[0] for r in results) / (time.perf_counter() - start))
            failures += sum(r[1] for r in results)
    return best, failures


def deliver_rate(store: Any, count: int) -> float:
    bodies = [peers.make_message(10 * 1024, i) for i in range(16)]
    start = time.perf_counter()
    for i in range(count):
        store.deliver("deliver-bench", io.BytesIO(bodies[i % 16]))
    return count / (time.perf_counter() - start)


def driver_costs(dsn: str, queries: int) -> Dict[str, float]:
    """µs per chunk query (a 10 KB bytea): directly, through the store's threads, through asyncio."""
    import psycopg

    from twisted_pop3ng.mailbox.postgresql.store import PostgresStore

    out: Dict[str, float] = {}
    with psycopg.connect(dsn) as conn:
        ids = [r[0] for r in conn.execute("SELECT message_id FROM message_chunks c JOIN messages m "
                                          "ON m.id = c.message_id JOIN maildrops d ON d.id = m.maildrop_id "
                                          "WHERE d.username = 'bulk' LIMIT 200").fetchall()]
    query = "SELECT data FROM message_chunks WHERE message_id = %s AND seq = 0"

    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        for i in range(queries):
            conn.execute(query, (ids[i % len(ids)],), binary=True).fetchone()
        out["driver_sync_us"] = (time.perf_counter() - start) / queries * 1e6

    async def with_asyncio() -> float:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            begin = time.perf_counter()
            for i in range(queries):
                await (await aconn.execute(query, (ids[i % len(ids)],), binary=True)).fetchone()
            return (time.perf_counter() - begin) / queries * 1e6
    out["driver_asyncio_us"] = asyncio.run(with_asyncio())

    # Through the store's worker threads, from a running Twisted reactor: sequential, then 8 at once.
    from twisted.internet import defer, reactor

    store = PostgresStore.from_spec(dsn + " pool_size=8")

    @defer.inlineCallbacks
    def through_threads() -> Any:
        begin = time.perf_counter()
        for i in range(queries):
            yield store._run(store._fetch_chunk, ids[i % len(ids)], 0)
        out["driver_threads_us"] = (time.perf_counter() - begin) / queries * 1e6
        begin = time.perf_counter()
        for i in range(0, queries, 8):
            yield defer.gatherResults([store._run(store._fetch_chunk, ids[(i + k) % len(ids)], 0)
                                       for k in range(8)])
        out["driver_threads_8_us"] = (time.perf_counter() - begin) / queries * 1e6

    def run() -> None:
        through_threads().addBoth(lambda _: reactor.stop())
    reactor.callWhenRunning(run)
    reactor.run()
    store.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bulk-count", type=int, default=2000)
    parser.add_argument("--bulk-size", type=int, default=10 * 1024)
    parser.add_argument("--big-mb", type=int, default=50)
    parser.add_argument("--many", type=int, default=100_000)
    parser.add_argument("--session-clients", type=int, default=8)
    parser.add_argument("--session-seconds", type=float, default=5.0)
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.bulk_count, args.big_mb, args.many, args.session_seconds, args.deliveries = 500, 20, 20_000, 2.0, 300

    from tests.integration.support import start_server
    from twisted_pop3ng.mailbox.postgresql.store import PostgresStore
    from twisted_pop3ng.mailbox.maildir.store import MaildirStore
    from twisted_pop3ng.testing.postgresql import TestCluster

    work = tempfile.mkdtemp(prefix="pop3ng-pg-bench-")
    cluster = TestCluster(fsync=True)
    cluster.start()
    running: List[Running] = []
    try:
        dsn = cluster.create_database()
        log("filling PostgreSQL and the maildir")
        fill_postgres(dsn, args)
        fill_maildir(os.path.join(work, "maildir"), args)

        def start(name: str, extra: List[str]) -> Running:
            server = start_server(os.path.join(work, name), users(args), tls=False,
                                  extra_args=["--max-connections-per-address", "0"] + extra)
            peer = Running(name, client.Target(name, server.port), server.process.pid, server.stop)
            running.append(peer)
            return peer

        results: Dict[str, Dict[str, float]] = {"maildir": {}, "postgresql": {}}
        maildir = start("maildir", [])
        spec = ["--mailbox", "postgresql:%s pool_size=10" % dsn]
        front_a = start("pg-a", spec)
        assert cluster.process is not None
        log("pipelined RETR, maildir and PostgreSQL in alternation")
        interleaved_bulk(maildir, front_a, cluster.process.pid, args, results)
        log("one big message, login on a big maildrop")
        measure_big(maildir, args, results["maildir"])
        measure_big(front_a, args, results["postgresql"])
        measure_many(front_a, results["postgresql"])
        log("sessions: maildir, one PostgreSQL front end, two")
        results["maildir"]["sessions"], _ = sessions_rate([maildir.target.port], args)
        maildir.stop()
        one, fail_one = sessions_rate([front_a.target.port], args)
        front_b = start("pg-b", spec)
        two, fail_two = sessions_rate([front_a.target.port, front_b.target.port], args)
        for peer in running:
            peer.stop()
        log("measuring deliveries and the driver")
        pg_store = PostgresStore.from_spec(dsn + " pool_size=2")
        pg_deliver = deliver_rate(pg_store, args.deliveries)
        pg_store.stop()
        md_deliver = deliver_rate(MaildirStore(os.path.join(work, "deliver", "{user}", "Maildir")), args.deliveries)
        driver = driver_costs(dsn, 2000)
    finally:
        for peer in running:
            peer.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    md, pg = results["maildir"], results["postgresql"]
    print("pop3ng, PostgreSQL %s (fsync on) vs maildir, same run, %d cores" % (_pg_version(), os.cpu_count() or 0))
    print("bulk: pipelined RETR of %d x %d B, best round: maildir %.1f MB/s, postgresql %.1f MB/s; "
          "median ratio of alternating rounds %.2f (goal >= 0.5; rounds %s)"
          % (args.bulk_count, args.bulk_size, md["bulk"], pg["bulk"], pg["bulk_ratio"],
             " ".join("%.2f" % r for r in BULK_RATIOS)))
    print("      server CPU per message: maildir %.1f us, postgresql %.1f us (+ PostgreSQL's own %.1f us)"
          % (md["bulk_cpu_us"], pg["bulk_cpu_us"], pg["bulk_db_cpu_us"]))
    print("big: RETR of %d MiB                maildir %7.1f MB/s   postgresql %7.1f MB/s   (server grew %.1f / %.1f MB)"
          % (args.big_mb, md["big"], pg["big"], md["big_rss_mb"], pg["big_rss_mb"]))
    print("many: login+STAT, %d messages      postgresql %.4f s (first %.4f s)   (goal <= 0.1 s)"
          % (args.many, pg["many"], pg["many_first"]))
    print("sessions/s, %d clients             maildir %7.0f   postgresql one front end %7.0f   two front ends %7.0f"
          " (failures %d/%d)" % (args.session_clients, md["sessions"], one, two, fail_one, fail_two))
    print("deliver %d x 10 KB, one thread     maildir %7.0f msg/s   postgresql %7.0f msg/s"
          % (args.deliveries, md_deliver, pg_deliver))
    print("driver, µs per 10 KB chunk query: psycopg sync %.0f, psycopg asyncio %.0f, store threads %.0f "
          "(8 at once: %.0f per query)" % (driver["driver_sync_us"], driver["driver_asyncio_us"],
                                           driver["driver_threads_us"], driver["driver_threads_8_us"]))
    return 0


def _pg_version() -> str:
    import subprocess

    from twisted_pop3ng.testing.postgresql import find_bindir

    return subprocess.run([os.path.join(find_bindir(), "postgres"), "--version"], capture_output=True,
                          text=True).stdout.split()[2]


if __name__ == "__main__":
    sys.exit(main())
