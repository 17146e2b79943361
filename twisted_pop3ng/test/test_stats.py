"""What a server counts (twisted_pop3ng.server.stats) and how --metrics shows it
(twisted_pop3ng.service.metrics): real sessions over StringTransport on a Clock, real registries."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.logger import capturedLogs
from twisted.trial import unittest
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from twisted.cred.checkers import ICredentialsChecker

from twisted_pop3ng.auth.checkers import HashPool
from twisted_pop3ng.mailbox.memory import MemoryStore
from twisted_pop3ng.server import session_log
from twisted_pop3ng.server.policy import SecurityConfig
from twisted_pop3ng.server.protocol import POP3ServerFactory, ServerConfig
from twisted_pop3ng.server.realm import MailboxRealm
from twisted_pop3ng.server.stats import Histogram, ServerStats
from twisted_pop3ng.service import metrics
from twisted_pop3ng.testing import REMOTE_PEER, SessionDriver, memory_portal

FIRST = b"Subject: one\n\nfirst body\n.dotted\n"
#: FIRST as RETR sends it after the status line: CRLF line ends, the dot doubled, the final dot.
FIRST_WIRE = b"Subject: one\r\n\r\nfirst body\r\n..dotted\r\n.\r\n"
SECOND = b"Subject: two\r\n\r\nsecond\r\n"


def counting_driver(config: Optional[ServerConfig] = None, portal: Any = None,
                    stats: Optional[ServerStats] = None) -> SessionDriver:
    if portal is None:
        portal = memory_portal({"alice": "pw", "bob": "pw"}, {"alice": [FIRST, SECOND]})
    factory = POP3ServerFactory(portal, config or ServerConfig(), clock=task.Clock(),
                                stats=stats if stats is not None else ServerStats())
    return SessionDriver(factory=factory)


def stats_of(driver: SessionDriver) -> ServerStats:
    stats = driver.factory.stats
    assert stats is not None
    return stats


def scrape(registry: Any) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """Every sample of ``registry``'s exposition, by (name, sorted labels)."""
    text = generate_latest(registry).decode("utf-8")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


