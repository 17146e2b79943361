"""The lean reactor (``twisted_pop3ng.fastpath.reactor``): what twistd pop3ng runs on, and that it still
behaves as Twisted's epoll reactor where applications depend on it.

A reactor can be installed once per process, so each check runs a small program in a fresh
interpreter over real sockets and reads what it printed.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

from twisted.trial import unittest

from tests.integration.support import ROOT, Session, start_server



#: Forces every fast piece off (twisted_pop3ng.fastpath._compat); these tests are about the fast
#: path, so they turn it back on even in the CI leg that sets it.
STOCK_ENV = "POP3NG_STOCK_TWISTED"


def run_program(source: str) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT)
    env[STOCK_ENV] = "0"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True,
                          text=True, timeout=60, env=env)
    if done.returncode != 0:
        raise AssertionError("program failed (%d):\n%s%s" % (done.returncode, done.stdout, done.stderr))
    return done.stdout


class LeanReactorBehaviourTests(unittest.TestCase):
    def test_sockets_timers_threads_and_errors(self) -> None:
        lost = self._sockets_timers_threads_and_errors(lean_port=False)
        self.assertEqual(lost, "['ConnectionAborted', 'ConnectionDone', 'Server', 'Server', "
                               "'Server', 'ValueError']")

    def test_the_lean_ports_connections_read_and_fail_the_same(self) -> None:
        """A LeanPort's connections (server_port.LeanServer) are read by the poll loop directly:
        data, the client's close (ConnectionDone) and an exception in dataReceived (logged, the
        connection dropped) come out as with Twisted's own transport."""
        lost = self._sockets_timers_threads_and_errors(lean_port=True)
        self.assertEqual(lost, "['ConnectionAborted', 'ConnectionDone', 'LeanServer', "
                               "'LeanServer', 'LeanServer', 'ValueError']")

    def _sockets_timers_threads_and_errors(self, lean_port: bool) -> str:
        out = run_program("""
            LEAN_PORT = LEAN_PORT_VALUE
            import socket, threading
            from twisted_pop3ng.fastpath.reactor import LeanEPollReactor, install_default
            reactor = install_default()
            assert isinstance(reactor, LeanEPollReactor), reactor
            assert install_default() is None  # once installed, never twice
            from twisted.internet import protocol, reactor as global_reactor
            from twisted.logger import globalLogPublisher
            assert global_reactor is reactor
            logged = []
            def observe(event):
                failure = event.get("log_failure") or event.get("failure")
                if failure is not None:
                    logged.append(failure.getErrorMessage())
            globalLogPublisher.addObserver(observe)

            lost = []

            class Echo(protocol.Protocol):
                def connectionMade(self):
                    lost.append(type(self.transport).__name__)

                def dataReceived(self, data):
                    if data == b"boom\\n":
                        raise ValueError("boom in dataReceived")
                    if data == b"abort\\n":
                        self.transport.abortConnection()
                        return
                    self.transport.write(data.upper())

                def connectionLost(self, reason):
                    lost.append(type(reason.value).__name__)

            from twisted_pop3ng.fastpath.port import LeanTCPReactor
            listen = (LeanTCPReactor(reactor) if LEAN_PORT else reactor).listenTCP
            port = listen(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
            number = port.getHost().port
            results = {}

            def client_side():
                with socket.create_connection(("127.0.0.1", number), timeout=10) as s:
                    s.sendall(b"hello\\n")
                    results["echo"] = s.recv(100)
                with socket.create_connection(("127.0.0.1", number), timeout=10) as s:
                    s.sendall(b"boom\\n")
                    results["after_error"] = s.recv(100)  # b"": the connection was dropped
                with socket.create_connection(("127.0.0.1", number), timeout=10) as s:
                    s.sendall(b"abort\\n")
                    try:
                        results["aborted"] = s.recv(100)
                    except ConnectionResetError:
                        results["aborted"] = "reset"  # SO_LINGER 0: a RST, not a FIN
                reactor.callFromThread(reactor.callLater, 0.05, finish)

            def failing_timer():
                raise RuntimeError("boom in a timed call")

            def finish():
                results["timer_after_error"] = True
                reactor.stop()

            reactor.callLater(0, failing_timer)
            reactor.callWhenRunning(threading.Thread(target=client_side, daemon=True).start)
            reactor.callLater(30, reactor.stop)
            reactor.run()
            print(sorted(results.items()))
            print(sorted(logged))
            print(sorted(lost))
        """.replace("LEAN_PORT_VALUE", repr(lean_port)))
        results, logged, lost = out.splitlines()
        self.assertEqual(results, "[('aborted', 'reset'), ('after_error', b''), "
                                  "('echo', b'HELLO\\n'), ('timer_after_error', True)]")
        self.assertIn("boom in dataReceived", logged)
        self.assertIn("boom in a timed call", logged)
        return lost

    def test_timers_fire_on_time_in_order_with_a_far_timer_pending(self) -> None:
        """The loop computes its sleep itself when nothing is due: timers added, cancelled (more
        than 50 of them) or due while it sleeps still fire, in order and not early, and a far
        timer does not make it sleep past a near one."""
        out = run_program("""
            import time
            from twisted_pop3ng.fastpath.reactor import install_default
            reactor = install_default()
            fired = []
            start = time.monotonic()
            far = reactor.callLater(3600, fired.append, "far")
            cancelled = [reactor.callLater(0.01 * i, fired.append, "cancelled") for i in range(80)]
            for call in cancelled:
                call.cancel()

            def at(name, earliest):
                fired.append((name, time.monotonic() - start >= earliest))

            reactor.callLater(0.2, at, "b", 0.2)
            reactor.callLater(0.1, at, "a", 0.1)
            def later():
                at("c", 0.3)
                reactor.callLater(0.05, at, "d", 0.35)  # added by a timer, from inside the loop
                reactor.callLater(0.1, reactor.stop)
            reactor.callLater(0.3, later)

            def overslept():  # a loop that slept past the near timers lands here instead
                fired.append("overslept")
                reactor.stop()
            reactor.callLater(60, overslept)
            reactor.run()
            print(fired, far.active())
        """)
        self.assertEqual(out.split("]")[0] + "]",
                         "[('a', True), ('b', True), ('c', True), ('d', True)]")
        self.assertEqual(out.split("]")[1].split(), ["True"])  # the far timer is still pending

    def test_not_installed_over_another_reactor(self) -> None:
        out = run_program("""
            from twisted.internet import reactor
            from twisted_pop3ng.fastpath.reactor import install_default
            print(install_default(), type(reactor).__name__)
        """)
        self.assertEqual(out.split(), ["None", "EPollReactor"])


