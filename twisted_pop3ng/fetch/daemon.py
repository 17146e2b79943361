"""``pop3ng fetch --config FILE --daemon SECONDS``: keep polling every account on its own schedule.

* Each account is polled every ``poll_interval`` seconds (its own, or ``[defaults]``'s, else the
  ``--daemon`` value), at most ``[daemon] parallel`` accounts at once.
* A failing account waits longer each time: ``interval * 2**failures`` up to ``max_backoff``,
  times a random factor in [0.8, 1.2] (jitter, so accounts on one server do not retry in step).
  ``[IN-USE]``, ``[LOGIN-DELAY]`` and a lock held by another fetcher are "try later", not
  failures: the account waits its interval, and at least the server's ``LOGIN-DELAY``.
* SIGHUP re-reads the file: changed accounts take their new settings at their next poll, new ones
  are polled at once, removed ones are no longer polled (``[daemon] parallel`` only changes at a
  restart); a broken file is reported and the old one kept.
* SIGTERM (and SIGINT) stop the daemon: no new poll starts; a poll under way fetches no further
  message, records the ones in flight, deletes what it delivered and says QUIT; then exit 0.
* The account lock (``STATE.lock``, :func:`~twisted_pop3ng.fetch.run.fetch`) keeps two daemons,
  or a daemon and a one-shot run, from fetching the same account at once.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Optional, TextIO

from twisted.internet import defer

from twisted_pop3ng.client import errors as client_errors
from twisted_pop3ng.fetch import config as fetch_config
from twisted_pop3ng.fetch.accounts import run_account
from twisted_pop3ng.fetch.exits import EXIT_OK
from twisted_pop3ng.fetch.progress import AccountReport, json_summary, summary_line
from twisted_pop3ng.fetch.run import FetchBusy

__all__ = ["Daemon", "next_delay"]

JITTER = (0.8, 1.2)


def next_delay(interval: float, failures: int, max_backoff: float, login_delay: float = 0.0,
               try_later: bool = False, rand: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds until an account's next poll (see the module doc)."""
    if failures and not try_later:
        base = max(interval, min(max_backoff, interval * 2 ** min(failures, 30)))
        # (the jitter applies within the cap: "the longest wait" is the longest wait)
        return max(min(base * rand(*JITTER), max(max_backoff, interval)), login_delay)
    return max(interval * rand(*JITTER), login_delay)


def _try_later(error: Optional[BaseException]) -> bool:
    return isinstance(error, (client_errors.InUseError, client_errors.LoginDelayError, FetchBusy))


class _Slot:
    """One account's schedule."""

    def __init__(self, account: Any) -> None:
        self.account = account
        self.failures = 0
        self.login_delay = 0.0
        self.timer: Any = None
        self.running = False
        self.removed = False


