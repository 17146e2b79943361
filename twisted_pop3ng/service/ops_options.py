"""``twistd pop3ng``'s ops options: declared here, checked in :func:`post_options`, started by
:func:`add_services` (called by :mod:`.build`).

* ``--metrics ENDPOINT``: Prometheus text at ``/metrics`` (:mod:`.metrics`);
* ``--log-sessions``: an event per connection and a summary per session
  (:mod:`twisted_pop3ng.server.session_log`).

Either gives the factory a :class:`~twisted_pop3ng.server.stats.ServerStats`; without them
nothing is counted. With ``--workers N`` each process counts its own sessions and the metrics are
the main process's (docs/operations.rst).
"""

from __future__ import annotations

from typing import Any, List


OPT_FLAGS: List[List[Any]] = [
    ["log-sessions", None, "Log an event per connection and a summary per session (user, "
                           "commands, messages retrieved and deleted, bytes, duration, how it "
                           "ended). Off by default: a log line costs about as much as a session."],
]
OPT_PARAMETERS: List[List[Any]] = [
    ["metrics", None, None, "Serve Prometheus metrics at /metrics on this endpoint, e.g. "
                            "tcp:9110:interface=127.0.0.1 (with --workers: the main process's)."],
]


def post_options(options: Any) -> None:
    """Check and convert this module's options (raise ``usage.UsageError``)."""
    description = options.get("metrics")
    if description:
        from twisted.internet import reactor

        from twisted_pop3ng.service.endpoint_check import check_endpoint

        options["metrics-endpoint"] = check_endpoint(reactor, description, "--metrics")


def configure_factory(options: Any, factory: Any) -> None:
    """Give ``factory`` what these options ask of every process serving POP3 (the counters, the
    session log); idempotent. (:mod:`.build` may call it for each ``--workers`` process too.)"""
    from twisted_pop3ng.server.stats import ServerStats

    if options.get("log-sessions"):
        factory.config.log_sessions = True
    if (options.get("metrics") or options.get("log-sessions")) and factory.stats is None:
        factory.stats = ServerStats()


def add_services(options: Any, factory: Any, parent: Any) -> None:
    """Start this module's services under ``parent`` (a MultiService) for the POP3 ``factory``."""
    configure_factory(options, factory)
    if not options.get("metrics"):
        return
    from twisted_pop3ng.auth.checkers import HASH_POOL
    from twisted_pop3ng.service import metrics

    registry = metrics.registry_for(factory.stats, factory.commands.handlers, HASH_POOL)
    metrics.MetricsService(options["metrics-endpoint"], metrics.metrics_site(registry),
                           options["metrics"]).setServiceParent(parent)
