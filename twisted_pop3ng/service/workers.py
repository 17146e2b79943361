"""``--workers N``: N processes serve the same listening sockets.

The ``twistd`` process binds the ports as usual (so its log names them, and ``tcp:0`` works), serves
them itself, and spawns N-1 workers that adopt the very same listening sockets: the kernel hands each
new connection to whichever process accepts it first, so sessions spread over the CPU cores.

What stays true across processes:

* maildrop locks are ``flock`` locks on files, so a second login is refused (``[IN-USE]``) whichever
  process holds the first; the maildir index is a file, validated by every process;
* each worker parses the same ``pop3ng`` arguments (those the master's :class:`Options` parsed,
  minus ``--workers``), so it has the same users, mailboxes, TLS files and limits. Per-address
  connection limits and failure delays are counted per process.

A worker gets its configuration explicitly: one JSON line on its stdin (:func:`worker_config`) with
those arguments, the sockets it inherits and the master's ``sys.path`` (so it imports the very
package the master runs, installed or not); its environment is the master's own.

Workers are supervised: one that dies is started again (at most :data:`MAX_RESTARTS` a minute, then
again after :data:`RESTART_PAUSE`, and at once on SIGHUP: a worker that cannot start -- a
certificate broken on disk -- comes back once it is fixed); they get SIGHUP (TLS reload) and
SIGTERM when the server stops, and exit by themselves if the master goes away (their stdin is a
pipe from it). A worker ignores SIGHUP until it can reload (the default action would end a worker
still starting). Its log events are published in the master's log (:class:`_Worker`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher

log = Logger()

#: Restarts of dead workers allowed per minute, after which a dead worker stays dead.
MAX_RESTARTS = 10
#: Seconds before a worker that kept dying is tried again.
RESTART_PAUSE = 60.0
#: Seconds a stopping worker gets before SIGKILL.
STOP_TIMEOUT = 10.0
#: First file descriptor of the inherited listening sockets in a worker.
FIRST_FD = 3


#: What a worker runs (``python -c``): read the configuration line, take the master's ``sys.path``,
#: then import the worker. Only the standard library runs before ``sys.path`` is set.
BOOTSTRAP = ("import json, signal, sys\n"
             "signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the TLS reload handler is in\n"
             "line = sys.stdin.buffer.readline()\n"
             "if not line:\n"
             "    raise SystemExit(0)  # the master went away before it said anything\n"
             "config = json.loads(line)\n"
             "sys.path[:] = config['sys_path']\n"
             "from twisted_pop3ng.service.worker import worker_main\n"
             "worker_main(config)\n")


def worker_config(arguments: Sequence[str], sockets: Sequence[Tuple[int, str]],
                  sys_path: Sequence[str], tls_tickets: Optional[Dict[str, Any]] = None) -> bytes:
    """The line a worker reads on its stdin: its ``pop3ng`` arguments, its sockets as
    ``"FD:KIND,..."`` (numbered from :data:`FIRST_FD` in the worker), the ``sys.path`` to use and
    the master's TLS ticket keys (secret: a pipe, never the command line or the environment)."""
    spec = ",".join("%d:%s" % (FIRST_FD + i, kind) for i, (_, kind) in enumerate(sockets))
    # Imports ignore sys.path entries that are not str; so does the worker.
    path = [entry for entry in sys_path if isinstance(entry, str)]
    config: Dict[str, Any] = {"arguments": list(arguments), "sockets": spec, "sys_path": path}
    if tls_tickets is not None:
        config["tls_tickets"] = tls_tickets
    return json.dumps(config).encode("ascii") + b"\n"


def pop3ng_arguments(argv: Sequence[str]) -> List[str]:
    """Deprecated, unused: the ``pop3ng`` plugin's own arguments from a twistd command line (after
    ``pop3ng``). Workers get :attr:`Options.arguments <twisted_pop3ng.service.options.Options>`."""
    args = list(argv[1:])
    if "pop3ng" not in args:
        raise ValueError("cannot find the pop3ng subcommand in %r" % (list(argv),))
    return args[args.index("pop3ng") + 1:]


def _how_it_ended(reason: Any) -> str:
    """"exited with status N" or "was killed by signal N" (what a ProcessTerminated says)."""
    value = getattr(reason, "value", None)
    signal_number = getattr(value, "signal", None)
    if signal_number is not None:
        return "was killed by signal %d" % signal_number
    status = getattr(value, "exitCode", None)
    return "exited with status %s" % status if status is not None else "died"


