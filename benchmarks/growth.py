"""How cost grows: ours and Dovecot as the maildrop grows and as concurrent sessions grow.

    python3 -m benchmarks.growth                       # 1k..1M messages, 10..1,000 sessions (~4 min)
    python3 -m benchmarks.growth --sizes 1000,10000 --sessions 10,100   # a quick look
    python3 -m benchmarks.growth --json growth.json    # keep the figures
    python3 -m benchmarks.growth --report growth.json --format rst      # a kept run as an RST table

Run as root from the repository root (Dovecot needs root to drop privileges). Both peers are
started as ``benchmarks.run`` starts them (:mod:`benchmarks.peers`), afresh for every cell, over
their own hard-linked copy of the same mail, one after the other in the same run (the order
alternates from cell to cell).

**Maildrop size** (1k, 10k, 100k, 1M messages of 2 KB in ``cur/``): login + STAT the first time
(no index of any kind yet) and then warm (median of three later logins); the peak RSS of the
process that served the session (``VmHWM``: ours' one process, Dovecot's ``pop3`` process); and
the rate of 10,000 pipelined ``RETR`` of messages spread evenly over the maildrop, in the first session.
The mail is generated once under ``--root`` and reused: a pool of 1,000 distinct messages, hard-
linked under a million names (the files' pages are therefore in the page cache for both peers,
as in ``benchmarks.run``'s cold case; what is measured is the servers' work, not the disk's).

**Concurrent sessions** (10, 100, 1,000, each on its own user with ten 4 KB messages): the N
sessions are opened one after another and kept open, each login + STAT timed (the first login of
its user: cold); then all N repeat ``LIST`` + ``RETR`` pipelined, all at once, for ``--seconds``
(two client processes share the sessions); then the memory of all the server's processes (sum of
``Pss``, which splits shared pages between processes, so Dovecot's process per session is counted
fairly; the sum of ``VmRSS`` is kept in the JSON), and per session the growth of their dirty PSS
since before the first login. Then all quit and log in again (warm).

Dovecot runs with ``benchmarks.peers``' limits, and its pop3 process may map 4 GB instead of 256 MB
(with a million messages its index needs more). Logs of every cell are kept under ``--root/logs``.

The load average of the machine is printed with every cell: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import client, peers  # noqa: E402
from benchmarks.peers import PASSWORD, Running  # noqa: E402

Cell = Dict[str, float]
POOL = 1000  # distinct message files; every other message is a hard link to one of them
MESSAGE_SIZE = 2048
SESSION_MESSAGES = 10
SESSION_MESSAGE_SIZE = 4096
TERMINATOR = client.TERMINATOR


def log(text: str) -> None:
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), text))
    sys.stderr.flush()


def loadavg() -> str:
    return "%.1f %.1f %.1f" % os.getloadavg()


# -- the mail -------------------------------------------------------------------------------------

def _pool(root: str) -> List[str]:
    """``POOL`` distinct plausible messages (generated once)."""
    directory = os.path.join(root, "pool")
    names = [os.path.join(directory, "%04d" % i) for i in range(POOL)]
    if not os.path.exists(os.path.join(directory, "done")):
        os.makedirs(directory, exist_ok=True)
        for i, path in enumerate(names):
            with open(path, "wb") as f:
                f.write(peers.make_message(MESSAGE_SIZE, 10_000 + i))
        open(os.path.join(directory, "done"), "w").close()
    return names


def _linked_maildir(target: str, count: int, sources: Sequence[str]) -> None:
    """``target``: ``count`` messages in ``cur/``, hard links to ``sources`` in turn (made once)."""
    if os.path.isdir(os.path.join(target, "cur")):
        return
    partial = peers.empty_partial_maildir(target)
    cur = os.path.join(partial, "cur")
    base = 1700000000
    for i in range(count):
        os.link(sources[i % len(sources)],
                os.path.join(cur, "%d.M%06dP%d.growth:2,S" % (base + i // 1000, i % 1000000, 4242)))
    os.rename(partial, target)


def size_user(count: int) -> str:
    return "m%d" % count


def session_user(i: int) -> str:
    return "s%d" % i


def prepare(root: str, sizes: Sequence[int], sessions: Sequence[int]) -> str:
    """The template mail under ``root/template/mail`` (reused across runs); returns that path."""
    mail = os.path.join(root, "template", "mail")
    os.makedirs(mail, exist_ok=True)
    sources = _pool(os.path.join(root, "template"))
    for count in sizes:
        start = time.monotonic()
        target = os.path.join(mail, size_user(count), "Maildir")
        if not os.path.isdir(target):
            _linked_maildir(target, count, sources)
            log("generated %s (%d messages) in %.1f s" % (size_user(count), count, time.monotonic() - start))
    for i in range(max(sessions or [0])):
        maildir = os.path.join(mail, session_user(i), "Maildir")
        if not os.path.isdir(os.path.join(maildir, "cur")):
            peers.fill_maildir(maildir + ".partial", SESSION_MESSAGES, SESSION_MESSAGE_SIZE, seed=100 + i)
            os.rename(maildir + ".partial", maildir)
    return mail


def clone(template_mail: str, root: str, users: Sequence[str]) -> None:
    """``root/mail/USER``: fresh directories hard-linked to the template's messages."""
    subprocess.run(["rm", "-rf", root], check=True)  # left by an interrupted run
    os.makedirs(os.path.join(root, "mail"))
    subprocess.run(["cp", "-al"] + [os.path.join(template_mail, user) for user in users] + [os.path.join(root, "mail")],
                   check=True)


