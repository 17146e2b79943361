"""Time a server's answers by clocks a loaded test machine cannot skew.

Wall-clock time measured by the test process includes every moment the test itself was not
scheduled, so "took less than X" flakes on a busy machine. Two measurements do not depend on the
test process:

* the kernel's receive timestamp of a reply (``SO_TIMESTAMPNS``): when the server's bytes arrived,
  however late the test reads them. The time from just before the request was sent to that stamp
  is never less than the server's own delay, so "at least the failure delay" cannot flake; and
  the stamps of replies on several connections give the order in which the server answered;
* the CPU time the server process spent (``/proc/PID/stat``): what a password hash costs, which
  waiting for a CPU does not change.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Tuple

from tests.integration.support import Session

#: SO_TIMESTAMPNS on Linux (the ``socket`` module has no name for it).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("qq")


@dataclass
class TimedReply:
    """A reply line, and the kernel's timestamp (CLOCK_REALTIME) of its arrival."""

    line: bytes
    sent: float  # time.time() just before the request was sent
    arrived: float

    @property
    def at_least(self) -> float:
        """Seconds from the request to the reply: never less than the server took."""
        return self.arrived - self.sent


def stamp_replies(session: Session) -> None:
    """Have the kernel timestamp what arrives on ``session``'s (plain TCP) socket."""
    session.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def send_timed(session: Session, line: bytes) -> float:
    """Send one command line; the wall time just before (for :func:`read_timed`)."""
    assert session.buffer == b"", "a reply is still unread"
    sent = time.time()
    session.send(line + b"\r\n")
    return sent


def read_timed(session: Session, sent: float) -> TimedReply:
    """Read one reply line on a socket set up by :func:`stamp_replies`, with its arrival stamp."""
    arrived = None
    while b"\r\n" not in session.buffer:
        data, ancillary, _, _ = session.sock.recvmsg(1 << 16, socket.CMSG_SPACE(_TIMESPEC.size))
        if not data:
            break
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and arrived is None:
                seconds, nanoseconds = _TIMESPEC.unpack(payload[:_TIMESPEC.size])
                arrived = seconds + nanoseconds / 1e9
        session.buffer += data
    if arrived is None:
        raise AssertionError("no reply, or no kernel timestamp on it (stamp_replies first)")
    line, _, session.buffer = session.buffer.partition(b"\r\n")
    return TimedReply(line + b"\r\n", sent, arrived)


def timed_command(session: Session, line: bytes) -> TimedReply:
    return read_timed(session, send_timed(session, line))


def answer_order(replies: List[Tuple[str, TimedReply]]) -> List[str]:
    """The names of ``replies`` in the order the server's answers arrived."""
    return [name for name, _ in sorted(replies, key=lambda item: item[1].arrived)]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` and all its threads so far."""
    with open("/proc/%d/stat" % pid, "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(function: Callable[..., Any], *args: Any) -> float:
    """The CPU time this thread spends running ``function(*args)``: its cost, not its wait."""
    start = time.thread_time()
    function(*args)
    return time.thread_time() - start
