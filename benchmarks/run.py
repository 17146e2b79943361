"""Side-by-side POP3 benchmarks: ours vs twisted.mail vs Dovecot, one after another, one client.

    python3 -m benchmarks.run            # full sizes (about 5 minutes on 2 cores)
    python3 -m benchmarks.run --quick    # smaller maildir and fewer idle connections (~1.5 min)
    python3 -m benchmarks.run --json results.json --plot charts/   # also keep the results, draw them

Run as root from the repository root (Dovecot needs root to drop privileges). Each peer is started
on 127.0.0.1 over its own hard-linked copy of the same generated maildirs, measured, and stopped.
The result is a table of the measurements, the ratios against the peers and the performance goals
(docs/performance.rst).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import client, peers  # noqa: E402
from benchmarks.peers import PASSWORD, DataSpec, Running  # noqa: E402

Result = Dict[str, float]


def log(text: str) -> None:
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), text))
    sys.stderr.flush()


# -- the measurements -----------------------------------------------------------------------------

def best_of(repeat: int, run: Callable[[], Tuple[float, int]]) -> float:
    """Highest MB/s over ``repeat`` runs (the least disturbed one)."""
    return max(octets / seconds / 1e6 for seconds, octets in (run() for _ in range(repeat)))


def bench_bulk(peer: Running, spec: DataSpec, args: Any, out: Result) -> None:
    target = peer.target
    out["bulk"] = best_of(args.repeat, lambda: client.bulk(target, "bulk", PASSWORD, spec.bulk_count))
    out["tls_bulk"] = best_of(args.repeat, lambda: client.bulk(target, "bulk", PASSWORD,
                                                               spec.bulk_count, tls=True))


def bench_big(peer: Running, spec: DataSpec, args: Any, out: Result) -> None:
    conn = client.Connection(peer.target.port, timeout=120)
    try:
        conn.login("big", PASSWORD)
        before = peers.reset_peak(peer.pids())
        start = time.perf_counter()
        conn.send(b"RETR 1\r\n")
        octets = conn.bodies(1)
        out["big"] = octets / (time.perf_counter() - start) / 1e6
        out["big_rss_mb"] = peers.peak_growth_kb(before) / 1024
        conn.command(b"QUIT")
    finally:
        conn.close()
    out["big"] = max(out["big"], best_of(args.repeat - 1 or 1,
                                         lambda: client.one_message(peer.target, "big", PASSWORD)))


def _session_worker(job: Tuple[int, str, float]) -> Tuple[int, int]:
    port, user, seconds = job
    return client.session_loop(port, user, PASSWORD, seconds)


def bench_sessions(peer: Running, spec: DataSpec, args: Any, out: Result) -> None:
    jobs = [(peer.target.port, "s%d" % i, args.session_seconds) for i in range(spec.session_users)]
    best = failures = 0.0
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
        for _ in range(args.repeat):
            start = time.perf_counter()
            results = pool.map(_session_worker, jobs)
            elapsed = time.perf_counter() - start
            best = max(best, sum(r[0] for r in results) / elapsed)
            failures += sum(r[1] for r in results)
    out["sessions"] = best
    out["session_failures"] = failures


def bench_many(peer: Running, spec: DataSpec, args: Any, out: Result) -> None:
    if args.drop_caches:
        _drop_caches()
    else:
        # The same page cache for every peer: these VMs keep only ~600 MB of it, so without this
        # the first peer to read the 100k maildir pays the disk reads and the next ones do not.
        _read_all(os.path.join(args.root, peer.name.replace(".", "-"), "mail", "many", "Maildir"))
    cold, _, count = client.big_maildir(peer.target, "many", PASSWORD)
    warm, uidl, _ = client.big_maildir(peer.target, "many", PASSWORD)
    warm2, uidl2, _ = client.big_maildir(peer.target, "many", PASSWORD)
    out.update(many_cold=cold, many_warm=min(warm, warm2), many_uidl=min(uidl, uidl2),
               many_count=count)


def login_stat(target: client.Target, user: str) -> float:
    """Seconds from connecting to the answer of STAT; then QUIT."""
    start = time.perf_counter()
    conn = client.Connection(target.port, timeout=600)
    try:
        conn.login(user, PASSWORD)
        conn.command(b"STAT")
        elapsed = time.perf_counter() - start
        conn.command(b"QUIT")
        return elapsed
    finally:
        conn.close()


def deliver_as_mta(maildir: str, size: int, seq: int) -> None:
    """One message delivered as an MTA does: written to tmp/ under a unique standard name,
    fsynced, renamed into new/."""
    now = time.time()
    name = "%d.M%06dP%d.bench-mta-%d" % (now, int(now % 1 * 1e6), os.getpid(), seq)
    tmp = os.path.join(maildir, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(peers.make_message(size, 7000 + seq))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(maildir, "new", name))


def _median(values: List[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def bench_deliveries(peer: Running, spec: DataSpec, args: Any, out: Result) -> None:
    """A big maildrop that receives mail between logins: one message delivered (a real file, tmp/
    then new/) before each login, login+STAT timed; then a second login right after the first
    (nothing delivered in between). With the messages in cur/ ("many") and all of them in new/
    ("manynew", a POP3-only site). The median of ``--delivery-rounds`` rounds counts; the
    slowest is kept too (``_max``), to show the spread."""
    mail = os.path.join(args.root, peer.name.replace(".", "-"), "mail")
    for user, key in (("many", "deliver_cur"), ("manynew", "deliver_new")):
        maildir = os.path.join(mail, user, "Maildir")
        for _ in range(2):  # the first login of all (a cold scan; Dovecot's first sync), then warm
            login_stat(peer.target, user)
        firsts: List[float] = []
        seconds: List[float] = []
        for i in range(args.delivery_rounds):
            deliver_as_mta(maildir, spec.many_size, i)
            firsts.append(login_stat(peer.target, user))
            seconds.append(login_stat(peer.target, user))
        out[key] = _median(firsts)
        out[key + "_max"] = max(firsts)
        out[key + "_second"] = _median(seconds)
        out[key + "_second_max"] = max(seconds)
        log("%s: %s first logins %s, second logins %s" % (
            peer.name, user, " ".join("%.3f" % x for x in firsts), " ".join("%.3f" % x for x in seconds)))


def bench_idle(peer: Running, spec: DataSpec, args: Any, out: Result) -> None:
    """Memory per idle connection: dirty PSS of all the peer's processes, measured after each of
    five equal steps of connections; the median step counts (one-off growth such as a table
    doubling, or transients of earlier tests, lands in one step only)."""
    peers.raise_nofile()
    steps = 5
    size = max(1, args.idle // steps)
    socks: List[Any] = client.idle_connections(peer.target.port, size)
    per_conn = []
    try:
        time.sleep(1.0)
        last = peers.pss_kb(peer.pids())
        for _ in range(steps - 1):
            socks += client.idle_connections(peer.target.port, size)
            time.sleep(1.0)
            now = peers.pss_kb(peer.pids())
            per_conn.append((now - last) / size)
            last = now
        out["idle_kb"] = sorted(per_conn)[len(per_conn) // 2]
    finally:
        for sock in socks:
            sock.close()
    time.sleep(min(10.0, 1.0 + args.idle / 2000))


def _read_all(maildir: str) -> None:
    """Read every message file once (not a login: no server sees it), 16 at a time: the kernel
    here reclaims idle page cache (DAMON), and one file after another from disk takes minutes."""
    from concurrent.futures import ThreadPoolExecutor

    def read(path: str) -> None:
        with open(path, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass

    start = time.perf_counter()
    paths = [os.path.join(maildir, sub, name) for sub in ("new", "cur")
             for name in os.listdir(os.path.join(maildir, sub))]
    with ThreadPoolExecutor(16) as pool:
        for _ in pool.map(read, paths, chunksize=256):
            pass
    log("page cache warmed for the cold login in %.2f s" % (time.perf_counter() - start))


def _drop_caches() -> None:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError as error:
        log("cannot drop caches: %s" % error)


BENCHMARKS: Dict[str, Callable[[Running, DataSpec, Any, Result], None]] = {
    "bulk": bench_bulk,
    "big": bench_big,
    "sessions": bench_sessions,
    "many": bench_many,
    "deliveries": bench_deliveries,
    "idle": bench_idle,
}
#: Memory measurements get a freshly started peer: memory freed by earlier tests (a 100k-message
#: listing, say) would otherwise be reused and hide the growth being measured.
FRESH = {"big", "idle"}


# -- the table --------------------------------------------------------------------------------------

#: (key, label, unit, higher is better)
ROWS = [
    ("bulk", "a. bulk RETR %(bulk_count)d x %(bulk_kb)d KB", "MB/s", True),
    ("tls_bulk", "b. bulk RETR over TLS", "MB/s", True),
    ("sessions", "c. sessions (%(session_users)d clients)", "sess/s", True),
    ("big", "d. RETR of %(big_mb)d MB", "MB/s", True),
    ("big_rss_mb", "d. peak RSS growth", "MB", False),
    ("many_cold", "e. %(many_k)dk maildir login+STAT cold", "s", False),
    ("many_warm", "e. %(many_k)dk maildir login+STAT warm", "s", False),
    ("many_uidl", "e. %(many_k)dk maildir UIDL", "s", False),
    ("idle_kb", "f. memory per idle conn (%(idle)d)", "KB", False),
    ("deliver_cur", "g. %(many_k)dk in cur/, 1 delivered before each login: login+STAT", "s", False),
    ("deliver_cur_second", "g. the same, a second login right after", "s", False),
    ("deliver_new", "h. %(many_k)dk all in new/, 1 delivered before each login: login+STAT", "s", False),
    ("deliver_new_second", "h. the same, a second login right after", "s", False),
]

#: key -> (description, check(results by peer) -> bool or None when a peer is missing)
GOALS: Dict[str, Tuple[str, Callable[[Dict[str, Result]], Optional[bool]]]] = {}


def _ratio_goal(key: str, peer: str, factor: float) -> Callable[[Dict[str, Result]], Optional[bool]]:
    def check(results: Dict[str, Result]) -> Optional[bool]:
        if key not in results.get("ours", {}) or key not in results.get(peer, {}):
            return None
        return results["ours"][key] >= factor * results[peer][key]
    return check


def _limit_goal(key: str, limit: float) -> Callable[[Dict[str, Result]], Optional[bool]]:
    def check(results: Dict[str, Result]) -> Optional[bool]:
        value = results.get("ours", {}).get(key)
        return None if value is None else value <= limit
    return check


GOALS.update({
    "bulk": (">=2x dovecot", _ratio_goal("bulk", "dovecot", 2.0)),
    "tls_bulk": (">=1.5x dovecot", _ratio_goal("tls_bulk", "dovecot", 1.5)),
    "sessions": (">=2x twisted.mail", _ratio_goal("sessions", "twisted.mail", 2.0)),
    "big": (">=2x dovecot", _ratio_goal("big", "dovecot", 2.0)),
    "big_rss_mb": ("<=40 MB", _limit_goal("big_rss_mb", 40)),
    "many_cold": ("<=0.5 s", _limit_goal("many_cold", 0.5)),
    "many_warm": ("<=0.1 s", _limit_goal("many_warm", 0.1)),
    "many_uidl": ("<=0.1 s", _limit_goal("many_uidl", 0.1)),
    "idle_kb": ("<=2 KB", _limit_goal("idle_kb", 2.0)),
    "deliver_cur": ("<=0.1 s", _limit_goal("deliver_cur", 0.1)),
    "deliver_cur_second": ("<=0.05 s", _limit_goal("deliver_cur_second", 0.05)),
    "deliver_new": ("<=0.1 s", _limit_goal("deliver_new", 0.1)),
    "deliver_new_second": ("<=0.05 s", _limit_goal("deliver_new_second", 0.05)),
})


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return "%.0f" % value
    if value >= 10:
        return "%.1f" % value
    return "%.3g" % value


def _ratio(ours: Optional[float], other: Optional[float], higher: bool) -> str:
    """How many times better ours is (>1 is better, whatever the unit's direction)."""
    if not ours or not other:
        return "-"
    return "%.2fx" % (ours / other if higher else other / ours)


def table(results: Dict[str, Result], spec: DataSpec, args: Any) -> str:
    names = {"bulk_count": spec.bulk_count, "bulk_kb": spec.bulk_size // 1024,
             "session_users": spec.session_users, "big_mb": spec.big_mb,
             "many_k": spec.many_count // 1000, "idle": args.idle}
    header = ["measurement", "unit", "ours", "twisted.mail", "dovecot", "vs dovecot",
              "vs twisted", "goal", "met"]
    rows = [header]
    for key, label, unit, higher in ROWS:
        values = [results.get(p, {}).get(key) for p in ("ours", "twisted.mail", "dovecot")]
        if all(v is None for v in values):
            continue
        goal, check = GOALS.get(key, ("", lambda r: None))
        met = check(results)
        rows.append([label % names, unit] + [_fmt(v) for v in values] +
                    [_ratio(values[0], values[2], higher), _ratio(values[0], values[1], higher),
                     goal, {True: "yes", False: "NO", None: "-"}[met]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("ratios: how many times better ours is (>1 = ours better)")
    return "\n".join(lines)


def machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return "%s, %d cores, %.0f GB RAM, Linux %s, Python %s" % (
        cpu, os.cpu_count() or 0, mem, platform.release(), platform.python_version())


def _commit() -> Optional[str]:
    """The checkout's commit (with ``+`` when it has uncommitted changes), if git can tell."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(HERE),
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=os.path.dirname(HERE), capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def _met(key: str, results: Dict[str, Result]) -> Optional[bool]:
    """Whether the goal of ``key`` was met (None: no goal, or a peer it compares with is missing)."""
    return GOALS[key][1](results) if key in GOALS else None


def results_record(results: Dict[str, Result], spec: DataSpec, args: Any, command: str) -> Dict[str, Any]:
    """What ``--json`` writes and :mod:`benchmarks.plot` draws: the results by peer, plus where,
    when and how they were measured, and the table's rows with their labels filled in."""
    names = {"bulk_count": spec.bulk_count, "bulk_kb": spec.bulk_size // 1024,
             "session_users": spec.session_users, "big_mb": spec.big_mb,
             "many_k": spec.many_count // 1000, "idle": args.idle}
    return {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": _commit(),
        "command": command,
        "rows": [{"key": key, "label": label % names, "unit": unit, "higher_is_better": higher,
                  "goal": GOALS.get(key, ("",))[0], "met": _met(key, results)}
                 for key, label, unit, higher in ROWS],
        "results": results,
    }


# -- main -------------------------------------------------------------------------------------------

def parse_args(argv: Optional[List[str]] = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="20k-message maildir, 1,000 idle connections, 3 s session loops")
    parser.add_argument("--peers", default="ours,twisted.mail,dovecot")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="benchmarks to run: " + ",".join(BENCHMARKS))
    parser.add_argument("--workers", type=int, default=0, help="--workers N for our server")
    parser.add_argument("--ours-args", default="", help="extra twistd pop3ng arguments")
    parser.add_argument("--bulk-count", type=int, default=2000)
    parser.add_argument("--bulk-size", type=int, default=10 * 1024)
    parser.add_argument("--big-mb", type=int, default=50)
    parser.add_argument("--many", type=int, default=None, help="messages in the big maildir")
    parser.add_argument("--idle", type=int, default=None, help="idle connections")
    parser.add_argument("--delivery-rounds", type=int, default=9,
                        help="deliveries (each followed by two logins) per big maildir in 'deliveries'")
    parser.add_argument("--session-clients", type=int, default=4)
    parser.add_argument("--session-seconds", type=float, default=None)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each throughput and session-rate test (the best counts)")
    parser.add_argument("--runs", type=int, default=1,
                        help="rounds over all peers; each cell keeps its best round (noisy machines)")
    parser.add_argument("--drop-caches", action="store_true",
                        help="drop the page cache before cold (default: every peer's cold login "
                             "finds the files in the page cache)")
    parser.add_argument("--root", default="/tmp/pop3ng-bench", help="work directory (data reused)")
    parser.add_argument("--json", default=None, help="also write the results here (benchmarks.plot reads it)")
    parser.add_argument("--plot", default=None, metavar="DIR",
                        help="also draw the results as PNG and SVG charts into DIR (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.many is None:
        args.many = 20_000 if args.quick else 100_000
    if args.idle is None:
        args.idle = 1_000 if args.quick else 10_000
    if args.session_seconds is None:
        args.session_seconds = 2.0 if args.quick else 4.0
    return args


#: Keys where lower is better; every other measurement is better higher.
LOWER_IS_BETTER = {key for key, _, _, higher in ROWS if not higher}


def merge_best(old: Result, new: Result) -> Result:
    """Per measurement, the better of two rounds: load on a shared machine only ever slows."""
    merged = dict(old)
    for key, value in new.items():
        if key not in merged:
            merged[key] = value
        elif key in LOWER_IS_BETTER:
            merged[key] = min(merged[key], value)
        elif key != "session_failures":
            merged[key] = max(merged[key], value)
        else:
            merged[key] += value
    return merged


def run_peer(name: str, spec: DataSpec, template: str, args: Any) -> Result:
    root = os.path.join(args.root, name.replace(".", "-"))
    peers.clone_mail(template, root)

    def start() -> Running:
        log("%s: starting" % name)
        if name == "ours":
            return peers.start_ours(root, spec.users(), args.workers, args.ours_args.split())
        return peers.PEERS[name](root, spec.users())

    running = start()
    out: Result = {}
    try:
        for n, bench in enumerate(args.only.split(",")):
            if bench in FRESH and n:
                running.stop()
                running = start()
            log("%s: %s" % (name, bench))
            try:
                BENCHMARKS[bench](running, spec, args, out)
            except Exception as error:  # a failed benchmark leaves a hole in the table, not a crash
                log("%s: %s failed: %r" % (name, bench, error))
    finally:
        running.stop()
    log("%s: %s" % (name, json.dumps({k: round(v, 4) for k, v in out.items()})))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (checked now, not after minutes of measuring)
        except ImportError:
            sys.stderr.write("--plot needs matplotlib: pip install matplotlib (or the docs extra)\n")
            return 2
    spec = DataSpec(bulk_count=args.bulk_count, bulk_size=args.bulk_size, big_mb=args.big_mb,
                    many_count=args.many, session_users=args.session_clients)
    peers.raise_nofile()
    os.makedirs(args.root, exist_ok=True)
    # Where the results go must exist before the run, not only after minutes of measuring.
    for directory in filter(None, [args.json and os.path.dirname(os.path.abspath(args.json)), args.plot]):
        os.makedirs(directory, exist_ok=True)
    template = peers.prepare_template(os.path.join(args.root, "template"), spec, log)
    log("client ceiling (raw loopback blast): %.0f MB/s" % client.raw_blast())
    results: Dict[str, Result] = {}
    for round_ in range(args.runs):
        for name in args.peers.split(","):
            results[name] = merge_best(results.get(name, {}), run_peer(name, spec, template, args))
    print("machine: " + machine())
    command = "python3 -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    print("command: " + command)
    print(table(results, spec, args))
    record = results_record(results, spec, args, command)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
    if args.plot:
        from benchmarks import plot

        for path in plot.draw_all(record, args.plot):
            log("chart: %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
