"""Shared helpers for end-to-end tests: run the real ``twistd pop3ng`` process on loopback ports.

The server is started exactly as users start it (docs/server.rst) and talked to over real sockets.
Ports are chosen by the kernel (``tcp:0``) and read back from the server's log, so parallel test
runs never race for a port.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from twisted_pop3ng.mailbox.maildir import deliver

from .sockdiag import TCP_ESTABLISHED, inet_diag

HERE = os.path.dirname(os.path.abspath(__file__))
#: The repository root (what twistd needs on its path to find the twisted/plugins drop-in).
ROOT = os.path.dirname(os.path.dirname(HERE))
#: Runs twistd exactly like the ``twistd`` console script. Under coverage (``.ci/run``'s second
#: leg measures the servers too), the data is saved before twistd ends itself with the signal that
#: stopped it (``os.kill(os.getpid(), SIGTERM)``: no atexit handler runs after that).
TWISTD_MAIN = (
    "import os, sys; sys.argv[0] = 'twistd'\n"
    "if os.environ.get('COVERAGE_PROCESS_CONFIG'):\n"
    "    import coverage\n"
    "    _cov, _kill = coverage.Coverage.current(), os.kill\n"
    "    def _save_then_kill(pid, sig):\n"
    "        if pid == os.getpid() and _cov is not None:\n"
    "            _cov.stop(); _cov.save()\n"
    "        _kill(pid, sig)\n"
    "    os.kill = _save_then_kill\n"
    "from twisted.scripts.twistd import run; run()")
_PORT_RE = re.compile(rb"POP3ServerFactory( \(TLS\))?(?: \(PROXY\))? starting on (\d+)")


def make_certificates(directory: str) -> Dict[str, str]:
    """A test CA and a server certificate for localhost/127.0.0.1 (trustme); returns file paths."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1", common_name="localhost")
    paths = {
        "ca": os.path.join(directory, "ca.pem"),
        "cert": os.path.join(directory, "cert.pem"),
        "key": os.path.join(directory, "key.pem"),
    }
    ca.cert_pem.write_to_path(paths["ca"])
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(paths["cert"], append=True)
    cert.private_key_pem.write_to_path(paths["key"])
    return paths


