"""The reactor ``twistd pop3ng`` runs on by default: Twisted's epoll reactor, dispatching leaner.

A POP3 session is short: an accept, five command lines, a close. So what Twisted's reactor does per
event and per loop turn is a visible share of it (the measurements: docs/performance.rst).

* ``EPollReactor.doPoll`` runs each ready descriptor's ``doRead``/``doWrite`` through
  ``log.callWithLogger``, which asks the descriptor for its ``logPrefix()`` and copies the legacy log
  context (a dictionary) around every call. That context is read only by the *legacy*
  ``twisted.python.log.msg``, to fill in the ``system`` column; ``twisted.logger.Logger`` events,
  which this project logs with, name their own namespace, so it is skipped. The one visible change:
  a legacy log line written during a dispatch says ``[-]`` instead of
  ``[POP3ServerProtocol,7,127.0.0.1]``.
* ``ReactorBase.mainLoop`` enters its failure-logging context manager once per turn; here it is
  entered once and re-entered only after it has logged an escaped exception, so the behaviour on an
  error (logged, the loop goes on) is the same.

* **Busy polling, adaptive.** Before ``epoll_wait`` sleeps, the loop keeps asking ``epoll_wait``
  without sleeping for a short window, when recent history says the next event comes that soon.
  A POP3 session is a ping-pong of short lines: the client's next command usually arrives some
  tens of microseconds after the reply left. Sleeping in between costs the server a context
  switch each time and the client the wake-up of the server (on a VM, an IPI: a VM exit), for six
  events per session. The window adapts as Linux's cpuidle
  ``haltpoll`` governor does: it doubles (up to :attr:`LeanEPollReactor.busy_poll`, 50 µs by
  default) when a sleep ended sooner than the longest window, and halves, down to nothing, when
  a sleep outlasted it. So an idle server, or one whose events come further apart, does not
  spin: it spins at most once per burst of activity, for a window that shrinks to zero after a
  few misses. ``twistd pop3ng --busy-poll 0`` turns it off.

Everything else — the epoll set, the waker, signals, threads, timed calls, ``_doReadOrWrite`` and
its disconnect handling — is the stock reactor's. ``twistd pop3ng`` installs this reactor only
when no other one was chosen (``twistd --reactor=epoll pop3ng`` runs on the stock one) and only
where epoll exists; twistd's log line "reactor class: …" says which is running. Other ``twistd``
applications can pick it with ``--reactor=pop3ng-epoll``.

Rules of this module: the private names it relies on are probed in :mod:`._compat`; without the
epoll reactor's internals :func:`install` installs Twisted's own epoll reactor (and
:func:`install_default` nothing), without ``_topHandler`` the main loop is Twisted's, without the
timed-call state every turn runs ``runUntilCurrent`` + ``timeout`` as Twisted's does.
"""

from __future__ import annotations

import errno
import sys
import time
from typing import Any, Optional

from select import EPOLLIN as _EPOLLIN

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger
from twisted.python import log as _legacy_log

from twisted_pop3ng.fastpath import _compat
from twisted_pop3ng.fastpath.port import LeanServer

_log = Logger()
#: Busy polling (see the module docstring): the default longest window, and the first one
#: tried after a sleep that ended within it, in seconds.
BUSY_POLL = 50e-6
SPIN_START = 10e-6
_clock = time.perf_counter
#: epoll_wait's longest timeout in seconds (a C int of milliseconds), as ReactorBase.timeout.
_LONGEST_SLEEP = 2147483


