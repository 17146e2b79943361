"""Side-by-side POP3 benchmarks: ours vs twisted.mail vs Dovecot, one after another, one client.

    python3 -m benchmarks.run            # full sizes (about 5 minutes on 2 cores)
    python3 -m benchmarks.run --quick    # smaller maildir and fewer idle connections (~1.5 min)
    python3 -m benchmarks.run --json results.json --plot charts/   # also keep the results, draw them
    python3 -m benchmarks.run --runs 5 --only sessions,bulk          # five rounds: median and spread

Run as root from the repository root (Dovecot needs root to drop privileges). Each peer is started
on 127.0.0.1 over its own hard-linked copy of the same generated maildirs, measured, and stopped.
With ``--runs N`` this is done N times (rounds), each round starting with the next peer (round 1:
ours, twisted.mail, dovecot; round 2: twisted.mail, dovecot, ours; ...); every round is kept.
The result is a table of the measurements and of the ratios against the peers (ratios taken within
each round), each as median (min-max) over the rounds, and the performance goals of
docs/performance.rst, judged on every round where the goal says so and on the median otherwise.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

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


class Goal(NamedTuple):
    """A performance goal of docs/performance.rst. ``peer``: ours must be ``factor`` times better
    than it (ratios taken within each round); without ``peer``, ours must stay within ``limit``.
    ``every_round``: judged on every round (one bad round fails it), else on the median."""

    text: str
    every_round: bool = False
    peer: Optional[str] = None
    factor: float = 0.0
    limit: float = 0.0

    @property
    def judged_on(self) -> str:
        return "every round" if self.every_round else "median"


#: key -> goal (its text first: ``GOALS[key][0]``)
GOALS: Dict[str, Goal] = {
    "bulk": Goal(">=2x dovecot", every_round=True, peer="dovecot", factor=2.0),
    "tls_bulk": Goal(">=1.5x dovecot", peer="dovecot", factor=1.5),
    "sessions": Goal(">=2x twisted.mail", every_round=True, peer="twisted.mail", factor=2.0),
    "big": Goal(">=2x dovecot", peer="dovecot", factor=2.0),
    "big_rss_mb": Goal("<=40 MB", limit=40),
    "many_cold": Goal("<=0.5 s", limit=0.5),
    "many_warm": Goal("<=0.1 s", limit=0.1),
    "many_uidl": Goal("<=0.1 s", limit=0.1),
    "idle_kb": Goal("<=2 KB", limit=2.0),
    "deliver_cur": Goal("<=0.1 s", limit=0.1),
    "deliver_cur_second": Goal("<=0.05 s", limit=0.05),
    "deliver_new": Goal("<=0.1 s", limit=0.1),
    "deliver_new_second": Goal("<=0.05 s", limit=0.05),
}

#: Keys where lower is better; every other measurement is better higher.
LOWER_IS_BETTER = {key for key, _, _, higher in ROWS if not higher}
#: Keys added up over the rounds rather than summarised by their median.
SUMMED = {"session_failures"}

Rounds = List[Dict[str, Result]]


def times_better(key: str, ours: Optional[float], other: Optional[float]) -> Optional[float]:
    """How many times better ours is than ``other`` (>1: ours better, whatever the unit's direction)."""
    if not ours or not other:
        return None
    return other / ours if key in LOWER_IS_BETTER else ours / other


def round_ratios(rounds: Rounds, key: str, peer: str) -> List[float]:
    """Ours against ``peer`` for ``key``, one ratio per round that has both (taken within the round)."""
    ratios = [times_better(key, r.get("ours", {}).get(key), r.get(peer, {}).get(key)) for r in rounds]
    return [x for x in ratios if x is not None]


def spread(values: List[float]) -> Optional[Tuple[float, float, float]]:
    """(median, min, max), or None for no values."""
    return (_median(values), min(values), max(values)) if values else None


def summarise(rounds: Rounds) -> Dict[str, Result]:
    """Per peer and measurement, the median over the rounds (session failures: their sum)."""
    summary: Dict[str, Result] = {}
    for peer in dict.fromkeys(p for r in rounds for p in r):
        keys = dict.fromkeys(k for r in rounds for k in r.get(peer, {}))
        values = {k: [r[peer][k] for r in rounds if k in r.get(peer, {})] for k in keys}
        summary[peer] = {k: sum(v) if k in SUMMED else _median(v) for k, v in values.items()}
    return summary


def judge(key: str, rounds: Rounds) -> Optional[bool]:
    """Whether the goal of ``key`` was met over ``rounds`` (None: no goal, or nothing to judge)."""
    goal = GOALS.get(key)
    if goal is None:
        return None
    if goal.peer:
        values = round_ratios(rounds, key, goal.peer)
        passed = [x >= goal.factor for x in values]
    else:
        values = [r["ours"][key] for r in rounds if key in r.get("ours", {})]
        passed = [x <= goal.limit for x in values]
    if not values:
        return None
    if goal.every_round:
        return all(passed)
    middle = _median(values)
    return middle >= goal.factor if goal.peer else middle <= goal.limit


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return "%.0f" % value
    if value >= 10:
        return "%.1f" % value
    return "%.3g" % value


def _fmt_ratio(value: float) -> str:
    return "%.2fx" % value


def _fmt_spread(values: Optional[Tuple[float, float, float]], fmt: Callable[[float], str] = _fmt) -> str:
    """``median (min-max)``; a single round's value alone."""
    if values is None:
        return "-"
    middle, low, high = values
    if low == high:
        return fmt(middle)
    return "%s (%s-%s)" % (fmt(middle), fmt(low), fmt(high))


def _names(spec: DataSpec, args: Any) -> Dict[str, int]:
    return {"bulk_count": spec.bulk_count, "bulk_kb": spec.bulk_size // 1024,
            "session_users": spec.session_users, "big_mb": spec.big_mb,
            "many_k": spec.many_count // 1000, "idle": args.idle}


def table(rounds: Rounds, spec: DataSpec, args: Any) -> str:
    """Each cell and each ratio as median (min-max) over the rounds, then the goals."""
    names = _names(spec, args)
    header = ["measurement", "unit", "ours", "twisted.mail", "dovecot", "vs dovecot",
              "vs twisted", "goal", "judged on", "met"]
    rows = [header]
    for key, label, unit, higher in ROWS:
        cells = [spread([r[p][key] for r in rounds if key in r.get(p, {})])
                 for p in ("ours", "twisted.mail", "dovecot")]
        if all(c is None for c in cells):
            continue
        goal = GOALS.get(key)
        met = judge(key, rounds)
        ratios = [spread(round_ratios(rounds, key, p)) for p in ("dovecot", "twisted.mail")]
        rows.append([label % names, unit] + [_fmt_spread(c) for c in cells] +
                    [_fmt_spread(r, _fmt_ratio) for r in ratios] +
                    [goal.text if goal else "", goal.judged_on if goal else "",
                     {True: "yes", False: "NO", None: "-"}[met]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) if i < 2 or i > 6 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("%d round(s); cells and ratios: median (min-max) over the rounds; ratios: how many times "
                 "better ours is (>1 = ours better), taken within each round" % len(rounds))
    for key, goal in GOALS.items():
        by_round = [times_better(key, r.get("ours", {}).get(key), r.get(goal.peer or "", {}).get(key))
                    for r in rounds]
        if goal.peer and any(x is not None for x in by_round):
            lines.append("%s vs %s by round: %s (goal %s, %s)" % (
                key, goal.peer, " ".join("-" if x is None else "%.2fx" % x for x in by_round), goal.text,
                goal.judged_on))
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


def round_order(names: List[str], round_: int) -> List[str]:
    """The peers in the order round ``round_`` (from 0) runs them: each round starts with the
    next peer, so none is always first (a cold page cache) or last (a warmed-up machine)."""
    shift = round_ % len(names)
    return names[shift:] + names[:shift]


def results_record(rounds: Rounds, orders: List[List[str]], spec: DataSpec, args: Any,
                   command: str) -> Dict[str, Any]:
    """What ``--json`` writes and :mod:`benchmarks.plot` draws: ``results``, the median by peer of
    every measurement; ``rounds``, every round's figures (``orders``: the order the peers ran in);
    ``spread``, [min, max] by peer; ``ratios``, ours against each peer within each round; plus
    where, when and how they were measured, and the table's rows with their labels filled in."""
    names = _names(spec, args)
    results = summarise(rounds)
    spreads = {peer: {key: [min(v), max(v)] for key in values
                      for v in [[r[peer][key] for r in rounds if key in r.get(peer, {})]]}
               for peer, values in results.items()}
    ratios: Dict[str, Dict[str, Any]] = {}
    for key, _, _, _ in ROWS:
        for peer in ("dovecot", "twisted.mail"):
            found = spread(round_ratios(rounds, key, peer))
            if found:
                ratios.setdefault(key, {})[peer] = {
                    "median": found[0], "min": found[1], "max": found[2],
                    "rounds": [times_better(key, r.get("ours", {}).get(key), r.get(peer, {}).get(key))
                               for r in rounds]}
    return {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": _commit(),
        "command": command,
        "rows": [{"key": key, "label": label % names, "unit": unit, "higher_is_better": higher,
                  "goal": GOALS[key].text if key in GOALS else "",
                  "judged_on": GOALS[key].judged_on if key in GOALS else None,
                  "met": judge(key, rounds)}
                 for key, label, unit, higher in ROWS],
        "results": results,
        "spread": spreads,
        "ratios": ratios,
        "rounds": rounds,
        "orders": orders,
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
                        help="runs of each throughput and session-rate test within a round (the best "
                             "counts as the round's figure)")
    parser.add_argument("--runs", type=int, default=1,
                        help="rounds over all peers, each starting with the next peer; every round is "
                             "kept, cells and ratios are reported as median (min-max), goals judged on "
                             "every round or on the median as docs/performance.rst says")
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
    names = args.peers.split(",")
    rounds: Rounds = []
    orders: List[List[str]] = []
    for round_ in range(args.runs):
        # Each round starts with another peer, so none is always measured first (or last).
        order = round_order(names, round_)
        log("round %d of %d: %s" % (round_ + 1, args.runs, ", ".join(order)))
        rounds.append({name: run_peer(name, spec, template, args) for name in order})
        orders.append(order)
    print("machine: " + machine())
    command = "python3 -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    print("command: " + command)
    print("load average (1, 5, 15 min) at the end: %.1f %.1f %.1f" % os.getloadavg())
    print(table(rounds, spec, args))
    record = results_record(rounds, orders, spec, args, command)
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
