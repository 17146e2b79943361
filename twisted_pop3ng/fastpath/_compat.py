"""Every private Twisted (and CPython) name the fast path relies on, probed once, here, at import.

Rules of this module:

* this is the only module of the project that asks whether a private name exists; the other
  fast-path modules read the results below (module attributes, read when a piece is built, so a
  test may patch them) and take the stock Twisted path when a result says "absent";
* a probe checks presence *and*, where the fast path copies or bypasses a Twisted method, the
  names that method's code uses (``co_names``): a Twisted release that adds a field to a
  constructor we unroll, or an output queue to the writes we bypass, turns the piece off instead
  of breaking it silently;
* ``POP3NG_STOCK_TWISTED=1`` in the environment makes every probe "absent": the server then runs
  on public Twisted API only (the CI leg that proves the fallbacks work);
* :data:`SUPPORTED_TWISTED` is the range the fast path was tested against; outside it the probes
  still decide, and :func:`twisted_pop3ng.fastpath.describe` says so.
"""

from __future__ import annotations

import os
import select
import socket
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import twisted
from twisted.internet import abstract, base, tcp
from twisted.protocols import tls as _twisted_tls

#: The Twisted releases the fast path was tested with (oldest as setup.cfg allows, newest run).
SUPPORTED_TWISTED: Tuple[str, str] = (">=26.4", "<=26.10")
#: Set to "1" to force every probe to "absent" (every fallback taken).
STOCK_ENV = "POP3NG_STOCK_TWISTED"

# What the unrolled / bypassed Twisted code may use, as of the newest supported release. A name
# outside these sets means Twisted changed the code we copy: the piece is turned off.
_SERVER_INIT_NAMES = frozenset((  # tcp.Server / Connection / FileDescriptor.__init__ (LeanServer)
    "Connection", "IPv6Address", "__class__", "__init__", "__name__", "_addressType",
    "_getLogPrefix", "_realPortNumber", "address", "client", "connected", "format", "hostname",
    "len", "logstr", "protocol", "repstr", "server", "sessionno", "startReading",
    "FileDescriptor", "abstract", "fileno", "setblocking", "socket",
    "_tempDataBuffer", "_tempDataLen", "reactor", "twisted.internet"))
_CONNECTION_LOST_NAMES = frozenset((  # Connection/FileDescriptor.connectionLost, _closeSocket
    "ConnectionAborted", "FileDescriptor", "_closeSocket", "abstract", "check", "connectionLost",
    "error", "fileno", "hasattr", "protocol", "socket", "connected", "disconnected", "producer",
    "stopProducing", "stopReading", "stopWriting", "OSError", "SOL_SOCKET", "SO_LINGER",
    "_shouldShutdown", "close", "pack", "setsockopt", "shutdown", "struct"))
_WRITE_NAMES = frozenset((  # FileDescriptor.write/writeSequence/doWrite: the output queues
    "_dataMustBeBytes", "_maybePauseProducer", "_tempDataBuffer", "_tempDataLen",
    "_writeDisconnected", "append", "connected", "len", "startWriting", "extend", "Exception",
    "SEND_LIMIT", "_closeWriteConnection", "_concatenate", "_postLoseConnection",
    "_writeDisconnecting", "dataBuffer", "disconnecting", "isinstance", "join", "lazyByteSlice",
    "offset", "producer", "producerPaused", "resumeProducing", "stopWriting", "streamingProducer",
    "writeSomeData"))
_TLS_WRITE_NAMES = frozenset((  # TLSMemoryBIOProtocol._write, rewritten by BatchedTLSProtocol
    "Error", "Failure", "WantReadError", "_bufferedWrite", "_flushSendBIO", "_lostTLSConnection",
    "_tlsConnection", "_tlsShutdownFinished", "len", "send"))
_TLS_FLUSH_NAMES = frozenset((  # TLSMemoryBIOProtocol._flushSendBIO, rewritten likewise
    "WantReadError", "_tlsConnection", "bio_read", "transport", "write"))
_TLS_CONNECT_NAMES = frozenset((  # TLSMemoryBIOProtocol.makeConnection, rewritten likewise
    "Protocol", "ProtocolWrapper", "_appSendBuffer", "_checkHandshakeStatus", "_connectWrapped",
    "_creatorCallable", "_tlsConnection", "directlyProvides", "factory", "makeConnection",
    "providedBy", "registerProtocol"))
#: ReactorBase's timed-call bookkeeping that the lean main loop reads.
TIMED_CALL_STATE = ("_pendingTimedCalls", "_newTimedCalls", "threadCallQueue", "_justStopped",
                    "_cancellations")
#: EPollReactor's state that the lean poll loop and ``lean_forget`` use.
EPOLL_STATE = ("_poller", "_selectables", "_reads", "_writes", "_continuousPolling")


def _code_names(function: Any) -> Optional[frozenset]:
    code = getattr(function, "__code__", None)
    return frozenset(code.co_names) if code is not None else None


def _init_names(cls: type) -> frozenset:
    """The names every ``__init__`` along ``cls``'s MRO uses (the attributes it assigns)."""
    names: set = set()
    for klass in cls.__mro__:
        names |= _code_names(klass.__dict__.get("__init__")) or frozenset()
    return frozenset(names)


def _uses_only(functions: Iterable[Any], allowed: frozenset) -> bool:
    """Every function exists, is Python code, and uses no name outside ``allowed``."""
    for function in functions:
        names = _code_names(function)
        if names is None or not names <= allowed:
            return False
    return True