def without_workers(args: Sequence[str]) -> List[str]:
    """Drop ``--workers N`` / ``--workers=N``: a worker must not spawn workers."""
    out: List[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


class _Worker(protocol.ProcessProtocol):
    """One worker process. Its log events arrive as JSON records on its stdout and are published
    in the master's log, so they go wherever the master's go (``--logfile``, syslog, the journal:
    a fail2ban watching the log sees every process's failed logins); its stderr (what it printed
    before its logging began, or a crash) is logged as error lines."""

    #: The longest partial line kept from a worker's output (a longer one is logged in pieces).
    MAX_LINE = 1 << 20

    def __init__(self, pool: "WorkerPool", slot: int) -> None:
        self.pool = pool
        self.slot = slot
        self.ended: defer.Deferred = defer.Deferred()
        self._partial: Dict[int, bytes] = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd not in self._partial:
            return
        lines = (self._partial[fd] + data).split(b"\n")
        self._partial[fd] = lines.pop()
        if len(self._partial[fd]) > self.MAX_LINE:
            lines.append(self._partial[fd])
            self._partial[fd] = b""
        for line in lines:
            self._relay(fd, line)

    def _relay(self, fd: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip("\x1e\r")
        if not text:
            return
        if fd == 1:
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
            if isinstance(event, dict):
                event["pop3ng_worker"] = self.slot + 1
                globalLogPublisher(event)
                return
        log.error("worker {slot}: {line}", slot=self.slot + 1, line=text)

    def processEnded(self, reason: Any) -> None:
        for fd in (1, 2):
            if self._partial[fd]:
                self._relay(fd, self._partial[fd])
                self._partial[fd] = b""
        self.ended.callback(None)
        self.pool._ended(self, reason)



class WorkerPool(service.Service):
    """Spawns and supervises ``count`` workers sharing the sibling listeners' sockets."""

    def __init__(self, count: int, listeners: Sequence[Any], arguments: Sequence[str],
                 reactor: Any = None) -> None:
        """``listeners``: started :class:`~twisted_pop3ng.service.build.ListeningService`
        objects; ``arguments``: the master's ``pop3ng`` arguments (``Options.arguments``)."""
        if reactor is None:
            from twisted.internet import reactor
        self.count = count
        self.listeners = list(listeners)
        self.args = without_workers(arguments)
        self.reactor = reactor
        self.workers: Dict[int, Tuple[_Worker, Any]] = {}
        self.restarts: List[float] = []
        #: Slots waiting to be started again, with their delayed call.
        self._respawns: Dict[int, Any] = {}
        #: (fd, kind): "plain" or "tls", prefixed "proxy+" behind a PROXY-protocol balancer.
        self.sockets: List[Tuple[int, str]] = []
        #: The master's TLS ticket keys (``ticket_keys_export``), handed to every worker.
        self.tls_tickets: Optional[Dict[str, Any]] = None
        self._sighup_chained = False

    def startService(self) -> None:
        service.Service.startService(self)
        from twisted.protocols.tls import TLSMemoryBIOFactory

        for listener in self.listeners:
            port = listener.port
            if port is None:
                raise RuntimeError("--workers: %s is not listening" % (listener.description,))
            from twisted_pop3ng.server.proxy import ProxyHeaderFactory

            factory, proxied = port.factory, isinstance(port.factory, ProxyHeaderFactory)
            if proxied:
                factory = factory.wrappedFactory
            kind = "tls" if isinstance(factory, TLSMemoryBIOFactory) else "plain"
            if self.tls_tickets is None:
                from twisted_pop3ng.service.security_options import ticket_keys_export

                pop3 = factory.wrappedFactory if kind == "tls" else factory
                self.tls_tickets = ticket_keys_export(getattr(pop3, "tls", None))
            self.sockets.append((port.fileno(), "proxy+" + kind if proxied else kind))
        for slot in range(self.count):
            self._spawn(slot)
        if not self._sighup_chained:  # (the master's own handler is in: makeService made the factory)
            self._sighup_chained = True
            self._chain_sighup()

    def _spawn(self, slot: int) -> None:
        child_fds: Dict[int, Any] = {0: "w", 1: "r", 2: "r"}  # (its log comes back: _Worker)
        for i, (fd, _) in enumerate(self.sockets):
            child_fds[FIRST_FD + i] = fd
        worker = _Worker(self, slot)
        transport = self.reactor.spawnProcess(worker, sys.executable,
                                              [sys.executable, "-c", BOOTSTRAP],
                                              env=dict(os.environ), childFDs=child_fds)
        # Never closed: the worker exits when this pipe reaches EOF (the master is gone).
        transport.writeToChild(0, worker_config(self.args, self.sockets, sys.path, self.tls_tickets))
        self.workers[slot] = (worker, transport)
        log.info("worker {slot} started (pid {pid})", slot=slot + 1, pid=transport.pid)

    def _ended(self, worker: _Worker, reason: Any = None) -> None:
        self.workers.pop(worker.slot, None)
        if not self.running:
            return
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        how = _how_it_ended(reason)
        if len(self.restarts) > MAX_RESTARTS:
            log.error("worker {slot} {how}; too many restarts: trying again in {pause:.0f} s, or "
                      "at the next SIGHUP", slot=worker.slot + 1, how=how, pause=RESTART_PAUSE)
            delay = RESTART_PAUSE
        else:
            log.warn("worker {slot} {how}; starting it again", slot=worker.slot + 1, how=how)
            delay = 1.0
        self._respawns[worker.slot] = self.reactor.callLater(delay, self._respawn, worker.slot)

    def _respawn(self, slot: int) -> None:
        pending = self._respawns.pop(slot, None)
        if pending is not None and pending.active():
            pending.cancel()
        if self.running and slot not in self.workers:
            self._spawn(slot)

    def _reload(self) -> None:
        """SIGHUP: the workers reload, and the ones waiting to be restarted start now."""
        self.signal_workers(signal.SIGHUP)
        for slot in list(self._respawns):
            self._respawn(slot)

    def signal_workers(self, signum: int) -> None:
        for _, transport in list(self.workers.values()):
            try:
                transport.signalProcess(signum)
            except Exception:
                pass

    def _chain_sighup(self) -> None:
        """Forward SIGHUP (TLS reload) to the workers, after the master's own handler."""
        previous = signal.getsignal(signal.SIGHUP)

        def handler(signum: int, frame: Any) -> None:
            if callable(previous):
                previous(signum, frame)
            self.reactor.callFromThread(self._reload)

        signal.signal(signal.SIGHUP, handler)

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        for pending in self._respawns.values():
            if pending.active():
                pending.cancel()
        self._respawns.clear()
        ended = [worker.ended for worker, _ in self.workers.values()]
        self.signal_workers(signal.SIGTERM)
        kill = self.reactor.callLater(STOP_TIMEOUT, self.signal_workers, signal.SIGKILL)

        def done(_: Any) -> None:
            if kill.active():
                kill.cancel()

        return defer.DeferredList(ended).addCallback(done)
