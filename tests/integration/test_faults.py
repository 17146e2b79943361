"""Faults with real processes and real filesystems: the server stays up, answers, loses nothing.

* SIGKILL in the middle of UPDATE, at each unlink of the commit (strace injects the signal at the
  Nth ``unlinkat`` of the process serving the session, so the points are exact, not timed), with
  and without ``--workers``: every message is present or deleted as the client asked, the kept
  ones byte for byte, and the next login gets the lock at once.
* A full disk (a small tmpfs mounted by the test) under live sessions: ``-ERR [SYS/TEMP]`` where a
  reply is due, RETR and DELE/QUIT still work, the server survives, no traceback.
* SIGTERM with sessions open: nothing uncommitted is committed, the process exits promptly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import Dict, List, Set

from twisted.trial import unittest

from .e2e import stuffed, wire_lines
from .support import Session, process_tree, start_server

PASSWORD = "correct horse battery staple"
COUNT = 8
DOOMED = [2, 3, 5, 8]  # message numbers the client deletes


def message(i: int) -> bytes:
    return b"Subject: message %d\n\n%s\n.dot line %d\n" % (i, b"body " * (i + 1), i)


def login(server, user: str = "alice") -> Session:
    session = Session(server.connect())
    greeting = session.line()
    assert greeting.startswith(b"+OK"), greeting
    session.command(b"USER " + user.encode())
    reply = session.command(b"PASS " + PASSWORD.encode())
    if not reply.startswith(b"+OK"):
        session.close()
        raise AssertionError("login refused: %r" % reply)
    return session


def contents(maildir: str) -> Dict[bytes, str]:
    """Message bytes -> file name, for every message file in new/ and cur/."""
    found = {}
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(maildir, sub)):
            with open(os.path.join(maildir, sub, name), "rb") as f:
                found[f.read()] = name
    return found


def _kill_all(pids: List[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class KillDuringUpdateTests(unittest.TestCase):
    """strace ``-e inject=unlinkat:signal=KILL:when=N``: the serving process dies at the Nth
    unlink, i.e. after N-1 of the client's deletions were done."""

    def kill_at(self, nth: int, workers: int) -> None:
        root = os.path.abspath(self.mktemp())
        strace = shutil.which("strace")
        self.assertIsNotNone(strace, "strace is needed (Debian package strace)")
        prefix = [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=unlinkat",
                  "-e", "inject=unlinkat:signal=KILL:when=%d" % nth]
        extra = ["--max-connections-per-address", "0"]
        if workers > 1:
            extra += ["--workers", str(workers)]
        server = start_server(root, {"alice": PASSWORD}, tls=False, extra_args=extra,
                              command_prefix=prefix)
        self.addCleanup(server.stop)
        # strace detaches and exits on SIGTERM, leaving its tracee running: kill the tree.
        traced = [pid for pid in process_tree(server.process.pid) if pid != server.process.pid]
        self.addCleanup(_kill_all, traced)
        for i in range(1, COUNT + 1):
            server.deliver("alice", message(i))
        session = login(server)
        self.addCleanup(session.close)
        for number in DOOMED:
            self.assertTrue(session.command(b"DELE %d" % number).startswith(b"+OK"))
        quit_reply = session.command(b"QUIT")
        kept = {message(i) for i in range(1, COUNT + 1) if i not in DOOMED}
        doomed = {message(i) for i in DOOMED}
        on_disk = set(contents(server.maildir("alice")))
        # Nothing kept is lost or changed; nothing appears that was not there.
        self.assertEqual(on_disk & kept, kept)
        self.assertEqual(on_disk - kept - doomed, set())
        gone = len(doomed - on_disk)
        if nth <= len(DOOMED):
            self.assertEqual(quit_reply, b"", "the server answered QUIT though it was killed")
            self.assertEqual(gone, nth - 1)  # the deletions before the killing unlink happened
        else:
            self.assertTrue(quit_reply.startswith(b"+OK"), quit_reply)
            self.assertEqual(gone, len(DOOMED))
        server.stop()
        _kill_all(traced)
        # A new server (a killed worker is replaced by its master instead: see below) gets the
        # lock at once, and the client's next QUIT finishes the job.
        again = start_server(root, {"alice": PASSWORD}, tls=False)
        self.addCleanup(again.stop)
        session = login(again)
        self.addCleanup(session.close)
        listing = session.command(b"STAT")
        self.assertEqual(listing.split()[1], str(COUNT - gone).encode(), listing)
        bodies = []
        for number in range(1, COUNT - gone + 1):
            self.assertTrue(session.command(b"RETR %d" % number).startswith(b"+OK"))
            bodies.append(session.body())
        expected = [m for m in (message(i) for i in range(1, COUNT + 1)) if m in on_disk]
        self.assertEqual(sorted(bodies), sorted(stuffed(wire_lines(m)) for m in expected))

    def test_killed_at_each_deletion(self) -> None:
        for nth in range(1, len(DOOMED) + 2):
            self.kill_at(nth, workers=1)

    def test_killed_worker_mid_update(self) -> None:
        # Whichever process serves the session (master or worker) dies at its 2nd unlink.
        self.kill_at(2, workers=2)