#: Dovecot's pop3 process may map at most 256 MB by default (``default_vsz_limit``): with a
#: million messages its index does not fit and the process is killed. Raised, as a site would.
DOVECOT_GROWTH = "service pop3 {\n  vsz_limit = 4G\n}\n"


def start(peer: str, root: str, users: Sequence[str], args: Any) -> Running:
    accounts = {user: PASSWORD for user in users}
    if peer == "ours":
        return peers.start_ours(root, accounts, args.workers, args.ours_args.split())
    if peer == "dovecot":
        return peers.start_dovecot(root, accounts, extra_config=DOVECOT_GROWTH)
    return peers.PEERS[peer](root, accounts)


def finish(peer: Running, root: str, cell: str, args: Any) -> None:
    """Stop ``peer``, keep its log under ``--root``/logs, remove its copy of the mail (``rm``:
    a million names go faster than with shutil)."""
    peer.stop()
    logs = os.path.join(args.root, "logs")
    os.makedirs(logs, exist_ok=True)
    for name in ("twistd.log", "dovecot.log", "dovecot.stderr"):
        if os.path.exists(os.path.join(root, name)):
            shutil.copy(os.path.join(root, name), os.path.join(logs, "%s-%s-%s" % (peer.name, cell, name)))
    subprocess.run(["rm", "-rf", root], check=False)


# -- one session on a big maildrop --------------------------------------------------------------------

def login_stat(port: int, user: str) -> Tuple[client.Connection, float, int]:
    """A logged-in connection, the seconds from connect to STAT's answer, and the message count."""
    begin = time.perf_counter()
    conn = client.Connection(port, timeout=3600)
    conn.login(user, PASSWORD)
    count = int(conn.command(b"STAT").split()[1])
    return conn, time.perf_counter() - begin, count


def quit_(conn: client.Connection) -> None:
    try:
        conn.command(b"QUIT")
    finally:
        conn.close()


