"""systemd: socket activation through twistd's ``systemd:`` endpoints, and ``Type=notify`` readiness.

The server runs under the real ``systemd-socket-activate`` (Debian's systemd package), which binds
the sockets, passes them as ``LISTEN_FDS`` (named with ``--fdname`` like ``FileDescriptorName=``)
and execs twistd on the first connection -- as ``contrib/systemd/pop3ng.socket`` does with ports
110 and 995. Mail is fetched through the activated sockets with the stdlib's POP3 client, plain
and TLS. Readiness is checked the way systemd sees it: a datagram socket of the test's own as
``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import os
import poplib
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from twisted.trial import unittest

from tests.integration.dovecot import free_port
from tests.integration.support import ROOT, TWISTD_MAIN, make_certificates, stop_process, write_users
from twisted_pop3ng.mailbox.maildir import deliver

PASSWORD = "activated by systemd"
MESSAGE = b"From: a@example.org\r\nSubject: through systemd\r\n\r\nhello\r\n.dot-stuffed line\r\n"
ACTIVATE = "/usr/bin/systemd-socket-activate"


class Site:
    """A passwd-file, a maildir with one message and certificates under a temporary directory."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="pop3ng-systemd-")
        self.users = write_users(os.path.join(self.root, "users"), {"alice": PASSWORD})
        maildir = os.path.join(self.root, "mail", "alice", "Maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(maildir, sub))
        deliver(maildir, MESSAGE)
        self.certs = make_certificates(self.root)

    def pop3ng_args(self, listen: List[str], tls_listen: List[str]) -> List[str]:
        args = [sys.executable, "-c", TWISTD_MAIN, "-n", "--pidfile=", "pop3ng",
                "--auth", "passwd-file:" + self.users,
                "--mailbox", "maildir:" + os.path.join(self.root, "mail", "{user}", "Maildir")]
        for description in listen:
            args += ["--listen", description]
        for description in tls_listen:
            args += ["--tls-listen", description]
        if tls_listen:
            args += ["--tls-cert", self.certs["cert"], "--tls-key", self.certs["key"]]
        return args

    def log(self) -> str:
        try:
            with open(os.path.join(self.root, "twistd.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def activate(site: Site, sockets: Dict[str, int], listen: List[str], tls_listen: List[str],
             host: str = "127.0.0.1") -> subprocess.Popen:
    """``systemd-socket-activate -l HOST:PORT ... --fdname=NAME:... twistd -n pop3ng ...``."""
    if not os.path.exists(ACTIVATE):
        raise AssertionError("%s is missing (Debian: systemd)" % ACTIVATE)
    args = [ACTIVATE]
    for port in sockets.values():
        args += ["-l", "%s:%d" % ("[%s]" % host if ":" in host else host, port)]
    args += ["--fdname=" + ":".join(sockets)]
    # systemd-socket-activate gives the child only the variables named with -E.
    for name, value in (("PATH", os.environ.get("PATH", "/usr/bin:/bin")), ("PYTHONPATH", ROOT),
                        ("HOME", site.root), ("LANG", "C.UTF-8")):
        args += ["-E", "%s=%s" % (name, value)]
    args += site.pop3ng_args(listen, tls_listen)
    log = open(os.path.join(site.root, "twistd.log"), "wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=site.root)
    log.close()
    return process


def wait_listening(process: subprocess.Popen, port: int, site: Site) -> None:
    """Until systemd-socket-activate has bound ``port`` (it binds before anything else)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("systemd-socket-activate ended:\n" + site.log())
        with open("/proc/net/tcp") as f4, open("/proc/net/tcp6") as f6:
            tables = f4.read() + f6.read()
        if re.search(r":%04X [0:]+:0000 0A" % port, tables):
            return
        time.sleep(0.05)
    raise AssertionError("port %d never listened:\n%s" % (port, site.log()))


def activate_on_free_ports(site: Site, names: List[str], listen: List[str], tls_listen: List[str],
                           host: str = "127.0.0.1", attempts: int = 5) -> Tuple[subprocess.Popen, Dict[str, int]]:
    """:func:`activate` on ports free a moment ago, listening when it returns; new ports when
    another process bound one first (the activator then ends: address in use)."""
    for _ in range(attempts):
        sockets = {name: free_port() for name in names}
        process = activate(site, sockets, listen, tls_listen, host)
        try:
            for port in sockets.values():
                wait_listening(process, port, site)
            return process, sockets
        except AssertionError:
            stop_process(process)
            if "in use" not in site.log():
                raise
    raise AssertionError("no free ports in %d attempts:\n%s" % (attempts, site.log()))


def fetch(client: poplib.POP3) -> bytes:
    client.user("alice")
    client.pass_(PASSWORD)
    _, lines, _ = client.retr(1)
    client.quit()
    return b"\r\n".join(lines) + b"\r\n"


class SocketActivationTests(unittest.TestCase):
    def setUp(self) -> None:
        self.site = Site()
        self.addCleanup(self.site.remove)

    def start(self, names: List[str], listen: List[str],
              tls_listen: List[str]) -> Tuple[subprocess.Popen, Dict[str, int]]:
        process, sockets = activate_on_free_ports(self.site, names, listen, tls_listen)
        self.addCleanup(stop_process, process)
        return process, sockets

    def test_plain_and_tls_through_named_sockets(self) -> None:
        process, sockets = self.start(["pop3", "pop3s"], ["systemd:domain=INET:name=pop3"],
                                      ["systemd:domain=INET:name=pop3s"])
        # The first connection makes systemd-socket-activate exec twistd, which adopts both sockets.
        self.assertEqual(fetch(poplib.POP3("127.0.0.1", sockets["pop3"], timeout=60)), MESSAGE)
        context = ssl.create_default_context(cafile=self.site.certs["ca"])
        secure = poplib.POP3_SSL("127.0.0.1", sockets["pop3s"], context=context, timeout=60)
        self.assertEqual(fetch(secure), MESSAGE)
        self.assertNotIn("Traceback", self.site.log())
        self.assertIsNone(process.poll())

    def test_one_socket_by_index(self) -> None:
        _, sockets = self.start(["pop3"], ["systemd:domain=INET:index=0"], [])
        client = poplib.POP3("127.0.0.1", sockets["pop3"], timeout=60)
        self.assertEqual(fetch(client), MESSAGE)

    def test_a_missing_socket_name_is_a_clear_error(self) -> None:
        process, sockets = self.start(["pop3"], ["systemd:domain=INET:name=nosuch"], [])
        with socket.create_connection(("127.0.0.1", sockets["pop3"]), timeout=30):
            self.assertNotEqual(process.wait(60), 0)
        log = self.site.log()
        self.assertIn("nosuch", log)
        self.assertNotIn("Traceback", log)


UNITS = os.path.join(ROOT, "contrib", "systemd")


def unit_values(name: str, key: str) -> List[str]:
    """The values of ``key=`` in a shipped unit file (continuation lines joined)."""
    with open(os.path.join(UNITS, name)) as f:
        text = f.read().replace("\\\n", " ")
    return [line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith(key + "=")]


class ShippedUnitTests(unittest.TestCase):
    """contrib/systemd as shipped: systemd accepts every directive, and its endpoints serve."""

    def test_systemd_analyze_verify_is_silent(self) -> None:
        directory = tempfile.mkdtemp(prefix="pop3ng-units-")
        self.addCleanup(shutil.rmtree, directory)
        for name in ("pop3ng.service", "pop3ng.socket", "pop3ng-tls.socket"):
            with open(os.path.join(UNITS, name)) as f:
                text = f.read()
            # (verify checks that ExecStart's program exists; twistd's install path varies)
            with open(os.path.join(directory, name), "w") as f:
                f.write(text.replace("/usr/local/bin/twistd", sys.executable))
        result = subprocess.run(["systemd-analyze", "verify"] + [os.path.join(directory, name) for name in
                                ("pop3ng.service", "pop3ng.socket", "pop3ng-tls.socket")],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_the_shipped_endpoints_serve_through_the_shipped_sockets(self) -> None:
        sockets = {}
        for unit in ("pop3ng.socket", "pop3ng-tls.socket"):
            self.assertEqual(unit_values(unit, "Service"), ["pop3ng.service"])
            (port,) = unit_values(unit, "ListenStream")
            (name,) = unit_values(unit, "FileDescriptorName")
            sockets[name] = int(port)
        self.assertEqual(sockets, {"pop3": 110, "pop3s": 995})
        self.assertEqual(unit_values("pop3ng.service", "Type"), ["notify"])
        (command,) = unit_values("pop3ng.service", "ExecStart")
        argv = shlex.split(command)
        self.assertEqual(argv[:4], ["/usr/local/bin/twistd", "--nodaemon", "--pidfile=", "pop3ng"])
        listen = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--listen"]
        tls_listen = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--tls-listen"]
        self.assertEqual((len(listen), len(tls_listen)), (1, 1))
        site = Site()
        self.addCleanup(site.remove)
        # Port 110 is taken by systemd in production; here the same names on free ports of ::1.
        process, activated = activate_on_free_ports(site, list(sockets), listen, tls_listen, host="::1")
        self.addCleanup(stop_process, process)
        self.assertEqual(fetch(poplib.POP3("::1", activated["pop3"], timeout=60)), MESSAGE)
        context = ssl.create_default_context(cafile=site.certs["ca"])
        self.assertEqual(fetch(poplib.POP3_SSL("::1", activated["pop3s"], context=context, timeout=60)),
                         MESSAGE)


class EndpointErrorTests(unittest.TestCase):
    """The message for a systemd: endpoint naming a socket that was not passed."""

    def test_messages(self) -> None:
        from twisted_pop3ng.service.systemd import explain_endpoint_error as explain

        self.assertIn("systemd passed no socket named 'imap': give it with FileDescriptorName=imap",
                      explain("systemd:domain=INET:name=imap", KeyError("imap")) or "")
        self.assertIn("no socket number 2", explain("systemd:domain=INET:index=2", IndexError("x")) or "")
        self.assertIsNone(explain("tcp:110", KeyError("x")))
        self.assertIsNone(explain("systemd:domain=NOPE:index=0", AttributeError("AF_NOPE")))


class NotifyTests(unittest.TestCase):
    """READY=1 reaches $NOTIFY_SOCKET once the port accepts; STOPPING=1 at shutdown."""

    def setUp(self) -> None:
        self.site = Site()
        self.addCleanup(self.site.remove)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.notify.close)

    def receive(self, timeout: float = 60) -> Optional[str]:
        self.notify.settimeout(timeout)
        try:
            return self.notify.recv(4096).decode()
        except socket.timeout:
            return None

    def run_twistd(self, notify_socket: str, port: int = 0) -> subprocess.Popen:
        env = dict(os.environ, NOTIFY_SOCKET=notify_socket, PYTHONPATH=ROOT)
        log = open(os.path.join(self.site.root, "twistd.log"), "wb")
        process = subprocess.Popen(self.site.pop3ng_args(["tcp:%d:interface=127.0.0.1" % port], []),
                                   stdout=log, stderr=subprocess.STDOUT, cwd=self.site.root, env=env)
        log.close()
        self.addCleanup(stop_process, process)
        return process

    def check_ready_then_stopping(self, notify_socket: str) -> None:
        process = self.run_twistd(notify_socket)  # (tcp:0: the port is read from the log)
        message = self.receive()
        self.assertIsNotNone(message, self.site.log())
        assert message is not None
        fields = dict(line.split("=", 1) for line in message.splitlines())
        self.assertEqual(fields["READY"], "1")
        self.assertEqual(fields["MAINPID"], str(process.pid))
        # Ready means ready: the port is in the log and greets at once, no retry needed.
        found = re.search(r"POP3ServerFactory starting on (\d+)", self.site.log())
        self.assertIsNotNone(found, self.site.log())
        assert found is not None
        with socket.create_connection(("127.0.0.1", int(found.group(1))), timeout=30) as sock:
            self.assertTrue(sock.recv(512).startswith(b"+OK"))
        process.send_signal(signal.SIGTERM)
        self.assertEqual(self.receive(), "STOPPING=1")
        # twistd ends by the signal that stopped it (systemd counts SIGTERM as a clean stop)
        self.assertIn(process.wait(60), (0, -signal.SIGTERM))

    def test_path_socket(self) -> None:
        path = os.path.join(self.site.root, "notify")
        self.notify.bind(path)
        self.check_ready_then_stopping(path)

    def test_abstract_socket(self) -> None:
        name = "pop3ng-test-notify-%d" % os.getpid()
        self.notify.bind("\0" + name)
        self.check_ready_then_stopping("@" + name)

    def test_no_ready_when_a_port_cannot_be_bound(self) -> None:
        path = os.path.join(self.site.root, "notify")
        self.notify.bind(path)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            process = self.run_twistd(path, taken.getsockname()[1])
            self.assertNotEqual(process.wait(60), 0)
        self.assertIsNone(self.receive(timeout=0.5))
        self.assertIn("cannot listen", self.site.log())