def _has(obj: Any, *names: str) -> bool:
    return all(hasattr(obj, name) for name in names)


@dataclass(frozen=True)
class Probes:
    """What the running Twisted/CPython offers the fast path (True: the private name is there,
    as the fast path knows it)."""

    #: ``twisted.internet.base._topHandler``: the lean ``mainLoop`` (else Twisted's).
    top_handler: bool
    #: ReactorBase's timed-call state: the lean main loop's shortcut (else runUntilCurrent+timeout).
    timed_call_state: bool
    #: EPollReactor internals (poller, selectables, _doReadOrWrite, _disconnectSelectable): the
    #: lean reactor is installed at all (else Twisted's epoll reactor).
    epoll_internals: bool
    #: tcp.Server's constructor chain and connectionLost as LeanServer unrolls them.
    lean_server: bool
    #: tcp.Port's accept state and CPython's ``socket._accept``: LeanPort's accept loop.
    lean_port: bool
    #: ``tcp.Port._fromListeningDescriptor``: a ``--workers`` process adopts a LeanPort.
    adopt_lean_port: bool
    #: tcp.Server's output queues (``dataBuffer``, ``_tempDataLen``, ``TLS``, ``producer``):
    #: replies go straight to the socket when the transport holds nothing (DirectSender).
    direct_send: bool
    #: TLSMemoryBIOProtocol's ``_write``, ``_flushSendBIO``, ``makeConnection`` and helpers:
    #: BatchedTLSProtocol.
    batched_tls: bool

    def as_dict(self) -> Dict[str, bool]:
        return asdict(self)


def probe(environ: Mapping[str, str] = os.environ) -> Probes:
    """Probe the running Twisted; everything "absent" when ``environ`` forces the stock path."""
    if environ.get(STOCK_ENV, "") not in ("", "0"):
        return Probes(**{name: False for name in Probes.__dataclass_fields__})
    from twisted.internet import posixbase

    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # no epoll on this platform
        EPollReactor = None  # type: ignore[assignment,misc]
    reactor_init = _init_names(posixbase.PosixReactorBase)
    epoll = (EPollReactor is not None and hasattr(select, "epoll")
             and set(EPOLL_STATE) <= _init_names(EPollReactor)
             and _has(EPollReactor, "_doReadOrWrite", "_disconnectSelectable", "doPoll"))
    return Probes(
        top_handler=hasattr(base, "_topHandler"),
        timed_call_state=set(TIMED_CALL_STATE) <= reactor_init,
        epoll_internals=epoll,
        lean_server=(_uses_only((tcp.Server.__init__, tcp.Connection.__init__,
                                 abstract.FileDescriptor.__init__), _SERVER_INIT_NAMES)
                     and _uses_only((tcp.Connection.connectionLost,
                                     abstract.FileDescriptor.connectionLost,
                                     getattr(tcp, "_SocketCloser", None) and
                                     tcp._SocketCloser._closeSocket), _CONNECTION_LOST_NAMES)
                     and _has(tcp.Server, "_getLogPrefix", "_addressType")),
        lean_port=(_has(tcp.Port, "_buildAddr", "sessionno", "transport", "_realPortNumber")
                   and {"numberAccepts", "_accept", "sessionno", "transport"}
                   <= (_code_names(tcp.Port.doRead) or frozenset())
                   and "numberAccepts" in (_code_names(tcp.Port.startListening) or ())
                   and _has(socket.socket, "_accept")),
        adopt_lean_port=hasattr(tcp.Port, "_fromListeningDescriptor"),
        direct_send=(_has(tcp.Server, "dataBuffer", "TLS", "producer", "disconnecting",
                          "connected")
                     and _uses_only((abstract.FileDescriptor.write,
                                     abstract.FileDescriptor.writeSequence,
                                     abstract.FileDescriptor.doWrite), _WRITE_NAMES)),
        batched_tls=(_has(_twisted_tls.TLSMemoryBIOProtocol, "_write", "_bufferedWrite",
                          "_tlsShutdownFinished", "_lostTLSConnection")
                     and _uses_only((_twisted_tls.TLSMemoryBIOProtocol._write,),
                                    _TLS_WRITE_NAMES)
                     and _uses_only((_twisted_tls.TLSMemoryBIOProtocol._flushSendBIO,),
                                    _TLS_FLUSH_NAMES)
                     and _uses_only((_twisted_tls.TLSMemoryBIOProtocol.makeConnection,),
                                    _TLS_CONNECT_NAMES)),
    )


def twisted_in_tested_range(version: str = twisted.__version__) -> bool:
    """Whether ``version`` (major.minor...) lies within :data:`SUPPORTED_TWISTED`."""
    def parse(text: str) -> Tuple[int, ...]:
        return tuple(int(part) for part in text.lstrip("<>=").split(".")[:2])

    try:
        return parse(SUPPORTED_TWISTED[0]) <= parse(version) <= parse(SUPPORTED_TWISTED[1])
    except ValueError:  # a development version such as "26.11.0.dev0" parses; anything else not
        return False


PROBES = probe()
TOP_HANDLER: Any = getattr(base, "_topHandler", None) if PROBES.top_handler else None
TIMED_CALL_STATE_PRESENT = PROBES.timed_call_state
EPOLL_INTERNALS = PROBES.epoll_internals
LEAN_SERVER = PROBES.lean_server
LEAN_PORT = PROBES.lean_port
ADOPT_LEAN_PORT = PROBES.adopt_lean_port
DIRECT_SEND = PROBES.direct_send
BATCHED_TLS = PROBES.batched_tls
