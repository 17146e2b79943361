"""Soak: a mixed workload against one real server for a while; memory and descriptors stay flat.

Logins (USER/PASS, plain, STLS and POP3S), LIST/UIDL/RETR, DELE with QUIT and with a dropped
connection, pipelined commands and a few bad ones, from four client threads on several loopback
addresses. Every reply is checked (RETR byte for byte); the only ``-ERR`` replies allowed are the
ones the workload provokes. ``POP3NG_SOAK_SECONDS`` sets the duration (``.ci/run`` runs 120 s in
its first leg; 30 minutes by hand: ``POP3NG_SOAK_SECONDS=1800 trial tests.integration.test_soak``).
"""

from __future__ import annotations

import os
import random
import ssl
import socket
import threading
import time
from typing import Dict, List, Tuple

from twisted.trial import unittest

from .e2e import stuffed, wire_lines
from .support import Session, start_server

PASSWORD = "correct horse battery staple"
USERS = ["soak%d" % i for i in range(12)]


def message(user: str, n: int) -> bytes:
    return b"Subject: %s %d\n\n.leading dot\n%s\n" % (user.encode(), n, b"x" * (n % 97) * 40)


def fds(pid: int) -> int:
    return len(os.listdir("/proc/%d/fd" % pid))


def rss_kb(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class SoakTests(unittest.TestCase):
    def test_mixed_workload_keeps_memory_and_descriptors_flat(self) -> None:
        seconds = float(os.environ.get("POP3NG_SOAK_SECONDS", "15"))
        root = os.path.abspath(self.mktemp())
        server = start_server(root, {u: PASSWORD for u in USERS},
                              extra_args=["--trusted-network", "127.0.0.0/8",
                                          "--max-connections-per-address", "0"])
        self.addCleanup(server.stop)
        contents: Dict[str, Dict[bytes, bytes]] = {}  # user -> {UIDL: stored message}
        counter = [0]
        lock = threading.Lock()
        for user in USERS:
            for _ in range(3):
                counter[0] += 1
                server.deliver(user, message(user, counter[0]))
        context = ssl.create_default_context(cafile=server.certs["ca"])
        errors: List[str] = []
        operations = [0]
        stop = threading.Event()
        samples: List[Tuple[float, int, int]] = []
        pid = server.process.pid

        def connect(kind: str, source: str) -> Session:
            if kind == "pop3s":
                sock = socket.create_connection(("127.0.0.1", server.tls_port), 10, (source, 0))
                session = Session(context.wrap_socket(sock, server_hostname="localhost"))
                assert session.line().startswith(b"+OK")
                return session
            sock = socket.create_connection(("127.0.0.1", server.port), 10, (source, 0))
            session = Session(sock)
            assert session.line().startswith(b"+OK")
            if kind == "stls":
                assert session.command(b"STLS").startswith(b"+OK")
                session = Session(context.wrap_socket(sock, server_hostname="localhost"))
            return session

        def one_round(rng: random.Random, user: str) -> None:
            kind = rng.choice(["plain", "stls", "pop3s"])
            session = connect(kind, "127.0.0.%d" % rng.randint(2, 20))
            try:
                if rng.random() < 0.05:
                    reply = session.command(b"XYZZY")  # provoked: an unknown command
                    assert reply.startswith(b"-ERR"), reply
                assert session.command(b"USER " + user.encode()).startswith(b"+OK")
                reply = session.command(b"PASS " + PASSWORD.encode())
                if reply.startswith(b"-ERR [IN-USE]"):
                    return  # provoked: another thread holds this maildrop right now
                assert reply.startswith(b"+OK"), reply
                uidl = session.command(b"UIDL")
                assert uidl.startswith(b"+OK"), uidl
                listing = [line.split() for line in session.body().split(b"\r\n")[:-2]]
                with lock:
                    known = dict(contents.get(user, {}))
                for number, uid in listing:
                    if uid in known and rng.random() < 0.5:
                        session.send(b"RETR " + number + b"\r\n")
                        assert session.line().startswith(b"+OK")
                        assert session.body() == stuffed(wire_lines(known[uid])), (user, uid)
                action = rng.random()
                if listing and action < 0.4:
                    number, uid = rng.choice(listing)
                    assert session.command(b"DELE " + number).startswith(b"+OK")
                    if action < 0.3:
                        assert session.command(b"QUIT").startswith(b"+OK")
                        with lock:
                            contents[user].pop(uid, None)
                    # else: dropped without QUIT -- nothing may be deleted
                else:
                    session.send(b"NOOP\r\nSTAT\r\nLIST\r\n")  # pipelined
                    assert session.line().startswith(b"+OK")
                    assert session.line().startswith(b"+OK")
                    assert session.line().startswith(b"+OK")
                    session.body()
                    assert session.command(b"QUIT").startswith(b"+OK")
            finally:
                session.close()

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                user = rng.choice(USERS)
                try:
                    one_round(rng, user)
                    operations[0] += 1
                except Exception as error:
                    errors.append("%s: %r" % (user, error))
                    return
                if rng.random() < 0.3:
                    with lock:
                        counter[0] += 1
                        data = message(user, counter[0])
                        name = server.deliver(user, data)
                        contents.setdefault(user, {})[name.partition(":")[0].encode()] = data

        # What is in the maildirs now, by UIDL (the maildir base name).
        for user in USERS:
            maildir = server.maildir(user)
            for sub in ("new", "cur"):
                for name in os.listdir(os.path.join(maildir, sub)):
                    with open(os.path.join(maildir, sub, name), "rb") as f:
                        contents.setdefault(user, {})[name.partition(":")[0].encode()] = f.read()
        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
        baseline_fds = fds(pid)
        started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            while time.monotonic() - started < seconds and not errors:
                time.sleep(min(1.0, seconds / 20))
                samples.append((time.monotonic() - started, rss_kb(pid), fds(pid)))
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        self.assertEqual(errors, [])
        # Every session's descriptors get closed (as many as before any client came) once the last
        # connections' close reaches the server: waited for, however slow the machine.
        deadline = time.monotonic() + 60
        while fds(pid) > baseline_fds and time.monotonic() < deadline:
            time.sleep(0.05)
        idle_fds = fds(pid)
        warm = [s for s in samples if s[0] >= seconds / 4]
        first, last = warm[0][1], max(s[1] for s in warm[len(warm) // 2:])
        print("soak %.0f s: %d sessions, RSS after warm-up %d -> %d kB (max of the second half), "
              "descriptors idle %d (samples %s)"
              % (seconds, operations[0], first, last, idle_fds, [s[2] for s in samples][-5:]))
        print("descriptors before the workload %d, after %d" % (baseline_fds, idle_fds))
        print("RSS samples (s, kB): %s" % [(round(t), r) for t, r, _ in samples])
        self.assertGreater(operations[0], 10)
        # Flat: the second half of the run grows at most a few MB over the warm-up point.
        self.assertLess(last - first, 4096)
        self.assertLessEqual(idle_fds, baseline_fds)
        self.assertNotIn("Traceback", server.log())