class TwistdReactorChoiceTests(unittest.TestCase):
    def _reactor_line(self, twistd_args, stock: bool = False):
        saved = os.environ.get(STOCK_ENV)
        os.environ[STOCK_ENV] = "1" if stock else "0"  # start_server passes os.environ on
        self.addCleanup(_restore_environ, STOCK_ENV, saved)
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        server = start_server(root, tls=False, twistd_args=twistd_args)
        self.addCleanup(server.stop)
        session = Session(socket.create_connection(("127.0.0.1", server.port), 10))
        try:
            self.assertEqual(session.login(b"alice", b"correct horse battery staple"),
                             b"+OK Logged in.\r\n")
            self.assertEqual(session.command(b"QUIT"), b"+OK Logging out.\r\n")
            self.assertTrue(session.closed())
        finally:
            session.close()
        return [line for line in server.log().splitlines() if "reactor class" in line]

    def test_twistd_pop3ng_runs_on_the_lean_reactor(self) -> None:
        [line] = self._reactor_line([])
        self.assertIn("twisted_pop3ng.fastpath.reactor.LeanEPollReactor", line)

    def test_an_explicit_reactor_choice_wins(self) -> None:
        [line] = self._reactor_line(["--reactor=epoll"])
        self.assertIn("twisted.internet.epollreactor.EPollReactor", line)

    def test_the_reactor_can_be_chosen_by_name(self) -> None:
        [line] = self._reactor_line(["--reactor=pop3ng-epoll"])
        self.assertIn("twisted_pop3ng.fastpath.reactor.LeanEPollReactor", line)

    def test_stock_twisted_runs_on_twisteds_reactor(self) -> None:
        """POP3NG_STOCK_TWISTED=1 (or a Twisted whose epoll reactor internals changed): the
        default and the named reactor are Twisted's own, and the server works on it."""
        for args in ([], ["--reactor=pop3ng-epoll"]):
            [line] = self._reactor_line(args, stock=True)
            self.assertIn("twisted.internet.epollreactor.EPollReactor", line)


