"""``twistd pop3ng``'s service: listeners that keep their port and fail loudly, and ``--workers``
processes configured explicitly (arguments, sockets and ``sys.path`` on their stdin)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any, Dict, Generator, List

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

from twisted_pop3ng.service import build, security_options, workers
from twisted_pop3ng.service.options import Options


def parsed(case: unittest.TestCase, *extra: str) -> Options:
    root = os.path.abspath(case.mktemp())
    os.makedirs(root)
    users = os.path.join(root, "users")
    with open(users, "w") as f:
        f.write("alice:{PLAIN}pw\n")
    options = Options()
    options.parseOptions(["--auth", "passwd-file:" + users, "--mailbox",
                          "maildir:" + root + "/{user}/Maildir"] + list(extra))
    return options


class OptionsArgumentsTests(unittest.TestCase):
    def test_options_keep_the_arguments_they_parsed(self) -> None:
        options = parsed(self, "--listen", "tcp:0:interface=127.0.0.1", "--workers=3")
        self.assertEqual(options.arguments[-3:], ["--listen", "tcp:0:interface=127.0.0.1",
                                                  "--workers=3"])
        self.assertEqual(options.arguments[0], "--auth")

    def test_the_worker_pool_gets_them_without_workers(self) -> None:
        options = parsed(self, "--listen", "tcp:0:interface=127.0.0.1", "--workers", "3")
        top = build.makeService(options)
        pools = [child for child in top if isinstance(child, workers.WorkerPool)]
        self.assertEqual(len(pools), 1)
        self.assertEqual(pools[0].count, 2)
        self.assertEqual(pools[0].args, options.arguments[:-2])


class NumericOptionTests(unittest.TestCase):
    """A number no option can mean is a usage error naming the option, before anything starts: a
    NaN timeout once started the server and answered every login with -ERR [SYS/TEMP] and a
    traceback; a negative --login-timeout dropped every client at its first command."""

    def refused(self, *argv: str) -> str:
        with self.assertRaises(usage.UsageError) as caught:
            parsed(self, "--listen", "tcp:0:interface=127.0.0.1", *argv)
        return str(caught.exception)

    def test_not_finite(self) -> None:
        for option in ("--idle-timeout", "--login-timeout", "--auth-failure-delay",
                       "--max-auth-failure-delay", "--lmtp-timeout", "--tls-ticket-rotation",
                       "--tls-ticket-grace", "--busy-poll"):
            for value in ("nan", "inf", "-inf"):
                message = self.refused(option, value)
                self.assertIn(option, message)
                self.assertIn("finite", message)

    def test_negative(self) -> None:
        for option in ("--login-timeout", "--idle-timeout", "--auth-failure-delay",
                       "--max-bad-commands", "--max-connections-per-address",
                       "--max-connections-per-user", "--login-delay", "--lmtp-max-size"):
            message = self.refused(option, "-1")
            self.assertIn(option, message)
            self.assertIn("negative", message)

    def test_ticket_lifetime_is_bounded(self) -> None:
        # (1e20 s passed the checks and overflowed OpenSSL's session timeout: a traceback)
        self.assertIn("a year", self.refused("--tls-ticket-rotation", "1e20"))
        self.assertIn("a year", self.refused("--tls-ticket-grace", "1e12"))

    def test_workers_are_bounded(self) -> None:
        self.assertIn("--workers", self.refused("--workers", "100000"))
        self.assertIn("--workers", self.refused("--workers", "0"))

    def test_zero_and_positive_values_still_parse(self) -> None:
        options = parsed(self, "--listen", "tcp:0:interface=127.0.0.1", "--login-timeout", "0",
                         "--auth-failure-delay", "0.5", "--max-bad-commands", "0")
        self.assertEqual((options["login-timeout"], options["auth-failure-delay"],
                          options["max-bad-commands"]), (0.0, 0.5, 0))


def listening_service(description: str) -> build.ListeningService:
    endpoint = endpoints.serverFromString(reactor, description)
    return build.ListeningService(endpoint, protocol.Factory.forProtocol(protocol.Protocol),
                                  description)


class ListeningServiceTests(unittest.TestCase):
    def service(self, description: str) -> build.ListeningService:
        return listening_service(description)

    @defer.inlineCallbacks
    def test_it_keeps_its_listening_port_and_stops_it(self) -> Generator[Any, Any, None]:
        listener = self.service("tcp:0:interface=127.0.0.1")
        self.assertIsNone(listener.port)
        listener.privilegedStartService()
        listener.startService()  # does not listen twice
        self.assertTrue(IListeningPort.providedBy(listener.port))
        number = listener.port.getHost().port
        socket.create_connection(("127.0.0.1", number), timeout=5).close()
        yield listener.stopService()
        self.assertRaises(ConnectionRefusedError, socket.create_connection,
                          ("127.0.0.1", number), 5)

    def test_a_port_in_use_fails_at_once(self) -> None:
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        listener = self.service("tcp:%d:interface=127.0.0.1" % busy.getsockname()[1])
        self.assertRaises(CannotListenError, listener.privilegedStartService)
        self.assertIsNone(listener.port)

    def test_the_listeners_end_twistd_naming_the_port(self) -> None:
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        description = "tcp:%d:interface=127.0.0.1" % busy.getsockname()[1]
        top = build._Listeners()
        self.service(description).setServiceParent(top)
        error = self.assertRaises(SystemExit, top.privilegedStartService)
        self.assertIn(description, str(error.code))

    @defer.inlineCallbacks
    def test_make_service_listens_with_a_large_backlog(self) -> Generator[Any, Any, None]:
        top = build.makeService(parsed(self, "--listen", "tcp:0:interface=127.0.0.1"))
        top.privilegedStartService()
        try:
            (listener,) = list(top)
            self.assertIsInstance(listener, build.ListeningService)
            self.assertEqual(listener.description, "tcp:0:interface=127.0.0.1")
            self.assertEqual(listener.port.backlog, build.DEFAULT_BACKLOG)
        finally:
            yield top.stopService()


class _FakeTransport:
    pid = 4242

    def __init__(self) -> None:
        self.written: List[bytes] = []

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written.append(data)

    def signalProcess(self, signum: int) -> None:
        pass


class _FakeReactor:
    def __init__(self) -> None:
        self.spawned: List[Dict[str, Any]] = []

    def spawnProcess(self, proto: Any, executable: str, args: List[str], env: Any = None,
                     childFDs: Any = None) -> _FakeTransport:
        transport = _FakeTransport()
        self.spawned.append(dict(executable=executable, args=args, env=env, childFDs=childFDs,
                                 transport=transport))
        return transport

    def callWhenRunning(self, *args: Any) -> None:
        pass

    def callLater(self, *args: Any) -> None:
        pass


class _NotRunningReactor:
    """A reactor that has not started yet: what it is asked to do is only recorded."""

    def __init__(self) -> None:
        self.when_running: List[Any] = []
        self.from_thread: List[Any] = []

    def callWhenRunning(self, *args: Any) -> None:
        self.when_running.append(args)

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.from_thread.append((f, args))


class SighupTests(unittest.TestCase):
    """The ports listen before the reactor runs: a SIGHUP then (``systemctl reload`` right after a
    start) must already have pop3ng's handler, never SIGHUP's default action, which ends the server."""

    def setUp(self) -> None:
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        self.events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def hup(self, reactor: _NotRunningReactor) -> None:
        handler = signal.getsignal(signal.SIGHUP)
        self.assertTrue(callable(handler), "no SIGHUP handler before the reactor runs")
        os.kill(os.getpid(), signal.SIGHUP)
        for f, args in reactor.from_thread:
            f(*args)

    def logged(self) -> List[str]:
        return [e.get("log_format", "") for e in self.events]

    def test_the_handler_is_in_before_the_reactor_runs(self) -> None:
        class FailingTLS:
            def reload(self) -> None:
                raise ValueError("garbage")

        reactor = _NotRunningReactor()
        security_options.watch_tls({"tls": FailingTLS()}, reactor)
        self.hup(reactor)
        self.assertTrue([m for m in self.logged() if m.startswith("TLS reload failed")], self.logged())

    def test_without_tls_sighup_is_logged_and_ignored(self) -> None:
        reactor = _NotRunningReactor()
        security_options.watch_tls({"tls": None}, reactor)
        self.hup(reactor)
        self.assertIn("SIGHUP: no TLS certificate to reload", self.logged())


class WorkerSpawnTests(unittest.TestCase):
    def setUp(self) -> None:
        # startService chains the master's SIGHUP handler in this process
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))

    def test_a_worker_gets_its_configuration_on_stdin_and_the_masters_environment(self) -> None:
        listener = listening_service("tcp:0:interface=127.0.0.1")
        listener.privilegedStartService()
        self.addCleanup(listener.stopService)
        fake = _FakeReactor()
        pool = workers.WorkerPool(1, [listener], ["--auth", "x", "--workers", "2"], reactor=fake)
        pool.startService()
        (spawned,) = fake.spawned
        self.assertEqual(spawned["args"], [sys.executable, "-c", workers.BOOTSTRAP])
        self.assertEqual(spawned["env"], dict(os.environ))
        self.assertEqual(spawned["childFDs"][workers.FIRST_FD], listener.port.fileno())
        self.assertEqual(spawned["childFDs"][0], "w")  # the pipe the configuration comes on
        (line,) = spawned["transport"].written
        config = json.loads(line)
        self.assertEqual(config["arguments"], ["--auth", "x"])
        self.assertEqual(config["sockets"], "%d:plain" % workers.FIRST_FD)
        self.assertEqual(config["sys_path"], sys.path)

    def test_the_bootstrap_imports_the_package_from_the_masters_sys_path(self) -> None:
        # A stand-in package on the configured sys.path (and nowhere in the child's environment)
        # is the one the worker runs.
        site = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(site, "twisted_pop3ng", "service"))
        for name in ("twisted_pop3ng/__init__.py", "twisted_pop3ng/service/__init__.py"):
            open(os.path.join(site, name), "w").close()
        with open(os.path.join(site, "twisted_pop3ng", "service", "worker.py"), "w") as f:
            f.write("import json\n"
                    "def worker_main(config):\n"
                    "    print(json.dumps(config['arguments']))\n")
        line = workers.worker_config(["--listen", "tcp:0"], [], [site] + sys.path)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        result = subprocess.run([sys.executable, "-c", workers.BOOTSTRAP], input=line,
                                capture_output=True, env=env, cwd=site, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout), ["--listen", "tcp:0"])

    def test_a_worker_whose_master_is_gone_before_it_spoke_exits_quietly(self) -> None:
        result = subprocess.run([sys.executable, "-c", workers.BOOTSTRAP], input=b"",
                                capture_output=True, timeout=60)
        self.assertEqual((result.returncode, result.stderr), (0, b""))