def retr_spread(conn: client.Connection, count: int, wanted: int) -> Tuple[float, float]:
    """Pipelined RETR of ``wanted`` messages spread evenly over 1..count (a message more than once
    when the maildrop is smaller): (messages/s, MB/s)."""
    numbers = [i * count // wanted + 1 for i in range(wanted)]
    begin = time.perf_counter()
    conn.send(b"".join(b"RETR %d\r\n" % n for n in numbers))
    octets = conn.bodies(len(numbers))
    elapsed = time.perf_counter() - begin
    return len(numbers) / elapsed, octets / elapsed / 1e6


def serving_pids(peer: Running, before: Sequence[int]) -> List[int]:
    """The processes that serve a session: ours' own; for Dovecot those started since ``before``
    (its pop3 process: one per session)."""
    now = peer.pids()
    if peer.name == "ours":
        return now
    return [pid for pid in now if pid not in before]


def measure_size(name: str, count: int, template: str, args: Any) -> Cell:
    user = size_user(count)
    root = os.path.join(args.root, "run", name.replace(".", "-"), user)
    clone(template, root, [user])
    peer = start(name, root, [user], args)
    cell: Cell = {"load1": os.getloadavg()[0]}
    try:
        idle = peer.pids()
        cell["idle_rss_mb"] = sum(peers.status_kb(pid, "VmRSS") for pid in idle) / 1024
        conn, cell["cold"], seen = login_stat(peer.target.port, user)
        try:
            if seen != count:
                raise RuntimeError("%s: STAT says %d messages, %d expected" % (name, seen, count))
            cell["retr_per_s"], cell["retr_mb_s"] = retr_spread(conn, count, args.retr)
            serving = serving_pids(peer, idle)
            cell["rss_mb"] = max(peers.status_kb(pid, "VmHWM") for pid in serving) / 1024
        finally:
            quit_(conn)
        warm = []
        for _ in range(3):
            conn, seconds, _ = login_stat(peer.target.port, user)
            quit_(conn)
            warm.append(seconds)
        cell["warm"] = statistics.median(warm)
    finally:
        finish(peer, root, user, args)
    log("%s %s: %s (load %s)" % (name, user, json.dumps({k: round(v, 4) for k, v in cell.items()}), loadavg()))
    return cell


# -- many sessions at once ----------------------------------------------------------------------------

class Session:
    """A logged-in POP3 session with a small read buffer (a thousand of them are open at once)."""

    def __init__(self, port: int, user: str):
        begin = time.perf_counter()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""
        self.line()
        for command in (b"USER " + user.encode(), b"PASS " + PASSWORD.encode(), b"STAT"):
            self.sock.sendall(command + b"\r\n")
            self.line()
        self.login_seconds = time.perf_counter() - begin

    def line(self) -> bytes:
        while b"\r\n" not in self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise client.ProtocolError("server closed the connection")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\r\n")
        if not line.startswith(b"+OK"):
            raise client.ProtocolError(line[:200].decode("utf-8", "replace"))
        return line

    def multiline(self, count: int) -> int:
        """Read ``count`` pipelined multi-line replies (nothing else outstanding); their octets.

        ``CRLF.CRLF`` cannot occur inside a dot-stuffed reply, so counting it counts the replies;
        the last 4 bytes of each read are kept to count one split between two reads.
        """
        data = self.pending
        seen, total, tail = data.count(TERMINATOR), len(data), data[-4:]
        while seen < count:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise client.ProtocolError("server closed the connection")
            seen += (tail + chunk[:4]).count(TERMINATOR) + chunk.count(TERMINATOR)
            tail = (tail + chunk)[-4:]
            total += len(chunk)
        self.pending = b""
        return total

    def quit(self) -> None:
        try:
            self.sock.sendall(b"QUIT\r\n")
            self.line()
        finally:
            self.sock.close()


_SESSIONS: List[Session] = []  # inherited by the forked client processes


def _retr_worker(job: Tuple[int, int, float]) -> Tuple[int, int]:
    """LIST + RETR on every session of a slice, all sent before any reply is read, until the
    deadline; returns (RETRs done, octets)."""
    first, step, seconds = job
    mine = _SESSIONS[first::step]
    done = octets = 0
    message = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        message = message % SESSION_MESSAGES + 1
        request = b"LIST\r\nRETR %d\r\n" % message
        for session in mine:
            session.sock.sendall(request)
        for session in mine:
            octets += session.multiline(2)
        done += len(mine)
    return done, octets


def measure_sessions(name: str, count: int, template: str, args: Any) -> Cell:
    users = [session_user(i) for i in range(count)]
    root = os.path.join(args.root, "run", name.replace(".", "-"), "sessions%d" % count)
    clone(template, root, users)
    peer = start(name, root, users, args)
    cell: Cell = {"load1": os.getloadavg()[0]}
    try:
        pids = peer.pids()
        dirty_idle = peers.pss_kb(pids)
        _SESSIONS[:] = [Session(peer.target.port, user) for user in users]
        try:
            cell["cold"] = statistics.median(s.login_seconds for s in _SESSIONS)
            clients = max(1, min(args.clients, count))
            jobs = [(i, clients, args.seconds) for i in range(clients)]
            begin = time.perf_counter()
            with multiprocessing.get_context("fork").Pool(clients) as pool:
                results = pool.map(_retr_worker, jobs)
            elapsed = time.perf_counter() - begin
            cell["retr_per_s"] = sum(r[0] for r in results) / elapsed
            cell["retr_mb_s"] = sum(r[1] for r in results) / elapsed / 1e6
            pids = peer.pids()
            cell["pss_mb"] = peers.pss_kb(pids, "Pss") / 1024
            # Per session: the growth of dirty PSS (clean shared-library pages move whenever an
            # unrelated process maps the same libraries, which swamps ten sessions' worth).
            cell["pss_per_session_kb"] = (peers.pss_kb(pids) - dirty_idle) / count
            cell["rss_sum_mb"] = sum(peers.status_kb(pid, "VmRSS") for pid in pids) / 1024
            cell["processes"] = len(pids)
        finally:
            for session in _SESSIONS:
                session.quit()
        _SESSIONS[:] = [Session(peer.target.port, user) for user in users]
        cell["warm"] = statistics.median(s.login_seconds for s in _SESSIONS)
        for session in _SESSIONS:
            session.quit()
    finally:
        for session in _SESSIONS:
            session.sock.close()
        del _SESSIONS[:]
        finish(peer, root, "sessions%d" % count, args)
    log("%s %d sessions: %s (load %s)" % (name, count, json.dumps({k: round(v, 4) for k, v in cell.items()}),
                                          loadavg()))
    return cell


# -- the tables -------------------------------------------------------------------------------------

#: (key, heading, format) of a maildrop-size row and of a sessions row, per peer.
SIZE_COLUMNS = [("cold", "login+STAT cold (s)", "%.2g"), ("warm", "login+STAT warm (s)", "%.2g"),
                ("rss_mb", "peak RSS (MB)", "%.1f"), ("retr_per_s", "RETR/s", "%.0f")]
SESSION_COLUMNS = [("cold", "login+STAT cold (s)", "%.2g"), ("warm", "login+STAT warm (s)", "%.2g"),
                   ("pss_mb", "memory, PSS (MB)", "%.1f"), ("pss_per_session_kb", "per session (KB)", "%.0f"),
                   ("retr_per_s", "RETR/s, all", "%.0f")]


def _grid(record: Dict[str, Any]) -> List[Tuple[str, List[List[str]]]]:
    """The two tables as rows of cells; a cell holds every peer's figure, ``ours / dovecot``."""
    peer_names = record["peers"]
    tables = []
    for kind, columns, label in (("sizes", SIZE_COLUMNS, "messages"), ("sessions", SESSION_COLUMNS, "sessions")):
        rows = record.get(kind) or {}
        if not rows:
            continue
        header = [label] + [heading for _, heading, _ in columns] + ["load average"]
        body = []
        for n in sorted(rows, key=int):
            cells = rows[n]
            line = ["{:,}".format(int(n))]
            for key, _, fmt in columns:
                values = [cells.get(peer, {}).get(key) for peer in peer_names]
                line.append(" / ".join("-" if v is None else _number(fmt, v) for v in values))
            line.append(" / ".join("%.1f" % cells[p]["load1"] if p in cells else "-" for p in peer_names))
            body.append(line)
        tables.append((kind, [header] + body))
    return tables


def _number(fmt: str, value: float) -> str:
    """``fmt`` with thousands separators for large figures."""
    return "{:,.0f}".format(value) if value >= 10_000 else fmt % value


def markdown(record: Dict[str, Any]) -> str:
    out = []
    for _, rows in _grid(record):
        out.append("| " + " | ".join(rows[0]) + " |")
        out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(rows[0]))) + "|")
        out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        out.append("")
    return "\n".join(out)


