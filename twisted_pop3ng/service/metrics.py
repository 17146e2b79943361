"""``twistd pop3ng --metrics ENDPOINT``: the server's counters as Prometheus text at ``/metrics``.

Rules of this module:

* the sessions never touch ``prometheus_client``: they bump the plain ints of a
  :class:`~twisted_pop3ng.server.stats.ServerStats`, and :class:`StatsCollector` turns them into
  metric families when Prometheus scrapes (the library's own metric objects take a lock per
  update, which the session hot path must not pay);
* the page is rendered on the reactor thread (:class:`MetricsPage`, a twisted.web resource around
  ``prometheus_client``'s encoders), where the counters are written, so a scrape reads a
  consistent table; ``prometheus_client.twisted.MetricsResource`` would render in a thread;
* the registry is private to the service (never ``prometheus_client.REGISTRY``): embedding
  applications keep theirs, and two servers in one process do not collide;
* only ``/metrics`` answers (``/metrics/`` too); every other path is a 404; scrapes are not
  access-logged.
"""

from __future__ import annotations

import io
from typing import Any, Iterable, Iterator, List, Optional

from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request, Site

from twisted_pop3ng import __version__
from twisted_pop3ng.server.stats import ENDINGS, NO_CODE, OTHER, ServerStats

log = Logger(namespace="pop3ng.metrics")

#: The label values listed (at 0) before anything happened, so that ``rate()`` and alerts see
#: a series from the first scrape on.
LISTENERS = ("plain", "tls")
REFUSAL_LIMITS = ("total", "address")
SENDING_VERBS = ("RETR", "TOP")


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


