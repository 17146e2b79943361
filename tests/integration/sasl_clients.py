"""Helpers for the security tests (no tests here): independent SASL clients and TLS sessions.

The SCRAM client is written from RFC 5802 with hashlib/hmac only, so it does not share code with
the server (which uses scramp); it checks the server signature itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
from typing import Any, Optional, Tuple

from OpenSSL import SSL

from tests.integration.support import ServerProcess, Session


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def connect_from(server: ServerProcess, source: str, tls: bool = False) -> Session:
    """A session to the server's plain (or TLS) port from a chosen loopback source address."""
    port = server.tls_port if tls else server.port
    sock = socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0))
    if tls:
        context = ssl.create_default_context(cafile=server.certs["ca"])
        sock = context.wrap_socket(sock, server_hostname="localhost")
    return Session(sock)


def starttls(session: Session, server: ServerProcess, **context_options: Any) -> None:
    """Send STLS and upgrade the session's socket with the stdlib ssl module."""
    assert session.command(b"STLS").startswith(b"+OK")
    assert session.buffer == b""
    context = ssl.create_default_context(cafile=server.certs["ca"])
    for name, value in context_options.items():
        setattr(context, name, value)
    session.sock = context.wrap_socket(session.sock, server_hostname="localhost")


class OpenSSLSocket:
    """A blocking pyOpenSSL connection with the ``sendall``/``recv`` a :class:`Session` needs.

    Python's ssl module cannot export keying material, so tls-exporter tests use this.
    """

    def __init__(self, sock: socket.socket, ca: str, max_version: Optional[int] = None,
                 cert: Optional[Tuple[str, str]] = None) -> None:
        sock.settimeout(None)  # pyOpenSSL needs a blocking socket
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.load_verify_locations(ca)
        context.set_verify(SSL.VERIFY_PEER, None)
        if max_version is not None:
            context.set_max_proto_version(max_version)
        if cert is not None:
            context.use_certificate_chain_file(cert[0])
            context.use_privatekey_file(cert[1])
        self.conn = SSL.Connection(context, sock)
        self.conn.set_tlsext_host_name(b"localhost")
        self.conn.set_connect_state()
        self.conn.do_handshake()

    def sendall(self, data: bytes) -> None:
        self.conn.sendall(data)

    def recv(self, size: int) -> bytes:
        try:
            return self.conn.recv(size)
        except SSL.ZeroReturnError:
            return b""

    def settimeout(self, value: float) -> None:
        """pyOpenSSL needs a blocking socket; :meth:`Session.closed` asks for a timeout."""

    def close(self) -> None:
        self.conn.close()

    def channel_binding(self) -> Tuple[str, bytes]:
        if self.conn.get_protocol_version_name() == "TLSv1.3":
            return "tls-exporter", self.conn.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        der = self.conn.get_peer_certificate().to_cryptography().public_bytes(
            __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER)
        return "tls-server-end-point", hashlib.sha256(der).digest()


def tls_session(server: ServerProcess, **kwargs: Any) -> Tuple[Session, OpenSSLSocket]:
    sock = socket.create_connection(("127.0.0.1", server.tls_port), 10)
    wrapped = OpenSSLSocket(sock, server.certs["ca"], **kwargs)
    session = Session(wrapped)  # type: ignore[arg-type]
    assert session.line().startswith(b"+OK")
    return session, wrapped


class ScramClient:
    """RFC 5802 client side, from the RFC alone."""

    def __init__(self, mechanism: str, username: str, password: str,
                 binding: Optional[Tuple[str, bytes]] = None, nonce: Optional[str] = None) -> None:
        self.hash = "sha256" if "SHA-256" in mechanism else "sha1"
        self.plus = mechanism.endswith("-PLUS")
        self.binding = binding
        self.username = username.replace("=", "=3D").replace(",", "=2C")
        self.password = password.encode("utf-8")
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        if self.plus:
            self.gs2 = "p=%s,," % binding[0]
        else:
            self.gs2 = "y,," if binding is not None else "n,,"
        self.first_bare = "n=%s,r=%s" % (self.username, self.nonce)
        self.server_signature = b""

    def first(self) -> bytes:
        return (self.gs2 + self.first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
        if not attrs["r"].startswith(self.nonce):
            raise ValueError("server nonce does not extend ours")
        salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
        salted = hashlib.pbkdf2_hmac(self.hash, self.password, salt, iterations)
        client_key = hmac.new(salted, b"Client Key", self.hash).digest()
        stored_key = hashlib.new(self.hash, client_key).digest()
        cbind = self.gs2.encode() + (self.binding[1] if self.plus else b"")
        without_proof = "c=%s,r=%s" % (base64.b64encode(cbind).decode(), attrs["r"])
        auth_message = ",".join([self.first_bare, server_first.decode(), without_proof]).encode()
        signature = hmac.new(stored_key, auth_message, self.hash).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", self.hash).digest()
        self.server_signature = hmac.new(server_key, auth_message, self.hash).digest()
        return ("%s,p=%s" % (without_proof, base64.b64encode(proof).decode())).encode()

    def check_server_final(self, server_final: bytes) -> bool:
        text = server_final.decode()
        if not text.startswith("v="):
            return False
        return hmac.compare_digest(base64.b64decode(text[2:]), self.server_signature)


def challenge(line: bytes) -> bytes:
    """The decoded data of a ``+ base64`` continuation line."""
    assert line.startswith(b"+ ") or line == b"+\r\n", line
    return base64.b64decode(line[2:].strip())


def scram_login(session: Session, client: ScramClient, mechanism: str) -> bytes:
    """Run a SCRAM exchange; returns the final server line (after the client's empty response)."""
    first = session.command(b"AUTH " + mechanism.encode() + b" " + b64(client.first()))
    if not first.startswith(b"+ "):
        return first
    final = session.command(b64(client.final(challenge(first))))
    if not final.startswith(b"+ "):
        return final
    if not client.check_server_final(challenge(final)):
        raise AssertionError("server signature does not verify")
    return session.command(b"")
