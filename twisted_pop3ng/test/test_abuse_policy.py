"""Abuse limits' arithmetic and data structures (issue 14: F1, F2, F3, F4, F7, F18), hermetic.

The failure delay (bounded for any count), network keys (/64 for IPv6), the global connection
count, a success that forgives one failure only, the bounded hash pool, the dummy secret, the
cached scheme set, and the audit log's sanitising of user names.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, List

from twisted.internet import defer, task
from twisted.trial import unittest

from twisted_pop3ng.auth import checkers
from twisted_pop3ng.server import audit, policy


def guard(**config: Any) -> policy.AbuseGuard:
    return policy.AbuseGuard(policy.SecurityConfig(**config), 0.001, task.Clock())


class FailureDelayTests(unittest.TestCase):
    def test_bounded_for_any_number_of_failures(self) -> None:
        """F1: 2 ** (count - 1) overflowed a float after 1,024 failures (OverflowError)."""
        g = guard(max_failure_delay=0.05)
        delays = [g.failure_delay("192.0.2.1") for _ in range(5000)]
        self.assertEqual(delays[:3], [0.001, 0.002, 0.004])
        self.assertEqual(delays[-1], 0.05)
        self.assertTrue(all(0 < d <= 0.05 for d in delays))
        self.assertLessEqual(g.failures["192.0.2.1"][0], policy.MAX_FAILURE_COUNT)

    def test_never_raises(self) -> None:
        g = guard(max_failure_delay=15)
        g.failures["192.0.2.1"] = (10 ** 400, 0.0)  # whatever got in there
        self.assertEqual(g.failure_delay("192.0.2.1"), 15)

    def test_success_forgives_one_failure_only(self) -> None:
        """F18: one owned account's logins between guesses do not reset the delay."""
        g = guard(max_failure_delay=100)
        for _ in range(5):
            g.failure_delay("192.0.2.1")
        for _ in range(20):  # log into the owned account, then guess twice
            g.success("192.0.2.1")
            g.failure_delay("192.0.2.1")
            delay = g.failure_delay("192.0.2.1")
        self.assertEqual(delay, 100)  # it still grew to the ceiling
        g = guard()
        g.failure_delay("192.0.2.2")
        g.success("192.0.2.2")
        self.assertEqual(g.failures, {})  # one failure, one success: forgotten

    def test_ipv6_counted_per_64_and_mapped_ipv4_as_ipv4(self) -> None:
        g = guard(max_failure_delay=100)
        g.failure_delay("2001:db8:1:2::1")
        self.assertEqual(g.failure_delay("2001:db8:1:2:ffff::9"), 0.002)  # same /64
        self.assertEqual(g.failure_delay("2001:db8:1:3::1"), 0.001)  # another /64
        self.assertEqual(g.key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(g.key("192.0.2.7"), "192.0.2.7")
        self.assertEqual(g.key("fe80::1%eth0"), "fe80::/64")
        g = guard(ipv4_prefix=24, ipv6_prefix=48)
        self.assertEqual(g.key("192.0.2.7"), "192.0.2.0/24")
        self.assertEqual(g.key("2001:db8:1:2::1"), "2001:db8:1::/48")

    def test_per_address_limit_by_network(self) -> None:
        g = guard(max_connections_per_address=2)
        keys = [g.key("2001:db8::%d" % i) for i in range(3)]
        self.assertTrue(g.open_connection(keys[0]))
        self.assertTrue(g.open_connection(keys[1]))
        self.assertFalse(g.open_connection(keys[2]))  # the third address of one /64
        g.close_connection(keys[0])
        self.assertTrue(g.open_connection(keys[2]))

    def test_global_cap(self) -> None:
        g = guard(max_connections=2)
        self.assertEqual([g.open_any() for _ in range(3)], [True, True, False])
        g.close_any()
        self.assertTrue(g.open_any())
        self.assertGreater(guard().connection_limit(), 0)  # automatic: from RLIMIT_NOFILE


class HashPoolTests(unittest.TestCase):
    """F2: a bounded queue; a job whose client left is dropped before it runs."""

    def setUp(self) -> None:
        self.started: List[Any] = []
        self.patch(checkers.threads, "deferToThread", self.fake_thread)

    def fake_thread(self, function: Any, *args: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.started.append((function, args, d))
        return d

    def test_bounded_backlog_refuses_at_once(self) -> None:
        pool = checkers.HashPool(threads=2, backlog=3)
        results = [pool.run(len, i) for i in range(6)]
        self.assertEqual(len(self.started), 2)
        self.assertEqual(pool.waiting, 3)
        self.failureResultOf(results[5], checkers.HashPoolFull)
        self.assertEqual(checkers.HashPoolFull().code, "SYS/TEMP")
        self.started[0][2].callback(True)
        self.assertTrue(self.successResultOf(results[0]))
        self.assertEqual(len(self.started), 3)  # the next waiting one started

    def test_suspects_wait_behind_and_give_their_place_up(self) -> None:
        pool = checkers.HashPool(threads=1, backlog=2)
        pool.run(len, "running")
        token = checkers.hash_priority.set(checkers.SUSPECT)
        try:
            guesses = [pool.run(len, "guess%d" % i) for i in range(3)]
        finally:
            checkers.hash_priority.reset(token)
        self.failureResultOf(guesses[2], checkers.HashPoolFull)  # full: refused at once
        real = pool.run(len, "real")  # full too, but it takes the newest guess's place
        self.failureResultOf(guesses[1], checkers.HashPoolFull)
        self.assertEqual(pool.waiting, 2)
        self.started[0][2].callback(0)
        self.assertEqual(self.started[1][1], ("real",))  # before the older guess
        self.started[1][2].callback(4)
        self.assertEqual(self.successResultOf(real), 4)
        self.assertEqual(self.started[2][1], ("guess0",))
        self.started[2][2].callback(6)
        self.assertEqual(self.successResultOf(guesses[0]), 6)

    def test_cancelled_waiting_job_never_runs(self) -> None:
        pool = checkers.HashPool(threads=1, backlog=10)
        first, second, third = pool.run(len, 1), pool.run(len, 2), pool.run(len, 3)
        second.cancel()
        self.failureResultOf(second, defer.CancelledError)
        self.assertEqual(pool.waiting, 1)
        first.cancel()  # running: its result is discarded, its thread finishes
        self.failureResultOf(first, defer.CancelledError)
        self.started[0][2].callback(False)
        self.assertEqual([args for _, args, _ in self.started], [(1,), (3,)])
        self.started[1][2].callback(True)
        self.assertTrue(self.successResultOf(third))
        self.assertEqual(pool.running, 0)


class PasswdFileTests(unittest.TestCase):
    def write(self, text: str) -> checkers.PasswdFileChecker:
        fd, path = tempfile.mkstemp()
        os.write(fd, text.encode())
        os.close(fd)
        self.addCleanup(os.unlink, path)
        return checkers.PasswdFileChecker(path)

    def test_dummy_has_the_most_common_scheme_and_cost(self) -> None:
        """F7: the dummy was the first entry's hash; in a file being migrated it was the odd one."""
        checker = self.write("old:{PLAIN}x\n"
                             "a:{BLF-CRYPT}$2b$12$" + "a" * 53 + "\n"
                             "b:{BLF-CRYPT}$2b$10$" + "b" * 53 + "\n"
                             "c:{BLF-CRYPT}$2b$12$" + "c" * 53 + "\n")
        dummy, schemes = checker._derived()
        self.assertEqual(dummy, "{BLF-CRYPT}$2b$12$" + "a" * 53)
        self.assertEqual(schemes, {"PLAIN", "BLF-CRYPT"})

    def test_unknown_user_verifies_as_often_as_a_known_one(self) -> None:
        """F7: a non-ASCII password that SASLprep changes was verified twice for known users."""
        checker = self.write("alice:{PLAIN}secret\n")
        calls: List[Any] = []
        real = checkers.passwords.verify
        self.patch(checkers.passwords, "verify", lambda *a, **kw: calls.append(a) or real(*a, **kw))
        password = "x\u00ad".encode()
        self.assertFalse(checker._verify(checker.lookup("alice"), "alice", password))
        known, calls[:] = len(calls), []
        self.assertFalse(checker._verify(None, "nobody", password))
        self.assertEqual(known, 2)
        self.assertEqual(len(calls), known)

    def test_schemes_cached_until_the_file_changes(self) -> None:
        """F3: CAPA re-scanned every entry of the file."""
        checker = self.write("".join("u%d:{PLAIN}p\n" % i for i in range(1000)))
        scans: List[Any] = []
        real = checkers.dummy_secret
        self.patch(checkers, "dummy_secret", lambda *a: scans.append(1) or real(*a))
        for _ in range(50):
            self.assertEqual(checker.secret_schemes(), {"PLAIN"})
        self.assertEqual(len(scans), 1)
        with open(checker.path, "a") as f:
            f.write("x:{CRAM-MD5}" + "0" * 64 + "\n")
        os.utime(checker.path, ns=(1, 2))
        self.assertEqual(checker.secret_schemes(), {"PLAIN", "CRAM-MD5"})
        self.assertEqual(len(scans), 2)


class SanitizeTests(unittest.TestCase):
    def test_names_cannot_forge_lines_or_fields(self) -> None:
        self.assertEqual(audit.sanitize(b"alice"), "alice")
        self.assertEqual(audit.sanitize(b"a\r\nauth ok: user=root rip=1.2.3.4"),
                         "a\\x0d\\x0aauth\\x20ok:\\x20user=root\\x20rip=1.2.3.4")
        self.assertEqual(audit.sanitize(b"\xff\x00\\"), "\\xff\\x00\\x5c")
        self.assertEqual(audit.sanitize("\u00e9l\u00e8ve"), "\u00e9l\u00e8ve")
        self.assertEqual(audit.sanitize("x" * 500), "x" * audit.MAX_NAME + "...")
        self.assertEqual(audit.sanitize(None), "")


class OptionTests(unittest.TestCase):
    def test_options_reach_the_security_config(self) -> None:
        from twisted_pop3ng.service import abuse_options
        from twisted_pop3ng.service.options import Options

        names = {entry[0] for entry in Options.optParameters}
        self.assertLessEqual({"max-connections", "login-deadline", "max-auth-failures",
                              "ipv4-prefix", "ipv6-prefix", "max-hash-queue"}, names)
        self.addCleanup(checkers.HASH_POOL.configure, backlog=checkers.HASH_POOL.backlog)
        config = abuse_options.fill(policy.SecurityConfig(), {
            "login-deadline": 6.0, "max-connections": 7, "ipv6-prefix": 56, "max-hash-queue": 5})
        self.assertEqual((config.login_deadline, config.max_connections, config.ipv6_prefix,
                          config.ipv4_prefix, config.max_auth_failures),
                         (6.0, 7, 56, 32, policy.MAX_AUTH_FAILURES))
        self.assertEqual(checkers.HASH_POOL.backlog, 5)
        self.assertIsNone(abuse_options.fill(policy.SecurityConfig(), {"login-deadline": 0}).login_deadline)
        self.assertEqual(abuse_options.fill(policy.SecurityConfig(), {}).login_deadline,
                         policy.LOGIN_DEADLINE)

    def test_bad_values_are_refused_by_their_coercers(self) -> None:
        from twisted_pop3ng.service import abuse_options

        coercers = {entry[0]: entry[4] for entry in abuse_options.OPT_PARAMETERS}
        for name, value in [("ipv4-prefix", "33"), ("ipv6-prefix", "-1"), ("max-connections", "-5"),
                            ("login-deadline", "nan"), ("max-hash-queue", "x")]:
            self.assertRaises(ValueError, coercers[name], value)
        self.assertEqual(coercers["ipv6-prefix"]("48"), 48)
