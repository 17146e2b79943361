"""Progress and reporting for ``pop3ng fetch``: the bar on a terminal, the summary lines, ``--json``.

The bar is one line on stderr, redrawn at most ten times a second: messages and octets done of the
total to fetch (over every account running at once), the rate and the time left. It is drawn only
when stderr is a terminal; otherwise each account gets one summary line when it ends.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, TextIO

__all__ = ["ProgressBar", "AccountProgress", "AccountReport", "summary_line", "json_summary"]


def _octets(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1000.0
    return "%d" % n  # not reached


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds >= 3600:
        return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)
    return "%d:%02d" % (seconds // 60, seconds % 60)


class ProgressBar:
    """The totals of every account running at once, drawn on one terminal line."""

    WIDTH = 24

    def __init__(self, stream: TextIO, clock: Any = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.messages = self.total_messages = 0
        self.octets = self.total_octets = 0
        self._started: Optional[float] = None
        self._last_draw = 0.0
        self._drawn = False

    def account(self) -> "AccountProgress":
        return AccountProgress(self)

    def _add_work(self, messages: int, octets: int) -> None:
        if self._started is None:
            self._started = self.clock()
        self.total_messages += messages
        self.total_octets += octets
        self.draw(force=True)

    def _advance(self, messages: int, octets: int) -> None:
        self.messages += messages
        self.octets += octets
        self.draw(force=self.messages >= self.total_messages)

    def line(self) -> str:
        elapsed = max(self.clock() - (self._started or self.clock()), 1e-6)
        fraction = self.octets / self.total_octets if self.total_octets else (
            self.messages / self.total_messages if self.total_messages else 1.0)
        fraction = min(fraction, 1.0)
        filled = int(self.WIDTH * fraction)
        rate = self.messages / elapsed
        text = "[%s%s] %d/%d msgs  %s/%s  %.0f msg/s" % (
            "#" * filled, "." * (self.WIDTH - filled), self.messages, self.total_messages,
            _octets(self.octets), _octets(self.total_octets), rate)
        if fraction < 1:
            text += "  ETA %s" % (_duration(elapsed * (1 - fraction) / fraction) if fraction
                                  else "?")
        return text

    def draw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self.stream.write("\r\x1b[K" + self.line())
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        """Take the bar off the line (before a summary line, and at the end)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


class AccountProgress:
    """What one account's fetch reports to the bar (see :attr:`FetchOptions.progress_sink`)."""

    def __init__(self, bar: ProgressBar) -> None:
        self.bar = bar

    def start(self, messages: int, octets: int) -> None:
        self.bar._add_work(messages, octets)

    def advance(self, messages: int, octets: int) -> None:
        self.bar._advance(messages, octets)

    def close(self) -> None:
        pass


@dataclass
class AccountReport:
    """The outcome of one account's run, for the summary line and ``--json``."""

    name: str
    exit: int
    listed: int = 0
    delivered: int = 0
    skipped: int = 0
    deleted: int = 0
    octets: int = 0
    seconds: float = 0.0
    error: Optional[str] = None
    refused: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    #: The exception that ended the run (for the daemon's retry decisions; not in --json).
    failure: Optional[BaseException] = field(default=None, repr=False)
    #: The server's LOGIN-DELAY (seconds), when it announced one.
    login_delay: Optional[float] = None


def summary_line(report: AccountReport) -> str:
    if report.error is not None:
        return "%s: failed (exit %d): %s" % (report.name, report.exit, report.error)
    text = "%s: %d delivered (%s), %d already delivered, %d deleted on the server" % (
        report.name, report.delivered, _octets(report.octets), report.skipped, report.deleted)
    if report.refused:
        text += ", %d left on the server (exit %d)" % (len(report.refused), report.exit)
    return text


def json_summary(reports: List[AccountReport], exit_code: int, indent: Optional[int] = 2) -> str:
    accounts: List[Dict[str, Any]] = []
    for r in reports:
        accounts.append({"account": r.name, "exit": r.exit, "listed": r.listed,
                         "delivered": r.delivered, "already_delivered": r.skipped,
                         "deleted": r.deleted, "octets": r.octets, "seconds": round(r.seconds, 3),
                         "error": r.error, "left_on_server": r.refused, "warnings": r.warnings})
    return json.dumps({"exit": exit_code, "accounts": accounts}, indent=indent)