@implementer(ICredentialsChecker)
class ClockChecker:
    """Answers after ``delay`` seconds of the test's clock: a password hash that takes time."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, clock: task.Clock, delay: float) -> None:
        self.clock, self.delay = clock, delay
        self.inner = InMemoryUsernamePasswordDatabaseDontUse(alice=b"pw")

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        return task.deferLater(self.clock, self.delay, self.inner.requestAvatarId, credentials)


class CountingTests(unittest.TestCase):
    def test_nothing_is_counted_without_a_stats_object(self) -> None:
        driver = SessionDriver(users={"alice": "pw"}, messages={"alice": [FIRST]})
        self.assertIsNone(driver.factory.stats)
        driver.login("alice", "pw")
        self.assertTrue(driver.command("RETR 1").ok)
        self.assertTrue(driver.command("QUIT").ok)
        self.assertIsNone(driver.factory.stats)

    def test_a_session_is_counted_command_by_command(self) -> None:
        driver = counting_driver()
        stats = stats_of(driver)
        self.assertEqual((stats.sessions_plain, stats.active_plain, stats.sessions_tls), (1, 1, 0))
        driver.login("alice", "pw")
        retr = driver.command("RETR 1")
        self.assertEqual(retr.raw, b"+OK %d octets\r\n" % (len(FIRST_WIRE) - 4) + FIRST_WIRE)
        top = driver.command("TOP 2 0")
        self.assertTrue(top.ok)
        self.assertFalse(driver.command("XYZZY").ok)
        self.assertFalse(driver.command("RETR 9").ok)
        self.assertTrue(driver.command("DELE 1").ok)
        self.assertTrue(driver.command("QUIT").ok)
        self.assertFalse(driver.connected)
        self.assertEqual(dict(stats.commands), {"USER": 1, "PASS": 1, "RETR": 2, "TOP": 1,
                                                "other": 1, "DELE": 1, "QUIT": 1})
        self.assertEqual(dict(stats.logins), {("USER", "ok"): 1})
        self.assertEqual((stats.retr_messages, stats.retr_bytes), (1, len(FIRST_WIRE)))
        # TOP 2 0: the header and the blank line, then the final dot line.
        self.assertEqual((stats.top_messages, stats.top_bytes),
                         (1, len(b"Subject: two\r\n\r\n.\r\n")))
        self.assertEqual(dict(stats.errors), {"none": 2})  # the unknown verb, no message 9
        self.assertEqual(stats.deletions, 1)
        self.assertEqual(dict(stats.endings), {"quit": 1})
        self.assertEqual(stats.active_plain, 0)
        self.assertEqual(stats.login_latency.count, 1)

    def test_a_streamed_message_is_counted_when_it_is_all_sent(self) -> None:
        big = b"Subject: big\r\n\r\n" + b"x" * 98 + b"\r\n" * 1 + (b"y" * 98 + b"\r\n") * 3000
        driver = counting_driver(portal=memory_portal({"alice": "pw"}, {"alice": [big]}))
        stats = stats_of(driver)
        driver.login("alice", "pw")
        retr = driver.command("RETR 1", wait=True)
        self.assertEqual(retr.raw, b"+OK %d octets\r\n" % len(big) + big + b".\r\n")
        self.assertEqual((stats.retr_messages, stats.retr_bytes), (1, len(big) + 3))

    def test_a_failed_login_and_a_lock_conflict(self) -> None:
        driver = counting_driver()
        stats = stats_of(driver)
        self.assertTrue(driver.command("USER alice").ok)
        self.assertFalse(driver.command("PASS wrong", wait=True).ok)
        driver.login("alice", "pw")
        other = driver.another()
        other.command("USER alice")
        reply = other.command("PASS pw", wait=True)
        self.assertEqual((reply.ok, reply.code), (False, "IN-USE"))
        self.assertEqual(dict(stats.logins), {("USER", "password"): 1, ("USER", "ok"): 1,
                                              ("USER", "in-use"): 1})
        self.assertEqual(dict(stats.errors), {"AUTH": 1, "IN-USE": 1})
        self.assertEqual(stats.lock_conflicts, 1)
        self.assertEqual((stats.sessions_plain, stats.active_plain), (2, 2))
        other.close()
        driver.close()
        self.assertEqual(dict(stats.endings), {"drop": 2})
        self.assertEqual(stats.active_plain, 0)

    def test_how_sessions_end(self) -> None:
        config = ServerConfig(max_bad_commands=1, login_timeout=30,
                              security=SecurityConfig(max_connections_per_address=1))
        driver = counting_driver(config)
        stats = stats_of(driver)
        driver.advance(31)  # the login timeout
        self.assertFalse(driver.connected)
        bad = driver.another()
        bad.send("NOPE")
        bad.send("NOPE")  # the second bad command in a row closes the connection
        self.assertFalse(bad.connected)
        remote = driver.another(REMOTE_PEER)
        refused = driver.another(REMOTE_PEER)  # a second connection from that address
        self.assertFalse(refused.connected)
        self.assertIn(b"[SYS/TEMP]", refused.greeting)
        remote.close()
        self.assertEqual(dict(stats.endings), {"timeout": 1, "closed": 1, "refused": 1, "drop": 1})
        self.assertEqual(dict(stats.refused), {"address": 1})
        self.assertEqual(stats.commands["other"], 2)
        self.assertEqual((stats.sessions_plain, stats.active_plain), (4, 0))

    def test_login_latency_is_the_checkers_time_without_the_failure_delay(self) -> None:
        clock = task.Clock()
        portal = Portal(MailboxRealm(MemoryStore()), [ClockChecker(clock, 0.3)])
        factory = POP3ServerFactory(portal, ServerConfig(auth_failure_delay=2.0), clock=clock,
                                    stats=ServerStats())
        driver = SessionDriver(factory=factory)
        driver.command("USER alice")
        self.assertTrue(driver.command("PASS pw", wait=True).ok)
        other = driver.another()
        other.command("USER alice")
        self.assertFalse(other.command("PASS wrong", wait=True).ok)
        histogram = stats_of(driver).login_latency
        self.assertEqual(histogram.count, 2)
        self.assertAlmostEqual(histogram.sum, 0.6)
        self.assertEqual(dict(histogram.cumulative())[0.25], 0)
        self.assertEqual(dict(histogram.cumulative())[0.5], 2)

    def test_summary_of_a_logged_session(self) -> None:
        driver_config = ServerConfig(log_sessions=True)
        with capturedLogs() as events:
            driver = counting_driver(driver_config)
            driver.login("alice", "pw")
            driver.command("RETR 1")
            driver.command("DELE 2")
            driver.advance(5)
            driver.command("QUIT")
        connect = [e for e in events if e.get("event") == session_log.CONNECT]
        end = [e for e in events if e.get("event") == session_log.END]
        self.assertEqual(len(connect), 1)
        self.assertEqual((connect[0]["rip"], connect[0]["listener"]), ("127.0.0.1", "plain"))
        self.assertEqual(len(end), 1)
        fields = {k: end[0][k] for k in ("user", "rip", "listener", "tls", "commands", "retrieved",
                                         "bytes", "deleted", "duration", "end")}
        self.assertEqual(fields, {"user": "alice", "rip": "127.0.0.1", "listener": "plain",
                                  "tls": "no", "commands": 5, "retrieved": 1,
                                  "bytes": len(FIRST_WIRE), "deleted": 1, "duration": 5.0,
                                  "end": "quit"})
        self.assertNotIn("pw", repr(end[0]))

    def test_a_started_factory_logging_sessions_counts(self) -> None:
        factory = POP3ServerFactory(memory_portal({"a": "b"}), ServerConfig(log_sessions=True),
                                    clock=task.Clock())
        factory.doStart()
        self.addCleanup(factory.doStop)
        self.assertIsInstance(factory.stats, ServerStats)


class HistogramTests(unittest.TestCase):
    def test_a_value_on_a_bound_is_in_that_bucket(self) -> None:
        histogram = Histogram((0.1, 1.0))
        for value in (0.1, 0.5, 1.0, 7.0):
            histogram.observe(value)
        self.assertEqual(histogram.cumulative(), [(0.1, 1), (1.0, 3), (float("inf"), 4)])
        self.assertEqual(histogram.count, 4)
        self.assertAlmostEqual(histogram.sum, 8.6)


class CollectorTests(unittest.TestCase):
    def test_the_exposition_reads_the_counters_at_scrape_time(self) -> None:
        stats = ServerStats()
        pool = HashPool(threads=2, backlog=7)
        registry = metrics.registry_for(stats, ["RETR", "QUIT"], pool, process=False)
        before = scrape(registry)
        self.assertEqual(before[("pop3ng_commands_total", (("verb", "RETR"),))], 0)
        self.assertEqual(before[("pop3ng_commands_total", (("verb", "other"),))], 0)
        self.assertEqual(before[("pop3ng_sessions_ended_total", (("how", "timeout"),))], 0)
        self.assertEqual(before[("pop3ng_hash_queue_capacity", ())], 7)
        stats.opened(True)
        stats.opened(False)
        stats.closed(False, "quit")
        stats.commands["RETR"] = 3
        stats.logins[("PLAIN", "ok")] += 2
        stats.errors["IN-USE"] += 1
        stats.sent(False, 100, None)
        stats.sent(True, 10, None)
        stats.deletions += 4
        stats.stls += 1
        stats.login_latency.observe(0.003)
        after = scrape(registry)
        expected = {
            ("pop3ng_sessions_total", (("listener", "tls"),)): 1,
            ("pop3ng_sessions_total", (("listener", "plain"),)): 1,
            ("pop3ng_sessions_active", (("listener", "tls"),)): 1,
            ("pop3ng_sessions_active", (("listener", "plain"),)): 0,
            ("pop3ng_sessions_ended_total", (("how", "quit"),)): 1,
            ("pop3ng_commands_total", (("verb", "RETR"),)): 3,
            ("pop3ng_logins_total", (("mechanism", "PLAIN"), ("result", "ok"))): 2,
            ("pop3ng_errors_total", (("code", "IN-USE"),)): 1,
            ("pop3ng_errors_total", (("code", "none"),)): 0,
            ("pop3ng_lock_conflicts_total", ()): 1,
            ("pop3ng_messages_sent_total", (("verb", "RETR"),)): 1,
            ("pop3ng_messages_sent_total", (("verb", "TOP"),)): 1,
            ("pop3ng_message_bytes_sent_total", (("verb", "RETR"),)): 100,
            ("pop3ng_message_bytes_sent_total", (("verb", "TOP"),)): 10,
            ("pop3ng_deletions_total", ()): 4,
            ("pop3ng_stls_total", ()): 1,
            ("pop3ng_login_duration_seconds_bucket", (("le", "0.001"),)): 0,
            ("pop3ng_login_duration_seconds_bucket", (("le", "0.005"),)): 1,
            ("pop3ng_login_duration_seconds_bucket", (("le", "+Inf"),)): 1,
            ("pop3ng_login_duration_seconds_count", ()): 1,
            ("pop3ng_hash_queue_waiting", ()): 0,
        }
        self.assertEqual({key: after.get(key) for key in expected}, expected)
        self.assertAlmostEqual(after[("pop3ng_login_duration_seconds_sum", ())], 0.003)

    def test_a_private_registry_and_the_process_collector(self) -> None:
        registry = metrics.registry_for(ServerStats())
        self.assertIsNot(registry, REGISTRY)
        names = {name for name, _ in scrape(registry)}
        self.assertIn("process_resident_memory_bytes", names)
        self.assertNotIn("pop3ng_sessions_total", {n for n, _ in scrape(REGISTRY)})


class PageTests(unittest.TestCase):
    def render(self, path: bytes, accept: Optional[bytes] = None) -> DummyRequest:
        site = metrics.metrics_site(metrics.registry_for(ServerStats(), process=False))
        request = DummyRequest(path.strip(b"/").split(b"/") if path != b"/" else [b""])
        if accept is not None:
            request.requestHeaders.setRawHeaders(b"accept", [accept])
        resource = getChildForRequest(site.resource, request)
        body = resource.render(request)
        if isinstance(body, bytes):
            request.write(body)
        return request

    def content_type(self, request: DummyRequest) -> bytes:
        return (request.responseHeaders.getRawHeaders(b"content-type") or [b""])[0]

    def test_metrics_is_prometheus_text(self) -> None:
        request = self.render(b"/metrics")
        self.assertEqual(request.responseCode or 200, 200)
        self.assertTrue(self.content_type(request).startswith(b"text/plain; version=0.0.4"))
        self.assertIn(b'pop3ng_sessions_total{listener="plain"} 0.0', b"".join(request.written))

    def test_openmetrics_when_asked(self) -> None:
        request = self.render(b"/metrics", accept=b"application/openmetrics-text; version=1.0.0")
        self.assertTrue(self.content_type(request).startswith(b"application/openmetrics-text"))
        self.assertTrue(b"".join(request.written).endswith(b"# EOF\n"))

    def test_other_paths_are_not_found(self) -> None:
        for path in (b"/", b"/metrics/more", b"/other"):
            self.assertEqual(self.render(path).responseCode, 404, path)