class Daemon:
    def __init__(self, reactor: Any, path: str, names: List[str], interval: float,
                 stream: TextIO = sys.stderr, json_stream: Optional[TextIO] = None,
                 crash_hook: Optional[Callable[[str], None]] = None) -> None:
        self.reactor = reactor
        self.path = path
        self.names = names
        self.interval = interval
        self.stream = stream
        self.json_stream = json_stream
        self.crash_hook = crash_hook
        self.slots: Dict[str, _Slot] = {}
        self.stopping = False
        self.done: defer.Deferred = defer.Deferred()
        self._semaphore = defer.DeferredSemaphore(1)
        self._config: Optional[fetch_config.Config] = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Read the file (a ConfigError goes to the caller) and poll every account now."""
        self._apply(fetch_config.load(self.path))
        self._log("started: %d account(s) from %s" % (len(self.slots), self.path))

    def install_signal_handlers(self) -> None:
        """After the reactor's own: SIGTERM/SIGINT stop, SIGHUP reloads (run in the reactor)."""
        call = self.reactor.callFromThread
        signal.signal(signal.SIGTERM, lambda *_: call(self.stop))
        signal.signal(signal.SIGINT, lambda *_: call(self.stop))
        signal.signal(signal.SIGHUP, lambda *_: call(self.reload))

    def reload(self) -> None:
        if self.stopping:
            return
        try:
            config = fetch_config.load(self.path)
            config.select(self.names)
        except fetch_config.ConfigError as error:
            self._log("reload failed, keeping the previous configuration: %s" % error)
            return
        self._apply(config)
        self._log("reloaded %s: %d account(s)" % (self.path, len(self.slots)))

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._log("stopping: finishing the messages in flight")
        for slot in self.slots.values():
            if slot.timer is not None and slot.timer.active():
                slot.timer.cancel()
            slot.timer = None
        self._maybe_done()

    # -- scheduling --------------------------------------------------------------------------

    def _apply(self, config: fetch_config.Config) -> None:
        accounts = config.select(self.names)
        if self._config is None:
            self._semaphore = defer.DeferredSemaphore(max(1, config.daemon.parallel))
        elif config.daemon.parallel != self._config.daemon.parallel:
            self._log("[daemon] parallel = %d takes effect at the next start (polls under way "
                      "hold the current bound)" % config.daemon.parallel)
            config.daemon.parallel = self._config.daemon.parallel
        self._config = config
        wanted = {a.name: a for a in accounts}
        for name, slot in list(self.slots.items()):
            if name not in wanted:
                slot.removed = True
                if slot.timer is not None and slot.timer.active():
                    slot.timer.cancel()
                del self.slots[name]
        for name, account in wanted.items():
            if name in self.slots:
                self.slots[name].account = account  # used from its next poll on
            else:
                self.slots[name] = _Slot(account)
                self._schedule(self.slots[name], 0.0)

    def _schedule(self, slot: _Slot, delay: float) -> None:
        if self.stopping or slot.removed:
            return
        slot.timer = self.reactor.callLater(delay, self._poll, slot)

    def _poll(self, slot: _Slot) -> None:
        slot.timer = None
        if self.stopping or slot.removed:
            return
        slot.running = True
        d = self._semaphore.run(lambda: defer.ensureDeferred(self._run(slot)))
        d.addBoth(self._polled, slot)

    async def _run(self, slot: _Slot) -> Optional[AccountReport]:
        if self.stopping:
            return None  # waited for a place while SIGTERM came: not started
        return await run_account(self.reactor, slot.account, should_stop=lambda: self.stopping,
                                 crash_hook=self.crash_hook, on_warning=self._warn(slot))

    def _polled(self, report: Any, slot: _Slot) -> None:
        slot.running = False
        if isinstance(report, AccountReport):
            failure = report.failure
            if report.exit == EXIT_OK:
                slot.failures = 0
            elif not _try_later(failure):
                slot.failures += 1
            if report.login_delay is not None:
                slot.login_delay = report.login_delay
            elif isinstance(failure, client_errors.LoginDelayError) and not slot.login_delay:
                # Refused for logging in too soon, the delay unknown: twice the interval.
                slot.login_delay = 2 * self._interval(slot)
        elif report is not None:  # a bug: keep the daemon alive, back off
            self._log("%s: internal error: %s" % (slot.account.name, report.getErrorMessage()))
            slot.failures += 1
        if self.stopping:
            if isinstance(report, AccountReport):
                self._report(report, None)
            self._maybe_done()
            return
        delay = next_delay(self._interval(slot), slot.failures, self._max_backoff(),
                           slot.login_delay, _try_later(getattr(report, "failure", None)))
        if isinstance(report, AccountReport):
            self._report(report, delay)
        self._schedule(slot, delay)

    def _interval(self, slot: _Slot) -> float:
        return float(slot.account.get("poll_interval") or self.interval)

    def _max_backoff(self) -> float:
        return self._config.daemon.max_backoff if self._config else 3600.0

    def _maybe_done(self) -> None:
        if self.stopping and not any(s.running for s in self.slots.values()) \
                and not self.done.called:
            self._log("stopped")
            self.done.callback(EXIT_OK)

    # -- output ------------------------------------------------------------------------------

    def _report(self, report: AccountReport, delay: Optional[float]) -> None:
        after = "; next poll in %.1f s" % delay if delay is not None else ""
        self._log(summary_line(report) + after)
        if self.json_stream is not None:  # one JSON object per line and poll
            self.json_stream.write(json_summary([report], report.exit, indent=None) + "\n")
            self.json_stream.flush()

    def _warn(self, slot: _Slot) -> Callable[[str], None]:
        return lambda text: self._log("%s: warning: %s" % (slot.account.name, text))

    def _log(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.stream.write("%s pop3ng fetch: %s\n" % (stamp, text))
        self.stream.flush()
