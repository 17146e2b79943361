"""The fast path: everything that relies on private Twisted (and CPython) names, in one side-car.

Rules (the contract this package keeps, tested in ``twisted_pop3ng.test.test_fastpath``):

1. Only :mod:`twisted_pop3ng.service` (``twistd pop3ng`` and its ``--workers`` processes), the
   ``--reactor=pop3ng-epoll`` entry point, deprecated shims and tests import it
   (``lint-imports``). The server receives its pieces by injection
   (``POP3ServerFactory(sender=..., connection_info=...)``): an application embedding
   :class:`~twisted_pop3ng.server.protocol.POP3ServerFactory` depends on no private name.
2. Every private name is probed once, at import, in :mod:`._compat`, which also records the
   Twisted range it was tested with (:data:`._compat.SUPPORTED_TWISTED`). The other modules
   read its results and never probe for themselves.
3. Every piece has a stock fallback, taken when a probe fails, and the same behaviour on the
   wire: the lean reactor -> Twisted's epoll reactor (:mod:`.reactor`); ``LeanPort`` /
   ``LeanServer`` -> ``tcp.Port`` / ``tcp.Server`` (:mod:`.port`); ``BatchedTLSFactory`` ->
   ``TLSMemoryBIOFactory`` (:mod:`.tls`); ``DirectSender`` and the raw-address
   ``connection_info`` -> ``transport.writeSequence`` and ``getPeer``/``getHost``
   (:mod:`.send`).
4. ``POP3NG_STOCK_TWISTED=1`` in the environment fails every probe: the whole server then runs
   on the fallbacks (a CI leg runs the tests so).

This module imports only :mod:`._compat`: asking what is active loads none of the pieces.
"""

from __future__ import annotations

from typing import Dict

import twisted

from twisted_pop3ng.fastpath import _compat

#: Which fallback each probe decides, for :func:`describe`.
_PIECES = (
    ("epoll_internals", "reactor", "LeanEPollReactor", "Twisted's EPollReactor"),
    ("top_handler", "reactor main loop", "lean mainLoop", "ReactorBase.mainLoop"),
    ("timed_call_state", "reactor turns", "timers read directly", "runUntilCurrent + timeout"),
    ("lean_port", "listening port", "LeanPort", "tcp.Port"),
    ("lean_server", "connection transport", "LeanServer", "tcp.Server"),
    ("adopt_lean_port", "--workers port", "LeanPort adopted", "reactor.adoptStreamPort"),
    ("direct_send", "replies", "DirectSender (straight to the socket)",
     "transport.writeSequence"),
    ("batched_tls", "TLS records", "BatchedTLSProtocol", "TLSMemoryBIOProtocol"),
)


def available() -> bool:
    """Whether any fast piece is active (False with ``POP3NG_STOCK_TWISTED=1``)."""
    return any(active().values())


def active() -> Dict[str, bool]:
    """Each probe's result (True: that fast piece is used), as the pieces read them now."""
    return {
        "epoll_internals": _compat.EPOLL_INTERNALS,
        "top_handler": _compat.TOP_HANDLER is not None,
        "timed_call_state": _compat.TIMED_CALL_STATE_PRESENT,
        "lean_port": _compat.LEAN_PORT,
        "lean_server": _compat.LEAN_SERVER,
        "adopt_lean_port": _compat.LEAN_PORT and _compat.ADOPT_LEAN_PORT,
        "direct_send": _compat.DIRECT_SEND,
        "batched_tls": _compat.BATCHED_TLS,
    }


def describe() -> str:
    """What is active, one line per piece (for a log line or a bug report)."""
    state = active()
    lines = ["twisted %s (fast path tested with %s): %s" % (
        twisted.__version__, ",".join(_compat.SUPPORTED_TWISTED),
        "in range" if _compat.twisted_in_tested_range() else "OUTSIDE the tested range")]
    for key, what, fast, stock in _PIECES:
        lines.append("%s: %s" % (what, fast if state[key] else stock + " (stock)"))
    return "\n".join(lines)
