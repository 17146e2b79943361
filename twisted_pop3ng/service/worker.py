"""One ``--workers`` process: adopts the listening sockets its master passes and serves them.

Started by :class:`twisted_pop3ng.service.workers.WorkerPool` (``python -c`` with
:data:`~twisted_pop3ng.service.workers.BOOTSTRAP`), which writes its configuration as one JSON line
on its stdin (:func:`~twisted_pop3ng.service.workers.worker_config`): ``arguments`` (the
``pop3ng`` arguments), ``sockets`` (``"FD:KIND,..."``) and ``sys_path``. It exits when the master
goes away (that stdin pipe reaches EOF). ``python -m twisted_pop3ng.service.worker`` reads the same
line.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Mapping


def _watch_master(reactor: Any) -> None:
    """Exit when the master goes away: stdin is a pipe from it, EOF means it is gone."""
    from twisted.internet import abstract

    def master_gone() -> None:
        if reactor.running:
            reactor.stop()

    class Watch(abstract.FileDescriptor):
        def fileno(self) -> int:
            return 0

        def doRead(self) -> None:
            try:
                data = os.read(0, 512)
            except OSError:
                data = b""
            if not data:
                self.stopReading()
                master_gone()

        def connectionLost(self, reason: Any) -> None:
            # A pipe whose writer died empty polls as EPOLLHUP without EPOLLIN: the reactor then
            # calls this, never doRead. Ignoring it left workers serving, orphaned, after a
            # SIGKILL of the master (and a restarted master failed with "Address already in use").
            master_gone()

    Watch(reactor).startReading()


def worker_main(config: Mapping[str, Any]) -> None:
    """Serve the sockets ``config["sockets"]`` names, configured by ``config["arguments"]``."""
    spec, args = config["sockets"], config["arguments"]
    from twisted_pop3ng.fastpath.reactor import install_default

    install_default()  # as twistd pop3ng does
    from twisted.internet import reactor as installed

    reactor: Any = installed  # the one installed above: an IReactorCore, IReactorThreads, ...
    from twisted.logger import globalLogBeginner, jsonFileLogObserver
    from twisted.python import usage
    from twisted_pop3ng.service import build
    from twisted_pop3ng.service.options import Options
    from twisted_pop3ng.fastpath.port import LeanTCPReactor
    from twisted_pop3ng.fastpath.tls import tls_factory

    # JSON records on stdout: the master publishes them in its own log (workers._Worker).
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sys.stdout)], redirectStandardIO=False)
    options = Options()
    try:
        options.parseOptions(list(args))
    except usage.UsageError as error:
        # (a certificate broken on disk since the master started, say: one line, and the
        # master's supervision tries again later; a traceback said no more)
        sys.stderr.write("cannot start: %s\n" % (error,))
        raise SystemExit(2)
    from twisted_pop3ng.service.security_options import share_ticket_keys

    share_ticket_keys(options["tls"], config.get("tls_tickets"))  # a ticket resumes in any process
    build.configure_reactor(options, reactor)
    factory = build.make_factory(options)
    for item in spec.split(","):
        fd_text, _, kind = item.partition(":")
        fd = int(fd_text)
        probe = socket.socket(fileno=os.dup(fd))
        family = probe.family
        probe.close()
        proxied, _, kind = kind.rpartition("+")
        served = tls_factory(options["tls"], factory) if kind == "tls" else factory
        if proxied:
            from twisted_pop3ng.server.proxy import ProxyHeaderFactory

            served = ProxyHeaderFactory(served)
        LeanTCPReactor(reactor).adoptStreamPort(fd, family, served)
        os.close(fd)
    _watch_master(reactor)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    import json

    _line = sys.stdin.buffer.readline()
    if _line:
        worker_main(json.loads(_line))
