"""What a server counts as it runs: plain ints that the sessions bump, read by whoever wants them.

Rules of this module:

* counting is cheap: one :class:`ServerStats` per factory (``factory.stats``), slotted, its
  counters plain ints and dicts bumped with ``+= 1`` on the reactor thread -- no locks, no metric
  objects, nothing formatted. A factory without one (``stats=None``, the default) counts nothing,
  and its sessions pay one ``is None`` test per command;
* readers (the Prometheus collector of ``twistd pop3ng --metrics``, an embedding application, a
  test) read the values when they want them, on the reactor thread, and never write;
* every label a table is keyed by comes from a bounded set the server itself defines (registered
  verbs, our mechanisms and response codes, the words of :data:`ENDINGS`); whatever the client
  sends that is not a registered verb is counted as :data:`OTHER`;
* :class:`SessionSummary` is what one session did, kept only when sessions are logged
  (``ServerConfig.log_sessions``): without it a session carries no per-session counters.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from typing import Any, DefaultDict, Dict, List, Optional, Tuple

#: The verb label of a command line that names no registered verb (or cannot be parsed).
OTHER = "other"
#: The code label of an ``-ERR`` reply without a response code.
NO_CODE = "none"
#: How a session can end: the client's QUIT, the inactivity (or login) timeout, the server
#: closing it (bad commands, failed logins, a failed transfer), a connection refused by the abuse
#: limits, or the connection dropping without any of these.
ENDINGS = ("quit", "timeout", "closed", "refused", "drop")
#: Upper bounds (seconds) of the login latency histogram: from a login's credentials being
#: complete to the portal's answer (a password hash, the maildrop lock, the realm), before any
#: failure delay. Cheap schemes answer in microseconds, queued bcrypt/argon2 hashes in seconds.
LOGIN_BUCKETS: Tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                    0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts of observations per bucket (not cumulative; the last one is +Inf) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts: List[int] = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le="bound").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> List[Tuple[float, int]]:
        """(upper bound, observations <= it) per bucket, the last bound ``inf``."""
        out, running = [], 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            running += count
            out.append((bound, running))
        return out


class ServerStats:
    """The counters of one POP3 server factory (see the module's rules)."""

    __slots__ = (
        # Connections accepted by kind of listener (plain: --listen; tls: --tls-listen), and
        # those open now.
        "sessions_plain", "sessions_tls", "active_plain", "active_tls",
        # STLS upgrades begun (the +OK sent and the handshake started).
        "stls",
        # Sessions ended, by how (ENDINGS).
        "endings",
        # Connections refused by the abuse limits at connect time: "total" (the server's cap) or
        # "address" (the client network's cap).
        "refused",
        # Command lines by verb (OTHER: not a registered verb).
        "commands",
        # Login attempts by (mechanism, result): result "ok" or the audit log's reason word.
        "logins",
        # -ERR replies by response code (NO_CODE: none).
        "errors",
        # Messages and their octets (dot-stuffed, with the final "." line, without the status
        # line) sent by RETR and by TOP.
        "retr_messages", "retr_bytes", "top_messages", "top_bytes",
        # Messages deleted by a committed UPDATE (QUIT).
        "deletions",
        # Seconds from a login's complete credentials to the portal's answer.
        "login_latency",
    )

    def __init__(self) -> None:
        self.sessions_plain = self.sessions_tls = self.active_plain = self.active_tls = 0
        self.stls = 0
        self.endings: DefaultDict[str, int] = defaultdict(int)
        self.refused: DefaultDict[str, int] = defaultdict(int)
        #: (A plain dict: the interpreter's fast path for ``d[k] += 1`` takes exact dicts only.)
        self.commands: Dict[str, int] = {}
        self.logins: DefaultDict[Tuple[str, str], int] = defaultdict(int)
        self.errors: DefaultDict[str, int] = defaultdict(int)
        self.retr_messages = self.retr_bytes = self.top_messages = self.top_bytes = 0
        self.deletions = 0
        self.login_latency = Histogram(LOGIN_BUCKETS)

    # What a session tells once or twice in its life (the per-command count is inlined in
    # POP3ServerProtocol.lineReceived).

    def opened(self, tls: bool) -> None:
        """A connection accepted (``tls``: on a TLS-from-the-first-byte listener)."""
        if tls:
            self.sessions_tls += 1
            self.active_tls += 1
        else:
            self.sessions_plain += 1
            self.active_plain += 1

    def closed(self, tls: bool, how: str) -> None:
        """A connection opened with ``opened(tls)`` is gone; the session ended ``how``."""
        if tls:
            self.active_tls -= 1
        else:
            self.active_plain -= 1
        self.endings[how] += 1

    def command(self, verb: str, session: Any) -> None:
        """A command line for ``verb`` (:data:`OTHER`: none registered) from ``session``."""
        self.commands[verb] = self.commands.get(verb, 0) + 1
        summary = session.summary
        if summary is not None:
            summary.commands += 1

    def sent(self, top: bool, size: int, summary: Optional["SessionSummary"]) -> None:
        """A message sent by RETR (or its part sent by TOP): ``size`` octets after the status."""
        if top:
            self.top_messages += 1
            self.top_bytes += size
        else:
            self.retr_messages += 1
            self.retr_bytes += size
        if summary is not None:
            summary.bytes += size
            if not top:
                summary.retrieved += 1

    @property
    def lock_conflicts(self) -> int:
        """Logins refused because another session holds the maildrop (``-ERR [IN-USE]``)."""
        return self.errors.get("IN-USE", 0)


class SessionSummary:
    """What one session did, for its summary log event (``--log-sessions``)."""

    __slots__ = ("started", "commands", "retrieved", "bytes", "deleted", "stls")

    def __init__(self, started: float) -> None:
        self.started = started
        self.commands = self.retrieved = self.bytes = self.deleted = 0
        self.stls = False


__all__ = ["ServerStats", "SessionSummary", "Histogram", "OTHER", "NO_CODE", "ENDINGS",
           "LOGIN_BUCKETS"]