class LeanEPollReactor(EPollReactor):
    """``EPollReactor`` without the legacy log context per event (see the module docstring)."""

    #: The longest busy-polling window, in seconds (0: never spin); see the module docstring.
    busy_poll = BUSY_POLL
    #: The current window: grows while sleeps end within busy_poll, shrinks (to 0) otherwise.
    _spin = 0.0

    def doPoll(self, timeout: Optional[float]) -> None:
        if timeout is None:
            timeout = -1  # wait indefinitely
        selectables = self._selectables
        try:
            if timeout == 0 or not self.busy_poll:
                events = self._poller.poll(timeout, len(selectables))
            else:
                events = self._poller.poll(0, len(selectables))
                if not events:
                    events = self._spin_then_sleep(timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:  # removed by an earlier event of this round
                continue
            if event == _EPOLLIN and type(selectable) is LeanServer:
                # The common case of a session, a command line to read: what _doReadOrWrite
                # does for it (doRead, and the disconnect it may return or raise), without
                # its event tests and the fileno() check (a LeanServer keeps its socket's
                # fileno until connectionLost, which also takes it out of the reactor).
                try:
                    why = selectable.doRead()
                except BaseException:
                    why = sys.exc_info()[1]
                    _legacy_log.err()
                if why:
                    self._disconnectSelectable(selectable, why, True)
            else:
                dispatch(selectable, fd, event)

    doIteration = doPoll

    def _spin_then_sleep(self, timeout: float, most: int) -> Any:
        """No event is ready: poll without sleeping for the current window, then sleep (for the
        rest of ``timeout``, -1 meaning no limit); adapt the window to how long the sleep was."""
        poll = self._poller.poll
        spin = self._spin
        start = now = _clock()
        if spin:
            end = start + spin
            while now < end:
                events = poll(0, most)
                if events:
                    return events  # caught: the window stays
                now = _clock()
            if timeout > 0:
                timeout = max(timeout - (now - start), 0)
        events = poll(timeout, most)
        slept = _clock() - now
        longest = self.busy_poll
        if slept < longest:  # a longer window would have caught it
            self._spin = min(longest, max(spin * 2, SPIN_START))
        else:  # the window was spent in vain
            self._spin = spin / 2 if spin > SPIN_START else 0.0
        return events

    def lean_forget(self, selectable: Any) -> None:
        """Stop watching a connection that is about to be closed, for reading and writing at once
        (what removeReader + removeWriter do for a socket: one epoll_ctl, and four Python calls
        less each). Used by ``server_port.LeanServer.connectionLost``."""
        fd = selectable.fileno()
        reads, writes = self._reads, self._writes
        if fd in reads or fd in writes:
            reads.discard(fd)
            writes.discard(fd)
            del self._selectables[fd]
            self._poller.unregister(fd)
        elif self._continuousPolling.isReading(selectable) or self._continuousPolling.isWriting(
                selectable):
            self.removeReader(selectable)
            self.removeWriter(selectable)

    def __init__(self) -> None:
        super().__init__()
        #: The loop's shortcut reads private attributes of ReactorBase (_compat.TIMED_CALL_STATE);
        #: without them (a future Twisted) every turn takes runUntilCurrent + timeout as Twisted's.
        self._lean_turns = _compat.TIMED_CALL_STATE_PRESENT

    def mainLoop(self) -> None:
        top_handler = _compat.TOP_HANDLER  # Twisted's private "Unexpected error in main loop"
        if top_handler is None:
            super().mainLoop()
            return
        seconds, lean = self.seconds, self._lean_turns
        while self._started:
            with top_handler:  # logs an escaped exception; then the loop goes on
                while self._started:
                    # Most turns have nothing timed to run: no thread call, no new timer,
                    # the earliest timer (the idle sweeper's) in the future. Then the sleep
                    # is computed here, without runUntilCurrent and timeout (two calls, two
                    # _insertNewDelayedCalls and two clock reads per turn).
                    slow = True
                    if lean and not (self.threadCallQueue or self._newTimedCalls
                                     or self._justStopped or self._cancellations > 50):
                        pending = self._pendingTimedCalls
                        if not pending:
                            t, slow = None, False
                        else:
                            t = pending[0].time - seconds()
                            if t > 0:
                                slow = False
                                if t > _LONGEST_SLEEP:
                                    t = _LONGEST_SLEEP
                    if slow:
                        self.runUntilCurrent()
                        t = self.timeout()
                    self.doIteration(self.running and t)
        _log.info("Main loop terminated.")


def install() -> EPollReactor:
    """Install a :class:`LeanEPollReactor` as the global reactor (``twistd --reactor`` style);
    Twisted's own epoll reactor if the internals it relies on are missing (see :mod:`._compat`)."""
    from twisted.internet.main import installReactor

    reactor = LeanEPollReactor() if _compat.EPOLL_INTERNALS else EPollReactor()
    installReactor(reactor)
    return reactor


def install_default() -> Optional[Any]:
    """Install the lean reactor unless a reactor is installed already, or epoll or the epoll
    reactor's internals are missing (then Twisted picks its default); the reactor installed, or
    None."""
    if "twisted.internet.reactor" in sys.modules or not _compat.EPOLL_INTERNALS:
        return None
    return install()
