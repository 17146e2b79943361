"""The benchmark's POP3 client: raw sockets, no Twisted, not the project's own client.

One client for every peer, so the numbers compare servers, not clients. It is written for speed
(``recv_into`` a large buffer, terminators found with ``bytes.find``/``count``) so that it is not
the bottleneck: on loopback it takes ~1 GB/s from a raw blast.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

TERMINATOR = b"\r\n.\r\n"
RECV_SIZE = 1 << 20


class ProtocolError(Exception):
    """The server answered something the benchmark did not expect."""


@dataclass
class Target:
    """Where a peer listens; ``ca`` is the PEM file of the CA that signed its certificate."""

    name: str
    port: int
    tls_port: Optional[int] = None
    ca: Optional[str] = None


def tls_context(ca: Optional[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False  # certificates name "localhost"; we dial 127.0.0.1
    return context


class Connection:
    """One POP3 session over a (possibly TLS) socket, read with large buffers."""

    def __init__(self, port: int, tls: Optional[ssl.SSLContext] = None, timeout: float = 60.0):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.buffer = bytearray(RECV_SIZE)
        self.view = memoryview(self.buffer)
        self.pending = b""

    def _recv(self) -> bytes:
        n = self.sock.recv_into(self.buffer)
        if not n:
            raise ProtocolError("server closed the connection")
        return self.buffer[:n]

    def line(self) -> bytes:
        while b"\r\n" not in self.pending:
            self.pending += self._recv()
        line, _, self.pending = self.pending.partition(b"\r\n")
        return bytes(line)

    def ok(self) -> bytes:
        line = self.line()
        if not line.startswith(b"+OK"):
            raise ProtocolError(line.decode("utf-8", "replace")[:200])
        return line

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, text: bytes) -> bytes:
        self.send(text + b"\r\n")
        return self.ok()

    def login(self, user: str, password: str) -> None:
        self.ok()
        self.command(b"USER " + user.encode())
        self.command(b"PASS " + password.encode())

    def multiline(self) -> int:
        """Read one multi-line body after its +OK line; returns its size on the wire."""
        data = self.pending
        total = 0
        while True:
            index = data.find(TERMINATOR)
            if index != -1 or data.startswith(b".\r\n"):
                end = index + 5 if index != -1 else 3
                self.pending = bytes(data[end:])
                return total + end
            keep = len(data) - 4 if len(data) > 4 else 0
            total += keep
            data = bytes(data[keep:]) + self._recv()

    def bodies(self, count: int) -> int:
        """Read ``count`` pipelined (+OK line, body) responses; returns the octets received.

        The terminator ``CRLF.CRLF`` cannot occur inside a dot-stuffed body, so counting it over
        the raw stream (with 4 bytes carried across reads) counts the responses.
        """
        received = len(self.pending)
        seen = self.pending.count(TERMINATOR)
        tail = bytes(self.pending[-4:])
        while seen < count:
            n = self.sock.recv_into(self.buffer)
            if not n:
                raise ProtocolError("server closed after %d of %d bodies" % (seen, count))
            received += n
            chunk = self.view[:n]
            edge = tail + bytes(chunk[:4])
            seen += edge.count(TERMINATOR) + self.buffer.count(TERMINATOR, 0, n)
            tail = bytes(chunk[n - 4:]) if n >= 4 else (tail + bytes(chunk))[-4:]
        self.pending = b""
        return received

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def bulk(target: Target, user: str, password: str, count: int, tls: bool = False) -> Tuple[float, int]:
    """Pipeline ``RETR 1..count`` in one session; returns (seconds, octets received)."""
    context = tls_context(target.ca) if tls else None
    conn = Connection(target.tls_port if tls else target.port, context)
    try:
        conn.login(user, password)
        commands = b"".join(b"RETR %d\r\n" % i for i in range(1, count + 1))
        start = time.perf_counter()
        conn.send(commands)
        octets = conn.bodies(count)
        elapsed = time.perf_counter() - start
        conn.command(b"QUIT")
        return elapsed, octets
    finally:
        conn.close()


def one_message(target: Target, user: str, password: str) -> Tuple[float, int]:
    """RETR 1 of a large message; returns (seconds, octets)."""
    conn = Connection(target.port)
    try:
        conn.login(user, password)
        start = time.perf_counter()
        conn.send(b"RETR 1\r\n")
        octets = conn.bodies(1)
        elapsed = time.perf_counter() - start
        conn.command(b"QUIT")
        return elapsed, octets
    finally:
        conn.close()


def _session(port: int, login: bytes) -> None:
    """One lockstep session; replies are read with small ``recv`` calls (cheap for the client)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        for command, end in ((b"", b"\r\n"),) + _SESSION_STEPS(login):
            if command:
                sock.sendall(command)
            data = pending
            while True:
                # A status line, or a multi-line reply (status + body + terminator) for UIDL.
                if data.startswith(b"-ERR"):
                    raise ProtocolError(data[:200].decode("utf-8", "replace"))
                index = data.find(end)
                if index != -1 and (end != b"\r\n.\r\n" or b"\r\n" in data[:index + 2]):
                    pending = data[index + len(end):]
                    break
                chunk = sock.recv(65536)
                if not chunk:
                    raise ProtocolError("server closed the connection")
                data += chunk
    finally:
        sock.close()