def reachable_directory(test: Any, prefix: str) -> str:
    """A new directory for a server that drops privileges (``twistd --uid``): under /tmp, whose
    parents any user can search (one under ``_trial_temp`` may sit below a 0700 home), mode 0755,
    and removed with everything in it when ``test`` (a TestCase) ends."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    test.addCleanup(shutil.rmtree, path, True)
    os.chmod(path, 0o755)
    return path


def write_users(path: str, users: Dict[str, str], scheme: str = "PLAIN") -> str:
    with open(path, "w", encoding="utf-8") as f:
        for user, password in users.items():
            f.write("%s:{%s}%s\n" % (user, scheme, password))
    return path


@dataclass
class ServerProcess:
    """A running ``twistd -n pop3ng``; ``port``/``tls_port`` are the first plain / TLS ports."""

    process: subprocess.Popen
    root: str
    log_path: str
    ports: List[int] = field(default_factory=list)
    tls_ports: List[int] = field(default_factory=list)
    #: The test CA's and server certificate's file paths (``make_certificates``: "ca", "cert",
    #: "key"); empty when the server was started without TLS. Not Optional, so tests index it
    #: directly (``server.certs["ca"]``) without a None check for the type checker.
    certs: Dict[str, str] = field(default_factory=dict)
    #: A test that provokes a failure of the server's own (a broken backend, say) sets this;
    #: otherwise any traceback in the log fails the test when the server stops.
    tracebacks_allowed: bool = False
    _checked: bool = False

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def tls_port(self) -> int:
        return self.tls_ports[0]

    def maildir(self, user: str) -> str:
        return os.path.join(self.root, "mail", user, "Maildir")

    def deliver(self, user: str, message: bytes, name: Optional[str] = None) -> str:
        return deliver(self.maildir(user), message, name)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def rss_kb(self) -> int:
        with open("/proc/%d/status" % self.process.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def connect(self, tls: bool = False, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.tls_port if tls else self.port), timeout)
        if tls:
            if not self.certs:
                sock.close()
                raise AssertionError("the server was started without TLS")
            context = ssl.create_default_context(cafile=self.certs["ca"])
            sock = context.wrap_socket(sock, server_hostname="localhost")
        return sock

    def stop(self) -> None:
        """Stop the server; then fail if its log holds a traceback (nothing a client does may
        cause one: a client's mistake gets -ERR, a machine's problem one warning line)."""
        stop_process(self.process)
        if self._checked or self.tracebacks_allowed:
            return
        self._checked = True
        log = self.log()
        if "Traceback" in log:
            start = log.index("Traceback")
            raise AssertionError("the server logged a traceback:\n" + log[max(0, start - 300):start + 3000])


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL: servers, Dovecot, benchmark peers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL (Linux), so a
    killed trial worker leaves no server behind. (twistd --uid clears it: best effort.)"""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def start_server(root: str, users: Optional[Dict[str, str]] = None, tls: bool = True,
                 extra_args: Optional[List[str]] = None, plain_listeners: int = 1,
                 twistd_args: Optional[List[str]] = None,
                 command_prefix: Optional[List[str]] = None) -> ServerProcess:
    """Start ``twistd -n pop3ng`` with a passwd-file, maildirs under ``root/mail`` and test certs.

    ``twistd_args`` go to twistd itself, before ``pop3ng`` (e.g. ``["--uid", "65534"]``);
    ``command_prefix`` runs the whole command under another one (e.g. strace injecting faults).
    """
    os.makedirs(root, exist_ok=True)
    users = users if users is not None else {"alice": "correct horse battery staple"}
    passwd = write_users(os.path.join(root, "users"), users)
    # ``python -m twisted.scripts.twistd`` does nothing on Twisted >= 24 (no __main__ block): call run().
    args = list(command_prefix or []) + [sys.executable, "-c", TWISTD_MAIN, "-n", "--pidfile="]
    args += list(twistd_args or []) + ["pop3ng",
            "--auth", "passwd-file:" + passwd,
            "--mailbox", "maildir:" + os.path.join(root, "mail", "{user}", "Maildir")]
    for _ in range(plain_listeners):
        args += ["--listen", "tcp:0:interface=127.0.0.1"]
    certs: Dict[str, str] = {}
    if tls:
        certs = make_certificates(root)
        args += ["--tls-listen", "tcp:0:interface=127.0.0.1",
                 "--tls-cert", certs["cert"], "--tls-key", certs["key"]]
    args += extra_args or []
    log_path = os.path.join(root, "twistd.log")
    log = open(log_path, "wb")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    # stdin from /dev/null: a server left behind must not hold the test runner's pipes (trial -j
    # waits for its workers' stdin to close).
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               cwd=root, env=env,
                               preexec_fn=_die_with_parent)
    log.close()
    server = ServerProcess(process, root, log_path, certs=certs)
    deadline = time.monotonic() + 30
    want_plain, want_tls = plain_listeners, 1 if tls else 0
    while time.monotonic() < deadline:
        with open(log_path, "rb") as f:
            found = _PORT_RE.findall(f.read())
        server.ports = [int(p) for t, p in found if not t]
        server.tls_ports = [int(p) for t, p in found if t]
        if len(server.ports) >= want_plain and len(server.tls_ports) >= want_tls:
            return server
        if process.poll() is not None:
            break
        time.sleep(0.05)
    server.stop()
    raise RuntimeError("twistd pop3ng did not start:\n" + server.log())