def _restore_environ(name: str, value) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class BusyPollTests(unittest.TestCase):
    """The adaptive busy-polling window (``LeanEPollReactor._spin_then_sleep``), on a real epoll
    set and a real socket pair; the longest window is set to 5 ms so that "sooner" and "later"
    than it are far apart from thread and timer jitter."""

    def setUp(self) -> None:
        from twisted_pop3ng.fastpath.reactor import LeanEPollReactor

        self.reactor = LeanEPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.reactor.busy_poll = 0.005
        self.a, self.b = socket.socketpair()
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)
        self.reactor._poller.register(self.a.fileno(), select.EPOLLIN)

    def sleep_until_sent_soon(self) -> list:
        timer = threading.Timer(0.0003, self.b.send, [b"x"])
        timer.start()
        self.addCleanup(timer.cancel)
        events = self.reactor._spin_then_sleep(10.0, 10)
        timer.join()
        self.a.recv(10)
        return events

    def test_the_window_opens_while_events_follow_closely_and_closes_when_idle(self) -> None:
        from twisted_pop3ng.fastpath.reactor import SPIN_START

        self.assertEqual(self.reactor._spin, 0.0)  # nothing known yet: no spinning
        self.b.send(b"x")  # ready before the poll: the sleep was far shorter than the window
        self.assertEqual(self.reactor._spin_then_sleep(10.0, 10), [(self.a.fileno(), select.EPOLLIN)])
        self.a.recv(10)
        self.assertEqual(self.reactor._spin, SPIN_START)  # a longer window would have caught it
        # Events 0.3 ms apart: the window doubles until the spin catches them. A round the
        # scheduler delayed past the longest window halves it again, so go on until it is open
        # (a window that never grows would still be tiny after all the rounds).
        for _ in range(1000):
            self.sleep_until_sent_soon()
            self.assertLessEqual(self.reactor._spin, 0.005)  # never past the longest window
            if self.reactor._spin > 4 * SPIN_START:
                break
        self.assertGreater(self.reactor._spin, 4 * SPIN_START)
        # An event that comes within the window is caught by the spin: the window stays.
        self.reactor._spin = 0.005
        self.b.send(b"y")
        self.assertEqual(self.reactor._spin_then_sleep(10.0, 10), [(self.a.fileno(), select.EPOLLIN)])
        self.a.recv(10)
        self.assertEqual(self.reactor._spin, 0.005)
        # Idle: each sleep outlasts the window, which halves, then is gone.
        start = time.monotonic()
        self.assertEqual(self.reactor._spin_then_sleep(0.02, 10), [])
        self.assertGreaterEqual(time.monotonic() - start, 0.019)  # the timeout still holds
        self.assertEqual(self.reactor._spin, 0.0025)
        for _ in range(12):
            self.reactor._spin_then_sleep(0.01, 10)
        self.assertEqual(self.reactor._spin, 0.0)

    def test_busy_poll_option(self) -> None:
        """--busy-poll sets the longest window of pop3ng's reactor (0 turns spinning off); a
        negative or huge value is a usage error."""
        from twisted.python import usage

        from twisted_pop3ng.service import build as tap

        users = os.path.abspath(self.mktemp())
        with open(users, "w") as f:
            f.write("alice:{PLAIN}x\n")
        base = ["--mailbox", "maildir:/tmp/{user}", "--auth", "passwd-file:" + users]
        for value, seconds in (("0", 0.0), ("120", 120e-6)):
            options = tap.Options()
            options.parseOptions(base + ["--busy-poll", value])
            tap.configure_reactor(options, self.reactor)
            self.assertEqual(self.reactor.busy_poll, seconds)
        options = tap.Options()
        options.parseOptions(base)
        tap.configure_reactor(options, self.reactor)
        self.assertEqual(self.reactor.busy_poll, 50e-6)
        for bad in ("-1", "20000"):
            self.assertRaises(usage.UsageError, tap.Options().parseOptions, base + ["--busy-poll", bad])
