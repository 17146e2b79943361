"""TLS session rates: full handshakes and resumed sessions, ours vs twisted.mail, and the ceiling.

Run by hand (several rounds, peers alternating; median and spread printed)::

    python3 -m benchmarks.tls_sessions --rounds 5 --seconds 4 --clients 4

Per peer, ``--clients`` processes run for ``--seconds`` each:

* ``full``: a POP3 session over implicit TLS with a full handshake each time (connect, TLS,
  greeting, USER, PASS, STAT, UIDL, QUIT: the harness's "sessions" case over TLS);
* ``resumed``: the same, each client offering the session of its previous connection;
* ``hs``: connect, full handshake, one line each way, close. Against ``openssl s_server -rev``
  with the same certificate, key and TLS 1.3 cipher this is the ceiling: what the same client
  gets from OpenSSL's own server (written in C, one connection at a time);
* ``s_time new`` / ``s_time reuse``: handshakes only (full / resumed), by ``--clients``
  ``openssl s_time`` processes, against every server: a client in C. Its rates are bounded by
  s_time's own per-connection latency (every server gets about the same); read the server's CPU
  per handshake, which shows the server's cost without the Python client's.

One client (Python's ssl, the benchmarks' own), one certificate (trustme, ECDSA P-256), TLS 1.3,
TLS_AES_128_GCM_SHA256, on 127.0.0.1. The machine is shared: read the spread, not one round.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.peers import PASSWORD, Running, start_ours, start_twisted_mail  # noqa: E402
from tests.integration.support import stop_process  # noqa: E402

CIPHER = "TLS_AES_128_GCM_SHA256"


def _context(ca: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False  # certificates name "localhost"; we dial 127.0.0.1
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def _read_until(sock: ssl.SSLSocket, data: bytes, end: bytes) -> bytes:
    while end not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return data[data.index(end) + len(end):]


def _pop3(port: int, context: ssl.SSLContext, user: str, session: Any) -> Tuple[Any, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as sock:
            rest = _read_until(sock, b"", b"\r\n")
            for command, end in ((b"USER " + user.encode(), b"\r\n"), (b"PASS " + PASSWORD.encode(), b"\r\n"),
                                 (b"STAT", b"\r\n"), (b"UIDL", b"\r\n.\r\n"), (b"QUIT", b"\r\n")):
                sock.sendall(command + b"\r\n")
                rest = _read_until(sock, rest, end)
            return sock.session, bool(sock.session_reused)


def _echo(port: int, context: ssl.SSLContext, user: str, session: Any) -> Tuple[Any, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as sock:
            sock.sendall(b"QUIT\r\n")
            _read_until(sock, b"", b"\n")
            return sock.session, bool(sock.session_reused)


def _loop(job: Tuple[str, int, str, str, bool, float]) -> Tuple[int, int, int]:
    """One client: (sessions done, of which resumed, failures) in ``seconds``."""
    kind, port, ca, user, resume, seconds = job
    run: Callable[..., Tuple[Any, bool]] = _pop3 if kind == "pop3" else _echo
    context = _context(ca)
    done = resumed = failed = 0
    session = None
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        try:
            new, reused = run(port, context, user, session if resume else None)
            done += 1
            resumed += reused
            if resume:
                session = new
        except (OSError, ConnectionError):
            failed += 1
    return done, resumed, failed


def cpu_seconds(pids: List[int]) -> float:
    """User + system CPU time of the processes ``pids`` so far."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def measure(kind: str, port: int, ca: str, clients: int, seconds: float, resume: bool,
            server_pids: List[int]) -> Dict[str, float]:
    """The session rate, and the server's CPU per session: on a shared 2-core machine where the
    clients' own handshakes take most of the CPU, the second says more about the server."""
    jobs = [(kind, port, ca, "s%d" % i, resume, seconds) for i in range(clients)]
    with multiprocessing.Pool(clients) as pool:
        cpu = cpu_seconds(server_pids)
        start = time.perf_counter()
        results = pool.map(_loop, jobs)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(server_pids) - cpu
    done = sum(r[0] for r in results)
    return {"rate": done / elapsed, "resumed": sum(r[1] for r in results) / max(done, 1),
            "failed": sum(r[2] for r in results), "cpu_ms": 1000 * cpu / max(done, 1)}


def s_time(port: int, clients: int, seconds: float, reuse: bool, server_pids: List[int]) -> Dict[str, float]:
    """Handshakes per second from ``clients`` ``openssl s_time`` processes (a client in C, so that
    the server rather than the client is the limit); ``reuse``: resumed sessions."""
    command = ["openssl", "s_time", "-connect", "127.0.0.1:%d" % port, "-reuse" if reuse else "-new",
               "-time", str(max(1, int(seconds))), "-tls1_3", "-ciphersuites", CIPHER]
    cpu = cpu_seconds(server_pids)
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for _ in range(clients)]
    done = 0
    elapsed = 0.0
    for run in runs:
        output = run.communicate(timeout=seconds + 60)[0]
        found = re.search(r"(\d+) connections in ([\d.]+) real seconds", output)
        if found is None:
            raise RuntimeError("openssl s_time said: %s" % output[-500:])
        done += int(found.group(1))
        elapsed = max(elapsed, float(found.group(2)))
    cpu = cpu_seconds(server_pids) - cpu
    return {"rate": done / max(elapsed, 1e-9), "cpu_ms": 1000 * cpu / max(done, 1)}


