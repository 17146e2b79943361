"""The kernel's own record of this host's TCP sockets, read through sock_diag netlink (what ``ss``
shows; ``ss`` itself is not installed everywhere the tests run)."""

from __future__ import annotations

import socket
import struct
from typing import Iterator, Tuple

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_REQUEST_DUMP = 0x1 | 0x300  # NLM_F_REQUEST | NLM_F_DUMP
TCP_ESTABLISHED, TCP_LISTEN = 1, 10


def inet_diag(states: int, extensions: int = 0, sport: int = 0,
              dport: int = 0) -> Iterator[Tuple[bytes, int, int]]:
    """Every IPv4 TCP socket in ``states`` (a mask of ``1 << TCP_*``): ``(data, start, end)``, its
    ``inet_diag_msg`` (and the ``extensions`` asked for, a mask of ``1 << (INET_DIAG_* - 1)``) being
    ``data[start:end]``. A non-zero ``sport``/``dport`` asks the kernel for only the sockets with that
    local/remote port (callers still check: that filter is the kernel's to honour)."""
    # inet_diag_req_v2; in a dump its sockid filters by the ports given (zero: any), nothing else
    sockid = struct.pack("!HH", sport, dport) + bytes(44)
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, extensions, 0, states) + sockid
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _REQUEST_DUMP, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        nl.send(header + request)
        while True:
            data = nl.recv(1 << 16)
            offset = 0
            while offset < len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == _NLMSG_DONE:
                    return
                if kind == _NLMSG_ERROR:
                    raise OSError("sock_diag refused the request")
                yield data, offset + 16, offset + length
                offset += (length + 3) & ~3


def listen_backlog(port: int) -> int:
    """The backlog of the TCP listener on 127.0.0.1:``port`` as the kernel holds it (``ss -lt``'s
    Send-Q): ``min(listen()'s backlog, net.core.somaxconn)``."""
    for data, start, _ in inet_diag(1 << TCP_LISTEN):
        # inet_diag_msg: family, state, timer, retrans; sockid (sport, dport big-endian, src, dst,
        # interface, cookie); expires, rqueue, wqueue (for a listener: its backlog), ...
        sport, = struct.unpack_from("!H", data, start + 4)
        if sport == port and data[start + 8:start + 12] == socket.inet_aton("127.0.0.1"):
            return struct.unpack_from("=I", data, start + 4 + 48 + 8)[0]
    raise AssertionError("no listener on 127.0.0.1:%d" % port)