class StatsCollector:
    """A ``prometheus_client`` collector reading a :class:`ServerStats` at scrape time."""

    def __init__(self, stats: ServerStats, verbs: Iterable[str] = (), hash_pool: Any = None) -> None:
        """``verbs``: the server's registered verbs (listed at 0 until used); ``hash_pool``: the
        :class:`~twisted_pop3ng.auth.checkers.HashPool` whose queue to report (None: none)."""
        self.stats = stats
        self.verbs = sorted(set(verbs) | {OTHER})
        self.hash_pool = hash_pool

    def describe(self) -> List[Metric]:
        return []  # (nothing to check at registration: the names are this module's own)

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        info = GaugeMetricFamily("pop3ng_info", "The server's version (the value is always 1).",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        total = CounterMetricFamily("pop3ng_sessions_total", "Connections accepted, by listener "
                                    "(plain: --listen, tls: --tls-listen).", labels=["listener"])
        total.add_metric(["plain"], s.sessions_plain)
        total.add_metric(["tls"], s.sessions_tls)
        yield total
        active = GaugeMetricFamily("pop3ng_sessions_active", "Connections open now, by listener.",
                                   labels=["listener"])
        active.add_metric(["plain"], s.active_plain)
        active.add_metric(["tls"], s.active_tls)
        yield active
        yield CounterMetricFamily("pop3ng_stls_total", "STLS upgrades begun on plain connections.",
                                  value=s.stls)
        ended = CounterMetricFamily("pop3ng_sessions_ended_total", "Sessions ended, by how: quit, "
                                    "timeout, closed (by the server), refused (abuse limits), drop.",
                                    labels=["how"])
        for how in sorted(set(ENDINGS) | set(s.endings)):
            ended.add_metric([how], s.endings.get(how, 0))
        yield ended
        refused = CounterMetricFamily("pop3ng_connections_refused_total", "Connections refused at "
                                      "once by the abuse limits, by limit (total, address).",
                                      labels=["limit"])
        for limit in sorted(set(REFUSAL_LIMITS) | set(s.refused)):
            refused.add_metric([limit], s.refused.get(limit, 0))
        yield refused

        commands = CounterMetricFamily("pop3ng_commands_total", "Command lines, by verb (other: "
                                       "not a verb this server knows).", labels=["verb"])
        for verb in sorted(set(self.verbs) | set(s.commands)):
            commands.add_metric([verb], s.commands.get(verb, 0))
        yield commands
        logins = CounterMetricFamily("pop3ng_logins_total", "Login attempts, by mechanism and "
                                     "result (ok, or the audit log's reason: password, in-use, "
                                     "busy, disconnected, ...).", labels=["mechanism", "result"])
        for (mechanism, result), count in sorted(s.logins.items()):
            logins.add_metric([mechanism, result], count)
        yield logins
        errors = CounterMetricFamily("pop3ng_errors_total", "-ERR replies, by response code "
                                     "(none: without one).", labels=["code"])
        for code in sorted(set(s.errors) | {NO_CODE}):
            errors.add_metric([code], s.errors.get(code, 0))
        yield errors
        yield CounterMetricFamily("pop3ng_lock_conflicts_total", "Logins refused because another "
                                  "session holds the maildrop (-ERR [IN-USE]).",
                                  value=s.lock_conflicts)

        messages = CounterMetricFamily("pop3ng_messages_sent_total", "Messages sent, by verb "
                                       "(TOP: a part of one).", labels=["verb"])
        messages.add_metric(["RETR"], s.retr_messages)
        messages.add_metric(["TOP"], s.top_messages)
        yield messages
        octets = CounterMetricFamily("pop3ng_message_bytes_sent_total", "Octets of messages sent "
                                     "(as on the wire: dot-stuffed, with the final dot line, "
                                     "without the status line), by verb.", labels=["verb"])
        octets.add_metric(["RETR"], s.retr_bytes)
        octets.add_metric(["TOP"], s.top_bytes)
        yield octets
        yield CounterMetricFamily("pop3ng_deletions_total", "Messages deleted by a committed "
                                  "UPDATE (QUIT).", value=s.deletions)

        latency = s.login_latency
        buckets = [(_bound(bound), count) for bound, count in latency.cumulative()]
        yield HistogramMetricFamily("pop3ng_login_duration_seconds", "Seconds from a login's "
                                    "complete credentials to the answer of the checker and the "
                                    "realm (before any failure delay).",
                                    buckets=buckets, sum_value=latency.sum)

        pool = self.hash_pool
        if pool is not None:
            yield GaugeMetricFamily("pop3ng_hash_queue_waiting", "Password hashes waiting for a "
                                    "thread of the hash pool.", value=pool.waiting)
            yield GaugeMetricFamily("pop3ng_hash_queue_running", "Password hashes being computed.",
                                    value=pool.running)
            yield GaugeMetricFamily("pop3ng_hash_queue_capacity", "Password hashes that may wait "
                                    "(--max-hash-queue); more are refused (SYS/TEMP).",
                                    value=pool.backlog)


def registry_for(stats: ServerStats, verbs: Iterable[str] = (), hash_pool: Any = None,
                 process: bool = True) -> CollectorRegistry:
    """A private registry with a :class:`StatsCollector` (and the process's CPU, memory and file
    descriptors, from ``prometheus_client``'s ProcessCollector, unless ``process`` is False)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats, verbs, hash_pool))
    if process:
        ProcessCollector(registry=registry)
    return registry


class MetricsPage(Resource):
    """``/metrics``: the registry in the format the scraper asks for (Prometheus text, or
    OpenMetrics), rendered on the reactor thread."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        if request.postpath not in ([], [b""]):
            return NoResource().render(request)
        accept = request.getHeader("accept") or ""
        encoder, content_type = choose_encoder(accept)
        request.setHeader("Content-Type", content_type)
        return encoder(self.registry)


class ScrapeRequest(Request):
    """A request to the metrics port. A scrape has no body; one sent anyway is read and dropped
    (``Request`` would spool a body over 100 KB to a temporary file: a client could fill the
    disk through the metrics port, a gigabyte a second)."""

    def gotLength(self, length: Any) -> None:
        self.content = io.BytesIO()  # type: ignore[assignment]  # (Twisted annotates it None)

    def handleContentChunk(self, data: bytes) -> None:
        pass


#: Seconds an idle connection to the metrics port stays open (Twisted's default: 60).
SCRAPE_IDLE_TIMEOUT = 10


class MetricsSite(Site):
    """No access log line per scrape, no "Starting factory" line per start; bodies are dropped
    (:class:`ScrapeRequest`) and idle connections closed after :data:`SCRAPE_IDLE_TIMEOUT`."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def metrics_site(registry: CollectorRegistry) -> Site:
    root = Resource()
    root.putChild(b"metrics", MetricsPage(registry))
    return MetricsSite(root, requestFactory=ScrapeRequest, timeout=SCRAPE_IDLE_TIMEOUT)


class MetricsService(service.Service):
    """Serves :func:`metrics_site` on an endpoint.

    Listens in ``privilegedStartService`` (a low port works before twistd drops privileges), and
    an endpoint that fails at once raises there, so twistd ends with a message naming it (as the
    POP3 listeners do). Logs the address it listens on (``event="metrics.listening"``).
    """

    def __init__(self, endpoint: Any, site: Site, description: str) -> None:
        self.endpoint = endpoint
        self.site = site
        #: What the message of a failed listen names.
        self.description = "--metrics " + description
        #: The IListeningPort once listening. (Not ``port``: ``--workers`` hands the sockets of
        #: the POP3 listeners, which have one, to the worker processes.)
        self.listening_port: Any = None
        self._listening: Optional[defer.Deferred] = None

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)
        self._listen()

    def startService(self) -> None:
        service.Service.startService(self)
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        failed_now: List[Failure] = []
        at_once = [True]

        def listened(port: Any) -> Any:
            self.listening_port = port
            address = port.getHost()
            host = getattr(address, "host", None)
            name = getattr(address, "name", None)
            where = ("http://%s:%d/metrics" % (host if ":" not in host else "[%s]" % host, address.port)
                     if host is not None else
                     "unix:%s /metrics" % (name.decode("utf-8", "replace") if isinstance(name, bytes)
                                          else name) if name is not None else str(address))
            log.info("metrics at {where}", event="metrics.listening", where=where)
            return port

        def failed(reason: Failure) -> None:
            if at_once[0]:
                failed_now.append(reason)
            elif not reason.check(defer.CancelledError):
                log.failure("cannot listen on {description}", reason, description=self.description)

        self._listening = self.endpoint.listen(self.site).addCallbacks(listened, failed)
        at_once[0] = False
        if failed_now:
            failed_now[0].raiseException()

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        listening, self._listening = self._listening, None
        if listening is None:
            return defer.succeed(None)
        listening.cancel()
        return listening.addCallback(lambda port: None if port is None else port.stopListening())