def _SESSION_STEPS(login: bytes) -> Tuple[Tuple[bytes, bytes], ...]:
    user, password = login.split(b"\0")
    return ((b"USER " + user + b"\r\n", b"\r\n"), (b"PASS " + password + b"\r\n", b"\r\n"),
            (b"STAT\r\n", b"\r\n"), (b"UIDL\r\n", b"\r\n.\r\n"), (b"QUIT\r\n", b"\r\n"))


def session_loop(port: int, user: str, password: str, seconds: float) -> Tuple[int, int]:
    """connect / login / STAT / UIDL / QUIT until ``seconds`` pass; returns (done, failed)."""
    done = failed = 0
    login = user.encode() + b"\0" + password.encode()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        try:
            _session(port, login)
            done += 1
        except (OSError, ProtocolError):
            failed += 1
    return done, failed


def big_maildir(target: Target, user: str, password: str) -> Tuple[float, float, int]:
    """One session on a big maildrop: (login+STAT seconds, UIDL seconds, message count)."""
    start = time.perf_counter()
    conn = Connection(target.port, timeout=600)
    try:
        conn.login(user, password)
        stat = conn.command(b"STAT")
        login_stat = time.perf_counter() - start
        start = time.perf_counter()
        conn.command(b"UIDL")
        conn.multiline()
        uidl = time.perf_counter() - start
        conn.command(b"QUIT")
        return login_stat, uidl, int(stat.split()[1])
    finally:
        conn.close()


def idle_connections(port: int, count: int, batch: int = 200) -> List[socket.socket]:
    """Open ``count`` connections and read each greeting; the caller closes them."""
    socks: List[socket.socket] = []
    try:
        while len(socks) < count:
            group = []
            for _ in range(min(batch, count - len(socks))):
                sock = socket.create_connection(("127.0.0.1", port), timeout=120)
                group.append(sock)
                socks.append(sock)
            for sock in group:
                if not sock.recv(512).startswith(b"+OK"):
                    raise ProtocolError("no greeting on an idle connection")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def raw_blast(megabytes: int = 512) -> float:
    """MB/s the client reads from a plain socket pair blast (the client's own ceiling)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    pid = os.fork()
    if pid == 0:
        try:
            sock = socket.create_connection(listener.getsockname())
            chunk = b"x" * (1 << 20)
            for _ in range(megabytes):
                sock.sendall(chunk)
            sock.close()
        finally:
            os._exit(0)
    sock, _ = listener.accept()
    listener.close()
    buffer = bytearray(RECV_SIZE)
    total = 0
    start = time.perf_counter()
    while True:
        n = sock.recv_into(buffer)
        if not n:
            break
        total += n
        buffer.count(TERMINATOR, 0, n)
    elapsed = time.perf_counter() - start
    sock.close()
    os.waitpid(pid, 0)
    return total / elapsed / 1e6
