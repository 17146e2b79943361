"""``--workers N``: several processes share the ports; the maildrop lock still holds across them."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Dict, List

from twisted.python import usage
from twisted.trial import unittest

from twisted_pop3ng.service import build as tap
from twisted_pop3ng.service import workers

from .sockdiag import listen_backlog
from .dovecot import free_port
from .e2e import wait_for
from .support import Session, process_tree, start_server

PASSWORD = "correct horse battery staple"


def somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


def serving_pid(client_port: int, server_port: int, pids: List[int]) -> int:
    """The process holding the server side of the connection from ``client_port``."""
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (int(local.split(":")[1], 16) == server_port
                    and int(remote.split(":")[1], 16) == client_port):
                inode = fields[9]
    if inode is None:
        raise AssertionError("connection not found")
    target = "socket:[%s]" % inode
    for pid in pids:
        try:
            for fd in os.listdir("/proc/%d/fd" % pid):
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == target:
                    return pid
        except OSError:
            continue
    raise AssertionError("no process holds the connection")


class WorkersTests(unittest.TestCase):
    def setUp(self) -> None:
        self.server = start_server(os.path.abspath(self.mktemp()), {"alice": PASSWORD},
                                   extra_args=["--workers", "2", "--max-connections-per-address", "0"])
        self.addCleanup(self.server.stop)
        self.server.deliver("alice", b"Subject: x\n\nhello\n")
        deadline = time.monotonic() + 20
        while len(process_tree(self.server.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.pids = process_tree(self.server.process.pid)
        self.assertEqual(len(self.pids), 2, self.pids)

    def connect(self) -> Session:
        session = Session(self.server.connect())
        self.addCleanup(session.close)
        return session

    def test_both_processes_serve_and_the_lock_holds_across_them(self) -> None:
        # Keep connections open until both processes hold at least one.
        by_pid: Dict[int, Session] = {}
        for _ in range(300):
            session = self.connect()
            self.assertTrue(session.line().startswith(b"+OK"))
            by_pid.setdefault(serving_pid(session.sock.getsockname()[1], self.server.port,
                                          self.pids), session)
            if len(by_pid) == 2:
                break
        self.assertEqual(len(by_pid), 2, "every connection went to one process")
        holder, other = by_pid.values()
        self.assertTrue(holder.command(b"USER alice").startswith(b"+OK"))
        self.assertTrue(holder.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK"))
        self.assertTrue(other.command(b"USER alice").startswith(b"+OK"))
        reply = other.command(b"PASS " + PASSWORD.encode())
        self.assertTrue(reply.startswith(b"-ERR [IN-USE]"), reply)
        self.assertEqual(holder.command(b"STAT"), b"+OK 1 %d\r\n" % len(b"Subject: x\r\n\r\nhello\r\n"))
        holder.command(b"QUIT")
        self.assertTrue(other.command(b"USER alice").startswith(b"+OK"))
        self.assertTrue(other.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK"))

    def test_a_worker_runs_in_the_masters_environment(self) -> None:
        # No PYTHONPATH (or anything else) rewritten for the child: its configuration comes
        # through its stdin.
        def environ(pid: int) -> List[bytes]:
            with open("/proc/%d/environ" % pid, "rb") as f:
                return sorted(f.read().split(b"\0"))

        worker = [p for p in self.pids if p != self.server.process.pid][0]
        self.assertEqual(environ(worker), environ(self.server.process.pid))

    def test_a_dead_worker_is_replaced_and_stop_ends_all(self) -> None:
        worker = [p for p in self.pids if p != self.server.process.pid][0]
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 20
        pids = []
        while time.monotonic() < deadline:
            pids = process_tree(self.server.process.pid)
            if len(pids) == 2 and worker not in pids:
                break
            time.sleep(0.1)
        self.assertEqual(len(pids), 2, pids)
        self.assertNotIn(worker, pids)
        for _ in range(4):
            session = self.connect()
            self.assertTrue(session.login(b"alice", PASSWORD.encode()).startswith(b"+OK"))
            session.command(b"QUIT")
        self.server.stop()
        for pid in pids:
            self.assertFalse(os.path.exists("/proc/%d/status" % pid) and _alive(pid), pid)

    def test_a_killed_worker_is_named_with_its_signal(self) -> None:
        worker = [p for p in self.pids if p != self.server.process.pid][0]
        os.kill(worker, signal.SIGKILL)
        self.assertTrue(wait_for(lambda: "was killed by signal 9; starting it again" in self.server.log(),
                                 timeout=20), self.server.log()[-2000:])


    def test_workers_exit_when_the_master_is_killed(self) -> None:
        # systemd's Restart= starts a new master after a SIGKILL: orphaned workers would keep the
        # port (so the new one fails with "Address already in use") and serve the old settings.
        workers_only = [p for p in self.pids if p != self.server.process.pid]
        os.kill(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(60)
        deadline = time.monotonic() + 60
        while any(_alive(p) for p in workers_only) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual([p for p in workers_only if _alive(p)], [])
        # What a restarted master does first: bind and listen on the same port.
        again = socket.socket()
        self.addCleanup(again.close)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", self.server.port))
        again.listen()


def _alive(pid: int) -> bool:
    try:
        with open("/proc/%d/status" % pid) as f:
            return "\nState:\tZ" not in f.read()
    except OSError:
        return False


class WorkerOptionTests(unittest.TestCase):
    def test_workers_must_be_positive(self) -> None:
        users = os.path.abspath(self.mktemp())
        with open(users, "w") as f:
            f.write("alice:{PLAIN}x\n")
        options = tap.Options()
        self.assertRaises(usage.UsageError, options.parseOptions,
                          ["--mailbox", "maildir:/tmp/{user}", "--auth", "passwd-file:" + users,
                           "--workers", "0"])

    def test_worker_arguments(self) -> None:
        # Workers get the arguments the master's Options parsed (not a search of sys.argv), minus
        # every --workers.
        users = os.path.abspath(self.mktemp())
        with open(users, "w") as f:
            f.write("alice:{PLAIN}x\n")
        args = ["--workers", "4", "--auth", "passwd-file:" + users, "--workers=2",
                "--mailbox", "maildir:/tmp/{user}", "--listen", "tcp:0"]
        options = tap.Options()
        options.parseOptions(args)
        self.assertEqual(options.arguments, args)
        self.assertEqual(workers.without_workers(options.arguments),
                         ["--auth", "passwd-file:" + users, "--mailbox", "maildir:/tmp/{user}",
                          "--listen", "tcp:0"])

    def test_a_worker_is_configured_through_its_stdin_not_its_environment(self) -> None:
        # The configuration line a worker reads: its arguments, its sockets numbered from
        # FIRST_FD, and the master's sys.path (no PYTHONPATH is exported).
        line = workers.worker_config(["--auth", "x"], [(17, "plain"), (18, "tls")], ["/a", "/b"])
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        import json

        self.assertEqual(json.loads(line), {
            "arguments": ["--auth", "x"],
            "sockets": "%d:plain,%d:tls" % (workers.FIRST_FD, workers.FIRST_FD + 1),
            "sys_path": ["/a", "/b"]})


class BacklogTests(unittest.TestCase):
    def test_tcp_endpoints_get_a_large_backlog_unless_given(self) -> None:
        self.assertEqual(tap.with_backlog("tcp:110"), "tcp:110:backlog=%d" % tap.DEFAULT_BACKLOG)
        self.assertEqual(tap.with_backlog("tcp6:995:interface=\\:\\:1"),
                         "tcp6:995:interface=\\:\\:1:backlog=%d" % tap.DEFAULT_BACKLOG)
        self.assertEqual(tap.with_backlog("tcp:110:backlog=5"), "tcp:110:backlog=5")
        self.assertEqual(tap.with_backlog("unix:/run/pop3.sock"), "unix:/run/pop3.sock")

    def test_a_burst_of_connections_is_greeted_at_once(self) -> None:
        import socket

        server = start_server(os.path.abspath(self.mktemp()), {"alice": PASSWORD}, tls=False,
                              extra_args=["--max-connections-per-address", "0"])
        self.addCleanup(server.stop)
        # With Twisted's default backlog of 50 the last of a burst wait for SYN retransmits (1 s,
        # then 3 s): the kernel's own record of the listener's backlog says whether that can happen.
        backlog = listen_backlog(server.port)
        self.assertEqual(backlog, min(tap.DEFAULT_BACKLOG, somaxconn()))
        self.assertGreaterEqual(backlog, 300)
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(300)]
        try:
            for sock in socks:
                self.assertTrue(sock.recv(100).startswith(b"+OK"))
        finally:
            for sock in socks:
                sock.close()


class WorkerLogTests(unittest.TestCase):
    def test_every_process_logs_to_the_masters_logfile(self) -> None:
        """Workers wrote their log lines (failed logins too) to their own stdout, so with
        ``twistd --logfile`` -- where fail2ban looks -- only the master's share arrived."""
        root = os.path.abspath(self.mktemp())
        logfile = os.path.join(root, "pop3ng.log")
        port = free_port()  # (the port's log line goes to the logfile, where start_server does not look)
        server = start_server(root, {"alice": PASSWORD}, tls=False, plain_listeners=0,
                              twistd_args=["--logfile", logfile],
                              extra_args=["--listen", "tcp:%d:interface=127.0.0.1" % port,
                                          "--workers", "3", "--max-connections-per-address", "0",
                                          "--auth-failure-delay", "0", "--allow-plaintext-auth"])
        self.addCleanup(server.stop)
        server.ports = [port]
        self.assertTrue(wait_for(lambda: len(process_tree(server.process.pid)) == 3, timeout=20))
        self.assertTrue(wait_for(lambda: _accepts(port), timeout=20))
        pids = process_tree(server.process.pid)
        served_by = set()
        for _ in range(60):
            session = Session(server.connect())
            self.assertTrue(session.line().startswith(b"+OK"))
            served_by.add(serving_pid(session.sock.getsockname()[1], server.port, pids))
            session.command(b"USER alice")
            self.assertTrue(session.command(b"PASS wrong").startswith(b"-ERR [AUTH]"))
            session.close()
        self.assertGreater(len(served_by), 1, "every connection went to one process")

        def logged() -> int:
            with open(logfile, encoding="utf-8", errors="replace") as f:
                return f.read().count("auth failed: user=alice")

        self.assertTrue(wait_for(lambda: logged() == 60, timeout=20), logged())
        self.assertNotIn("auth failed", server.log())  # (stdout: nothing beside the logfile)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