def wait_for_greeting(process: subprocess.Popen, port: int, deadline: float, greeting: bytes,
                      farewell: bytes = b"") -> bool:
    """Poll 127.0.0.1:``port`` until a daemon started as ``process`` greets with ``greeting``
    (then say ``farewell``); False if it died first (e.g. a port race) or the deadline passed."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if sock.recv(512).startswith(greeting):
                    if farewell:
                        sock.sendall(farewell)
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


class Session:
    """A raw POP3 conversation over a socket: send bytes, read lines and multi-line bodies exactly."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def line(self) -> bytes:
        """One response line including its CRLF (b"" if the server closed)."""
        while b"\r\n" not in self.buffer:
            if not self._fill():
                rest, self.buffer = self.buffer, b""
                return rest
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line + b"\r\n"

    def command(self, text: bytes) -> bytes:
        self.send(text + b"\r\n")
        return self.line()

    def body(self) -> bytes:
        """The raw (still dot-stuffed) multi-line body up to and including ``.\\r\\n``."""
        while True:
            if self.buffer.startswith(b".\r\n"):
                end = 3
                break
            index = self.buffer.find(b"\r\n.\r\n")
            if index != -1:
                end = index + 5
                break
            if not self._fill():
                raise ConnectionError("closed inside a multi-line response")
        body, self.buffer = self.buffer[:end], self.buffer[end:]
        return body

    def closed(self, timeout: float = 30.0) -> bool:
        """True if the server closes the connection (EOF) within ``timeout``; returns as soon as it
        does, so the generous default costs nothing unless the server fails to close."""
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
            return True
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def login(self, user: bytes, password: bytes) -> bytes:
        assert self.line().startswith(b"+OK")
        assert self.command(b"USER " + user).startswith(b"+OK")
        return self.command(b"PASS " + password)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def process_tree(pid: int) -> List[int]:
    """``pid`` and all its descendants (from /proc): a server's worker processes, Dovecot's."""
    children: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    result, todo = [], [pid]
    while todo:
        current = todo.pop()
        result.append(current)
        todo.extend(children.get(current, []))
    return result


# A socket's memory as the kernel reports it with sock_diag (``ss -m``): linux/inet_diag.h,
# linux/sock_diag.h.
_INET_DIAG_MSG = 72  # sizeof(struct inet_diag_msg); attributes follow it
_INET_DIAG_SKMEMINFO = 7
_SK_MEMINFO_SNDBUF, _SK_MEMINFO_WMEM_QUEUED = 3, 5


def send_buffer(local_port: int, peer_port: int) -> Optional[Tuple[int, int]]:
    """(octets queued, send buffer size) of the IPv4 TCP socket local_port -> peer_port on this host
    (the kernel's sk_wmem_queued and sk_sndbuf, as ``ss -m`` shows them), or None if none."""
    found = None
    for data, start, end in inet_diag(1 << TCP_ESTABLISHED, 1 << (_INET_DIAG_SKMEMINFO - 1),
                                      local_port, peer_port):
        if struct.unpack_from("!HH", data, start + 4) != (local_port, peer_port):
            continue
        attr = start + _INET_DIAG_MSG
        while attr + 4 <= end:
            attr_len, attr_type = struct.unpack_from("=HH", data, attr)
            if attr_len < 4:
                break  # a malformed attribute: stop rather than loop forever
            if attr_type == _INET_DIAG_SKMEMINFO:
                meminfo = struct.unpack_from("=9I", data, attr + 4)
                found = meminfo[_SK_MEMINFO_WMEM_QUEUED], meminfo[_SK_MEMINFO_SNDBUF]
            attr += (attr_len + 3) & ~3
    return found


def wait_for_full_server_socket(test: Any, session: Session, tls: bool, timeout: float = 60.0) -> None:
    """Wait (the client reading nothing meanwhile) until the server's socket of this connection
    is full, read from the kernel; fails on timeout. The test's client then owes more replies than
    the kernel's buffers hold, so the server holds the rest and waits for this client.

    "Full" is what stops the server writing, whichever way it writes: queued octets >= the send
    buffer (Linux cuts ``send``/``sendmsg`` short then: the direct sender, plain TCP), or free space
    below half the queued octets (epoll does not report the socket writable then: TLS, and the
    stock path, wait for that). A direct sender cut short also waits for epoll, so the second
    condition can be the one that holds with it too (queued a little under the buffer: seen on
    a loaded machine); ``tls`` is kept for the callers' sake.
    """
    sock = session.sock
    server_port, client_port = sock.getpeername()[1], sock.getsockname()[1]
    deadline = time.monotonic() + timeout
    found = None
    while time.monotonic() < deadline:
        found = send_buffer(server_port, client_port)
        if found is not None:
            queued, size = found
            if queued >= size or size - queued < queued // 2:
                return
        time.sleep(0.01)
    test.fail("the server's socket never filled: (queued, send buffer) = %r" % (found,))
