"""Endpoint options are checked before anything listens: a TCP port Twisted's parser lets through
(``tcp:99999``, refused by ``bind`` only after the other listeners started) or words it answers with
``int()``'s message (``tcp:abc``) become a usage error naming the option and the value."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.python import usage
from twisted.trial import unittest

from twisted_pop3ng.service.endpoint_check import check_endpoint, tcp_port_problem


class TCPPortTests(unittest.TestCase):
    def test_ports_refused(self) -> None:
        for description in ("tcp:99999", "tcp:65536", "tcp:abc", "tcp:", "tcp:-1",
                            "tcp:port=70000:interface=127.0.0.1", "tcp6:1e3", "tcp:interface=127.0.0.1"):
            self.assertIsNotNone(tcp_port_problem(description), description)

    def test_ports_accepted(self) -> None:
        for description in ("tcp:0", "tcp:110", "tcp:65535", "tcp:995:interface=127.0.0.1",
                            "tcp:port=1100:backlog=50", "tcp6:110:interface=\\:\\:1",
                            "tcp:interface=127.0.0.1:port=110", "unix:/run/pop3ng.sock",
                            "systemd:domain=INET:index=0"):
            self.assertIsNone(tcp_port_problem(description), description)

    def test_the_error_names_option_and_value(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            check_endpoint(reactor, "tcp:99999", "--listen")
        self.assertEqual(str(caught.exception),
                         "--listen 'tcp:99999': the port must be a number from 0 to 65535, not '99999'")
        with self.assertRaises(usage.UsageError) as caught:
            check_endpoint(reactor, "nonsense:1", "--metrics")
        self.assertIn("--metrics: bad endpoint 'nonsense:1'", str(caught.exception))