class KilledWorkerLockTests(unittest.TestCase):
    def test_the_lock_of_a_killed_worker_is_free_for_the_replacement(self) -> None:
        root = os.path.abspath(self.mktemp())
        server = start_server(root, {"alice": PASSWORD}, tls=False,
                              extra_args=["--workers", "2", "--max-connections-per-address", "0"])
        self.addCleanup(server.stop)
        server.deliver("alice", message(1))
        from .test_workers import serving_pid

        deadline = time.monotonic() + 20
        while len(process_tree(server.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = process_tree(server.process.pid)
        self.assertEqual(len(pids), 2, pids)
        # Connections until one is served by the worker (not the master, whose death ends all).
        for _ in range(300):
            session = Session(server.connect())
            self.addCleanup(session.close)
            self.assertTrue(session.line().startswith(b"+OK"))
            holder = serving_pid(session.sock.getsockname()[1], server.port, pids)
            if holder != server.process.pid:
                break
        else:
            self.fail("no connection reached the worker")
        session.command(b"USER alice")
        self.assertTrue(session.command(b"PASS " + PASSWORD.encode()).startswith(b"+OK"))
        self.assertTrue(session.command(b"DELE 1").startswith(b"+OK"))
        os.kill(holder, signal.SIGKILL)
        self.assertEqual(session.line(), b"")  # the connection died with its process
        # The flock died with the process: the next login, wherever it lands, gets the lock.
        second = login(server)
        self.addCleanup(second.close)
        self.assertEqual(second.command(b"STAT"), b"+OK 1 %d\r\n" % len(b"".join(
            line + b"\r\n" for line in wire_lines(message(1)))))


def _can_mount() -> bool:
    return os.geteuid() == 0


class FullDiskTests(unittest.TestCase):
    """The maildirs on a 1 MiB tmpfs, filled to the last block while sessions run."""

    def setUp(self) -> None:
        self.assertTrue(_can_mount(), "mounting a tmpfs needs root (CI runs as root)")
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.root, "mail"))
        mount = os.path.join(self.root, "mail")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=4096,mode=0755", "tmpfs", mount], check=True)
        self.addCleanup(subprocess.run, ["umount", "-l", mount], check=False)
        self.server = start_server(self.root, {"alice": PASSWORD, "bob": PASSWORD}, tls=False)
        self.addCleanup(self.server.stop)
        for i in range(1, 4):
            self.server.deliver("alice", message(i))
        # bob's maildir exists, but he never logged in: no lock file, no index yet.
        self.server.deliver("bob", message(9))
        self.mount = mount

    def fill(self) -> None:
        filler = os.path.join(self.mount, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        self.assertEqual(os.statvfs(self.mount).f_bavail, 0)

    def test_sessions_on_a_full_disk(self) -> None:
        alice = login(self.server)  # lock and index written while there was room
        self.addCleanup(alice.close)
        self.fill()
        self.assertTrue(alice.command(b"STAT").startswith(b"+OK 3 "))
        self.assertTrue(alice.command(b"RETR 2").startswith(b"+OK"))
        self.assertEqual(alice.body(), stuffed(wire_lines(message(2))))
        self.assertTrue(alice.command(b"DELE 1").startswith(b"+OK"))
        self.assertTrue(alice.command(b"QUIT").startswith(b"+OK"))  # unlink needs no space
        self.assertEqual(set(contents(self.server.maildir("alice"))), {message(2), message(3)})
        # A first login needs a lock file: no room for it is a clear temporary error.
        bob = Session(self.server.connect())
        self.addCleanup(bob.close)
        bob.line()
        bob.command(b"USER bob")
        reply = bob.command(b"PASS " + PASSWORD.encode())
        self.assertTrue(reply.startswith(b"+OK") or reply.startswith(b"-ERR [SYS/TEMP]"), reply)
        bob.command(b"QUIT")
        # The server is still up and serving; room again, and everything works.
        os.unlink(os.path.join(self.mount, "filler"))
        again = login(self.server)
        self.addCleanup(again.close)
        self.assertTrue(again.command(b"STAT").startswith(b"+OK 2 "))
        again.command(b"QUIT")
        self.assertNotIn("Traceback", self.server.log())


class SigtermTests(unittest.TestCase):
    def test_sigterm_commits_nothing_uncommitted_and_exits(self) -> None:
        root = os.path.abspath(self.mktemp())
        users = {"u%d" % i: PASSWORD for i in range(5)}
        server = start_server(root, users, tls=False, extra_args=["--max-connections-per-address", "0"])
        self.addCleanup(server.stop)
        sessions: List[Session] = []
        for user in users:
            for i in range(1, 4):
                server.deliver(user, message(i))
            session = login(server, user)
            self.addCleanup(session.close)
            self.assertTrue(session.command(b"DELE 1").startswith(b"+OK"))
            sessions.append(session)
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(60)
        except subprocess.TimeoutExpired:
            self.fail("the server did not exit on SIGTERM:\n" + server.log()[-3000:])
        for session in sessions:
            self.assertEqual(session.line(), b"")  # closed, no reply to anything
        for user in users:
            self.assertEqual(len(contents(os.path.join(root, "mail", user, "Maildir"))), 3, user)
        self.assertNotIn("Traceback", server.log())


class ReloadUnderLoadTests(unittest.TestCase):
    """SIGHUP certificate reloads while clients keep handshaking (POP3S and STLS, two processes):
    not one handshake fails, and afterwards every process presents the last certificate."""

    def test_no_failed_handshake_across_reloads(self) -> None:
        import ssl
        import threading

        import trustme

        root = os.path.abspath(self.mktemp())
        server = start_server(root, {"alice": PASSWORD},
                              extra_args=["--workers", "2", "--max-connections-per-address", "0"])
        self.addCleanup(server.stop)
        ca = trustme.CA()
        leaves = [ca.issue_cert("localhost", "127.0.0.1", common_name="leaf%d" % i) for i in range(2)]

        def install(leaf) -> None:
            # Each file replaced atomically; SIGHUP comes only after both are in place.
            for path, pem in ((server.certs["cert"], leaf.cert_chain_pems[0]),
                              (server.certs["key"], leaf.private_key_pem)):
                pem.write_to_path(path + ".new")
                os.replace(path + ".new", path)

        context = ssl.create_default_context()
        ca.configure_trust(context)

        def presented() -> Set[str]:
            """The certificates 20 new POP3S connections got (both processes answer some)."""
            seen = set()
            for _ in range(20):
                try:
                    tls = context.wrap_socket(socket_for(server, False), server_hostname="localhost")
                except ssl.SSLCertVerificationError:
                    seen.add("the test certificate")  # this process has not reloaded yet
                    continue
                seen.add(dict(x[0] for x in tls.getpeercert()["subject"])["commonName"])
                tls.close()
            return seen

        def wait_until(condition, what: str) -> None:
            deadline = time.monotonic() + 60
            while not condition():
                self.assertLess(time.monotonic(), deadline, what)
                time.sleep(0.05)

        install(leaves[0])
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: presented() == {"leaf0"}, "the first reload never took effect")
        failures: List[str] = []
        handshakes = [0]
        stop = threading.Event()

        def client(stls: bool) -> None:
            while not stop.is_set():
                try:
                    sock = socket_for(server, stls)
                    tls = context.wrap_socket(sock, server_hostname="localhost")
                    session = Session(tls)
                    if not stls:
                        assert session.line().startswith(b"+OK")
                    assert session.command(b"CAPA").startswith(b"+OK")
                    session.body()
                    session.close()
                    handshakes[0] += 1
                except Exception as error:  # any failure is the finding
                    failures.append(repr(error))

        threads = [threading.Thread(target=client, args=(i % 2 == 1,)) for i in range(4)]
        for thread in threads:
            thread.start()
        try:
            for i in range(10):
                install(leaves[(i + 1) % 2])
                server.process.send_signal(signal.SIGHUP)
                # a few handshakes while this reload is under way, however slow the machine
                before = handshakes[0]
                wait_until(lambda: handshakes[0] >= before + 3 or failures != [], "no handshakes")
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        self.assertEqual(failures, [])
        # The last reload (leaf0 after ten swaps) is what both processes now present.
        wait_until(lambda: presented() == {"leaf0"}, "the last reload never took effect everywhere")


def socket_for(server, stls: bool):
    """A TCP connection to the POP3S port, or to the plain port after a successful STLS."""
    import socket

    if not stls:
        return socket.create_connection(("127.0.0.1", server.tls_port), 10)
    sock = socket.create_connection(("127.0.0.1", server.port), 10)
    plain = Session(sock)
    assert plain.line().startswith(b"+OK")
    reply = plain.command(b"STLS")
    assert reply.startswith(b"+OK"), reply
    return sock