def rst(record: Dict[str, Any]) -> str:
    out = []
    for _, rows in _grid(record):
        out += [".. list-table::", "   :header-rows: 1", ""]
        for row in rows:
            out.append("   * - " + row[0])
            out += ["     - " + cell for cell in row[1:]]
        out.append("")
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------------------

def _ints(text: str) -> List[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x]


def parse_args(argv: Optional[List[str]] = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=_ints, default=[1_000, 10_000, 100_000, 1_000_000],
                        help="maildrop sizes, messages (comma-separated)")
    parser.add_argument("--sessions", type=_ints, default=[10, 100, 1_000],
                        help="concurrent session counts (comma-separated)")
    parser.add_argument("--peers", default="ours,dovecot")
    parser.add_argument("--workers", type=int, default=0, help="--workers N for our server")
    parser.add_argument("--ours-args", default="", help="extra twistd pop3ng arguments")
    parser.add_argument("--retr", type=int, default=10_000,
                        help="RETRs pipelined in the first session on each maildrop")
    parser.add_argument("--seconds", type=float, default=5.0, help="LIST/RETR time per session count")
    parser.add_argument("--clients", type=int, default=2, help="client processes sharing the sessions")
    parser.add_argument("--root", default="/tmp/pop3ng-growth", help="work directory (the mail is reused)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--report", default=None, metavar="JSON",
                        help="measure nothing: print the tables of a kept --json file")
    parser.add_argument("--format", choices=("md", "rst"), default="md")
    return parser.parse_args(argv)