def start_s_server(cert: str, key: str) -> Tuple[subprocess.Popen, int]:
    """``openssl s_server -rev`` with the peers' certificate and our TLS 1.3 cipher."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(["openssl", "s_server", "-quiet", "-rev", "-accept", "127.0.0.1:%d" % port,
                                "-cert", cert, "-key", key, "-tls1_3", "-ciphersuites", CIPHER,
                                "-num_tickets", "1"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    stop_process(process)
    raise RuntimeError("openssl s_server did not start")


def prepare(root: str, users: Dict[str, str]) -> None:
    for user in users:
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(root, "mail", user, "Maildir", sub), exist_ok=True)


def spread(values: List[float]) -> str:
    return "%8.0f  (%.0f-%.0f)" % (statistics.median(values), min(values), max(values))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    users = {"s%d" % i: PASSWORD for i in range(args.clients)}
    roots = [tempfile.mkdtemp(prefix="pop3ng-tls-bench-") for _ in range(2)]
    peers: List[Running] = []
    s_server: Optional[subprocess.Popen] = None
    results: Dict[str, List[float]] = {}
    cpu: Dict[str, List[float]] = {}
    try:
        for root in roots:
            prepare(root, users)
        peers = [start_ours(roots[0], users), start_twisted_mail(roots[1], users)]
        ours_certs = os.path.join(roots[0], "cert.pem"), os.path.join(roots[0], "key.pem")
        s_server, s_port = start_s_server(*ours_certs)
        for number in range(args.rounds):
            order = peers if number % 2 == 0 else peers[::-1]  # alternate who goes first
            for peer in order:
                ca = peer.target.ca or ""
                port = peer.target.tls_port or 0
                for mode, resume, kind in (("full", False, "pop3"), ("resumed", True, "pop3"),
                                           ("hs", False, "echo")):
                    if kind == "echo" and peer.name != "ours":
                        continue
                    out = measure(kind, port, ca, args.clients, args.seconds, resume, peer.pids())
                    results.setdefault("%s %s" % (peer.name, mode), []).append(out["rate"])
                    cpu.setdefault("%s %s" % (peer.name, mode), []).append(out["cpu_ms"])
                    results.setdefault("%s %s resumed%%" % (peer.name, mode), []).append(100 * out["resumed"])
                    results.setdefault("%s %s failures" % (peer.name, mode), []).append(out["failed"])
            out = measure("echo", s_port, peers[0].target.ca or "", args.clients, args.seconds, False,
                          [s_server.pid])
            results.setdefault("s_server hs", []).append(out["rate"])
            cpu.setdefault("s_server hs", []).append(out["cpu_ms"])
            out = measure("echo", s_port, peers[0].target.ca or "", args.clients, args.seconds, True,
                          [s_server.pid])
            results.setdefault("s_server hs-resumed", []).append(out["rate"])
            cpu.setdefault("s_server hs-resumed", []).append(out["cpu_ms"])
            results.setdefault("s_server hs-resumed resumed%", []).append(100 * out["resumed"])
            targets = [(peer.name, peer.target.tls_port or 0, peer.pids()) for peer in peers]
            for name, port, pids in targets + [("s_server", s_port, [s_server.pid])]:
                for mode, reuse in (("s_time new", False), ("s_time reuse", True)):
                    out = s_time(port, args.clients, args.seconds, reuse, pids)
                    results.setdefault("%s %s" % (name, mode), []).append(out["rate"])
                    cpu.setdefault("%s %s" % (name, mode), []).append(out["cpu_ms"])
            print("round %d done" % (number + 1), file=sys.stderr)
    finally:
        if s_server is not None:
            stop_process(s_server)
        for peer in peers:
            peer.stop()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    print("sessions/s, %d clients, %d rounds of %.0f s: median (min-max)" % (args.clients, args.rounds, args.seconds))
    for name, values in results.items():
        print("%-34s %s" % (name, spread(values)))
    print("server CPU ms per session: median (min-max)")
    for name, values in cpu.items():
        print("%-34s %8.2f  (%.2f-%.2f)" % (name, statistics.median(values), min(values), max(values)))
    by_cpu = [b / a for a, b in zip(cpu["ours full"], cpu["twisted.mail full"])]
    print("%-34s %8.2fx (%.2f-%.2f)" % ("twisted.mail / ours, CPU per full", statistics.median(by_cpu),
                                        min(by_cpu), max(by_cpu)))
    ratios = [a / b for a, b in zip(results["ours full"], results["twisted.mail full"])]
    print("%-34s %8.2fx (%.2f-%.2f)  goal >= 1.5x" % ("ours / twisted.mail, full", statistics.median(ratios),
                                                      min(ratios), max(ratios)))
    for name in ("twisted.mail", "s_server"):
        ratio = [a / b for a, b in zip(results["ours s_time new"], results["%s s_time new" % name])]
        print("%-34s %8.2fx (%.2f-%.2f)" % ("ours / %s, s_time new" % name, statistics.median(ratio),
                                            min(ratio), max(ratio)))
    ceiling = [a / b for a, b in zip(results["ours hs"], results["s_server hs"])]
    print("%-34s %8.2f  (%.2f-%.2f)" % ("ours hs / s_server hs (ceiling)", statistics.median(ceiling),
                                        min(ceiling), max(ceiling)))


if __name__ == "__main__":
    main()
