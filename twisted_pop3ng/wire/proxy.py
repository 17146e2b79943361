"""The PROXY protocol header (HAProxy's spec, versions 1 and 2) that a TCP load balancer sends
before the client's first byte: who the client really is.

Rules of this module (as the rest of :mod:`twisted_pop3ng.wire`): no Twisted, no I/O. Feed the
first bytes of a connection to :func:`parse_header`; it answers "need more", the header and how
many bytes it took, or :class:`~twisted_pop3ng.wire.WireError` for anything that is not a valid
header (the connection must then be closed: whatever sent it is not the configured proxy).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple, Optional, Tuple

from twisted_pop3ng.wire.command import WireError

#: Version 2's fixed start: ``\r\n\r\n\0\r\nQUIT\n``.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: A version 1 line is at most 107 octets, CRLF included (the spec's worst case).
V1_MAX = 107
#: Version 2 addresses plus the TLVs HAProxy adds (ALPN, authority, SSL details) fit easily; a
#: larger header is refused rather than buffered.
V2_MAX_PAYLOAD = 2048


class ProxyHeader(NamedTuple):
    """The addresses the proxy reports: ``(ip, port)`` pairs, or None for a LOCAL connection (a
    health check of the proxy itself) or an UNKNOWN/unsupported family: use the socket's own."""

    source: Optional[Tuple[str, int]]
    destination: Optional[Tuple[str, int]]


def parse_header(data: bytes) -> Tuple[Optional[ProxyHeader], int]:
    """``(header, octets consumed)`` once ``data`` holds a whole header, ``(None, 0)`` while it
    may still become one; raises :class:`WireError` as soon as it cannot."""
    if data.startswith(V2_SIGNATURE[: len(data)]) and len(data) < len(V2_SIGNATURE):
        return None, 0  # too short to tell v1 from v2 (and a v1 "PROXY" is not a prefix of it)
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if b"PROXY "[: len(data)] == data[:6]:
        return _parse_v1(data)
    raise WireError("not a PROXY protocol header")


def _parse_v1(data: bytes) -> Tuple[Optional[ProxyHeader], int]:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end == -1:
        if len(data) >= V1_MAX:
            raise WireError("PROXY v1 header too long")
        return None, 0
    words = data[:end].split(b" ")
    if len(words) >= 2 and words[1] == b"UNKNOWN":
        return ProxyHeader(None, None), end + 2
    if len(words) != 6 or words[0] != b"PROXY" or words[1] not in (b"TCP4", b"TCP6"):
        raise WireError("malformed PROXY v1 header")
    version = 4 if words[1] == b"TCP4" else 6
    source = (_ip(words[2], version), _port(words[4]))
    destination = (_ip(words[3], version), _port(words[5]))
    return ProxyHeader(source, destination), end + 2


def _ip(word: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(word.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise WireError("bad address in PROXY header")
    if address.version != version:
        raise WireError("address family mismatch in PROXY header")
    if getattr(address, "scope_id", None) is not None:
        # (an IPv6 zone id, "%...", is free text: it went into the log's rip= field as it came)
        raise WireError("bad address in PROXY header")
    return str(address)


def _port(word: bytes) -> int:
    # Decimal without sign or leading zeros, 0-65535 (the spec forbids leading zeros).
    if not word.isdigit() or not word.isascii() or (len(word) > 1 and word[:1] == b"0") or len(word) > 5:
        raise WireError("bad port in PROXY header")
    port = int(word)
    if port > 65535:
        raise WireError("bad port in PROXY header")
    return port


def _parse_v2(data: bytes) -> Tuple[Optional[ProxyHeader], int]:
    if len(data) < 16:
        return None, 0
    version_command, family, length = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2:
        raise WireError("unsupported PROXY header version")
    if length > V2_MAX_PAYLOAD:
        raise WireError("PROXY v2 header too long")
    total = 16 + length
    if len(data) < total:
        return None, 0
    command = version_command & 0x0F
    if command == 0x0:  # LOCAL: the proxy's own connection (health check)
        return ProxyHeader(None, None), total
    if command != 0x1:
        raise WireError("unsupported PROXY v2 command")
    payload = data[16:total]
    if family == 0x11:  # TCP over IPv4
        if length < 12:
            raise WireError("short PROXY v2 address block")
        src, dst, sport, dport = struct.unpack("!4s4sHH", payload[:12])
        return ProxyHeader((str(ipaddress.IPv4Address(src)), sport),
                           (str(ipaddress.IPv4Address(dst)), dport)), total
    if family == 0x21:  # TCP over IPv6
        if length < 36:
            raise WireError("short PROXY v2 address block")
        src, dst, sport, dport = struct.unpack("!16s16sHH", payload[:36])
        return ProxyHeader((_unmapped(ipaddress.IPv6Address(src)), sport),
                           (_unmapped(ipaddress.IPv6Address(dst)), dport)), total
    # UNSPEC, UDP, unix sockets: no usable client address.
    return ProxyHeader(None, None), total


def _unmapped(address: ipaddress.IPv6Address) -> str:
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)