def run(args: Any, command: str) -> Dict[str, Any]:
    from benchmarks.run import _commit, machine

    names = args.peers.split(",")
    peers.raise_nofile()
    log("preparing the mail under %s (load %s)" % (args.root, loadavg()))
    template = prepare(args.root, args.sizes, args.sessions)
    record: Dict[str, Any] = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": _commit(), "command": command, "peers": names, "sizes": {}, "sessions": {},
        "load_start": loadavg()}
    n = 0
    for kind, counts, measure in (("sizes", args.sizes, measure_size), ("sessions", args.sessions,
                                                                        measure_sessions)):
        for count in counts:
            cells: Dict[str, Cell] = {}
            order = names if n % 2 == 0 else names[::-1]  # neither peer always goes first
            n += 1
            for name in order:
                log("%s: %s %d" % (name, kind, count))
                try:
                    cells[name] = measure(name, count, template, args)
                except Exception as error:  # a failed cell leaves a hole in the table, not a crash
                    log("%s: %s %d failed: %r" % (name, kind, count, error))
            record[kind][str(count)] = cells
    record["load_end"] = loadavg()
    return record


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    render: Callable[[Dict[str, Any]], str] = rst if args.format == "rst" else markdown
    if args.report:
        with open(args.report) as f:
            record = json.load(f)
    else:
        command = "python3 -m benchmarks.growth " + " ".join(sys.argv[1:] if argv is None else argv)
        record = run(args, command)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(record, f, indent=2)
                f.write("\n")
    print("machine: %s" % record["machine"])
    print("date: %s, commit %s" % (record["date"], record["commit"]))
    print("command: %s" % record["command"])
    print("load average (1, 5, 15 min): %s at the start, %s at the end" % (record["load_start"],
                                                                          record["load_end"]))
    print("each cell: %s" % " / ".join(record["peers"]))
    print()
    print(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