class WorkerStartTests(unittest.TestCase):
    def test_sighup_does_not_kill_a_worker_still_starting(self) -> None:
        """The master forwards SIGHUP (TLS reload) to every worker; one still starting had no
        handler yet, and SIGHUP's default action ended it (a restart counted against the limit)."""
        import subprocess
        import sys

        child = subprocess.Popen([sys.executable, "-c", workers.BOOTSTRAP], stdin=subprocess.PIPE)
        self.addCleanup(child.kill)
        time.sleep(0.5)  # (reading its configuration line, which has not come)
        child.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        self.assertIsNone(child.poll(), "the starting worker died of SIGHUP")
        child.stdin.close()  # the master gone before it said anything: a quiet exit
        self.assertEqual(child.wait(timeout=10), 0)

    def test_a_worker_that_cannot_start_comes_back_at_the_next_sighup(self) -> None:
        """A certificate broken on disk (the master keeps its loaded one) made a restarted worker
        fail with a traceback ten times in a minute, and then it was never started again."""
        server = start_server(os.path.abspath(self.mktemp()), {"alice": PASSWORD},
                              extra_args=["--workers", "2", "--max-connections-per-address", "0"])
        self.addCleanup(server.stop)
        self.assertTrue(wait_for(lambda: len(process_tree(server.process.pid)) == 2, timeout=20))
        cert = server.certs["cert"]
        with open(cert, "rb") as f:
            good = f.read()
        with open(cert, "wb") as f:
            f.write(b"not a certificate\n")
        worker = [p for p in process_tree(server.process.pid) if p != server.process.pid][0]
        os.kill(worker, signal.SIGKILL)
        self.assertTrue(wait_for(lambda: "too many restarts" in server.log(), timeout=60),
                        server.log()[-3000:])
        log = server.log()
        self.assertIn("cannot start: ", log)
        self.assertIn("exited with status 2", log)
        self.assertNotIn("Traceback", log)
        with open(cert, "wb") as f:
            f.write(good)
        os.kill(server.process.pid, signal.SIGHUP)
        self.assertTrue(wait_for(lambda: len(process_tree(server.process.pid)) == 2, timeout=20),
                        server.log()[-3000:])
        session = Session(server.connect())
        self.addCleanup(session.close)
        self.assertTrue(session.login(b"alice", PASSWORD.encode()).startswith(b"+OK"))

