"""The fail2ban filter of contrib/fail2ban, run by Debian's own ``fail2ban-regex``.

Two logs are checked:

* the real log of a real ``twistd pop3ng`` process, after failed logins from 127.0.0.2 and
  127.0.0.3 and a successful one from 127.0.0.4 (remote peers of a server on 127.0.0.1): the filter
  must match exactly the failures, attribute each to its client address, and never the success;
* ``contrib/fail2ban/sample.log``, written by hand in the format the server logs, which proves the
  filter on its own (namespaces, a UTC offset, IPv6, an IPv4-mapped address, a user name that
  carries a forged ``rip=``, and refusals that must not count: LOGIN-DELAY, IN-USE, busy).

Rules of this module:

* ``fail2ban-regex`` missing is a failure naming the Debian package, never a skip: a filter that
  nobody runs is a filter that silently stops banning.
* Its report is parsed, and the parse is checked against itself (the number of host lines must
  equal the ``Failregex: N total`` it printed), so a change in its output format fails loudly
  instead of making the assertions vacuous.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import List

from twisted.trial import unittest

from tests.integration.sasl_clients import b64, connect_from
from tests.integration.support import ROOT, ServerProcess, Session, start_server

CONTRIB = os.path.join(ROOT, "contrib", "fail2ban")
FILTER = os.path.join(CONTRIB, "filter.d", "pop3ng.conf")
JAIL = os.path.join(CONTRIB, "jail.d", "pop3ng.conf")
SAMPLE = os.path.join(CONTRIB, "sample.log")
SYSTEM_CONFIG = "/etc/fail2ban"
PASSWORD = "correct horse battery staple"
FAILED = b"-ERR [AUTH] Authentication failed.\r\n"
#: A host line under "Failregex:" in fail2ban-regex --verbose: "|      127.0.0.2  Fri Dec 04 21:10:01 2026".
_HOST_LINE = re.compile(r"^\|\s+(\S+)\s+\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}\s*$")


@dataclass
class RegexReport:
    """What ``fail2ban-regex --verbose --print-all-matched --print-all-missed`` printed."""

    total: int
    hosts: List[str]
    matched: List[str]
    missed: List[str]
    output: str


def _section(lines: List[str], title: str) -> List[str]:
    """The ``|  line`` rows of a ``|- Title:`` block, up to the line that closes it."""
    rows: List[str] = []
    inside = False
    for line in lines:
        if line.startswith("|- " + title):
            inside = True
        elif inside and line.startswith("`-"):
            break
        elif inside and line.startswith("|  "):
            rows.append(line[3:])
    return rows


def _executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError("%s not found: install Debian's fail2ban package "
                             "(apt-get install -y fail2ban); this test does not skip without it" % name)
    return path


def _system_config() -> str:
    """The installed fail2ban's configuration directory (actions, paths, jail.conf defaults)."""
    _executable("fail2ban-client")
    if not os.path.isfile(os.path.join(SYSTEM_CONFIG, "jail.conf")):
        raise AssertionError("no %s/jail.conf: reinstall Debian's fail2ban package" % SYSTEM_CONFIG)
    return SYSTEM_CONFIG


def fail2ban_regex(log_path: str, filter_path: str = FILTER) -> RegexReport:
    executable = _executable("fail2ban-regex")
    # Absolute paths: fail2ban-regex takes a bare name for a filter of /etc/fail2ban/filter.d.
    command = [executable, "--raw", "--verbose", "--print-all-matched", "--print-all-missed",
               os.path.abspath(log_path), os.path.abspath(filter_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError("fail2ban-regex exited %d:\n%s" % (done.returncode, output))
    total = re.search(r"^Failregex: (\d+) total$", output, re.M)
    if total is None:
        raise AssertionError("no 'Failregex: N total' in fail2ban-regex's output:\n" + output)
    lines = output.splitlines()
    start = lines.index(total.group(0))
    hosts = []
    for line in lines[start + 1:]:
        if line.startswith("`-"):
            break
        host = _HOST_LINE.match(line)
        if host:
            hosts.append(host.group(1))
    report = RegexReport(int(total.group(1)), hosts, _section(lines, "Matched line(s):"),
                         _section(lines, "Missed line(s):"), output)
    if len(hosts) != report.total or len(report.matched) != report.total:
        raise AssertionError("could not read fail2ban-regex's report (%d total, %d hosts, %d lines):\n%s"
                             % (report.total, len(hosts), len(report.matched), output))
    return report


class SampleLogTests(unittest.TestCase):
    """The filter on the hand-written log: proven without depending on the server."""

    def test_failures_matched_with_their_client_address(self) -> None:
        report = fail2ban_regex(SAMPLE)
        self.assertEqual(report.hosts, ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3", "127.0.0.3",
                                        "127.0.0.3", "2001:db8::7", "192.0.2.7"], report.output)
        for line in report.matched:
            self.assertIn(" auth failed: ", line)
            self.assertRegex(line, r" reason=(password|disconnected)$")

    def test_successes_never_matched(self) -> None:
        report = fail2ban_regex(SAMPLE)
        oks = [line for line in report.missed if " auth ok: " in line]
        self.assertEqual(len(oks), 2, report.output)
        with open(SAMPLE, encoding="utf-8") as f:
            self.assertEqual(sum(" auth ok: " in line for line in f), 2)

    def test_refusals_of_right_passwords_and_busy_server_not_matched(self) -> None:
        # 127.0.0.4 gave the right password and met LOGIN-DELAY or the per-user limit, or met a
        # full hash queue: banning it would lock a legitimate user out.
        report = fail2ban_regex(SAMPLE)
        self.assertNotIn("127.0.0.4", report.hosts)
        refused = [line for line in report.missed if " auth failed: " in line]
        self.assertEqual([line.rsplit(" reason=", 1)[1] for line in refused],
                         ["login-delay", "in-use", "busy"], report.output)

    def test_forged_address_in_user_name_is_not_banned(self) -> None:
        # The user name "x rip=10.66.66.66 lip=... reason=password" comes from the client; the
        # address that counts is the one the server wrote after it (whether or not the server
        # escaped the name's spaces, as it does).
        report = fail2ban_regex(SAMPLE)
        for forged in ("10.66.66.66", "10.66.66.67"):
            self.assertTrue(any("rip=%s" % forged in line for line in report.matched), report.output)
            self.assertNotIn(forged, report.hosts)

    def test_jail_loads_in_fail2ban(self) -> None:
        # fail2ban's own configuration reader, on the system's configuration plus our two files
        # (the distribution's jails left out: their logs do not exist here), with logpath
        # pointed at the sample in jail.local as an admin would.
        conf = os.path.join(os.path.abspath(self.mktemp()), "fail2ban")
        shutil.copytree(_system_config(), conf, ignore=shutil.ignore_patterns("jail.d", "*.local"))
        os.makedirs(os.path.join(conf, "jail.d"))
        shutil.copy(FILTER, os.path.join(conf, "filter.d", "pop3ng.conf"))
        shutil.copy(JAIL, os.path.join(conf, "jail.d", "pop3ng.conf"))
        with open(os.path.join(conf, "jail.local"), "w", encoding="utf-8") as f:
            f.write("[pop3ng]\nlogpath = %s\n" % SAMPLE)
        client = _executable("fail2ban-client")
        test = subprocess.run([client, "-c", conf, "-t"], capture_output=True, text=True, timeout=300)
        self.assertEqual(test.returncode, 0, test.stdout + test.stderr)
        dump = subprocess.run([client, "-c", conf, "-d"], capture_output=True, text=True, timeout=300)
        self.assertEqual(dump.returncode, 0, dump.stdout + dump.stderr)
        self.assertIn("['add', 'pop3ng', 'auto']", dump.stdout)
        self.assertIn("['set', 'pop3ng', 'addlogpath', %r, 'head']" % SAMPLE, dump.stdout)
        self.assertIn("['port', '110,995']", dump.stdout)
        self.assertRegex(dump.stdout, r"\['set', 'pop3ng', 'addfailregex', '\^.*auth failed: .*rip=<ADDR> ")


class ServerLogTests(unittest.TestCase):
    """The filter on what the real ``twistd pop3ng`` logs for real logins."""

    def start(self) -> ServerProcess:
        root = os.path.abspath(self.mktemp())
        # No failure delay: the test is about the log, not the penalty. Plaintext allowed so that
        # USER/PASS works from the "remote" loopback addresses without STLS.
        # LOGIN-DELAY: a second login of alice is refused after a right password.
        server = start_server(root, {"alice": PASSWORD}, tls=True,
                              extra_args=["--allow-plaintext-auth", "--log-logins", "--auth-failure-delay", "0",
                                          "--login-delay", "3600"])
        self.addCleanup(server.stop)
        os.makedirs(server.maildir("alice"), exist_ok=True)
        return server

    def session(self, server: ServerProcess, source: str, tls: bool = False) -> Session:
        s = connect_from(server, source, tls=tls)
        self.addCleanup(s.close)
        self.assertTrue(s.line().startswith(b"+OK"))
        return s

    def quit(self, s: Session) -> None:
        self.assertTrue(s.command(b"QUIT").startswith(b"+OK"))
        self.assertTrue(s.closed())

    def test_failures_banned_per_address_success_never(self) -> None:
        server = self.start()
        # 127.0.0.2: a wrong password by USER/PASS in plaintext, then by AUTH PLAIN over POP3S.
        s = self.session(server, "127.0.0.2")
        self.assertTrue(s.command(b"USER alice").startswith(b"+OK"))
        self.assertEqual(s.command(b"PASS wrong"), FAILED)
        self.quit(s)
        s = self.session(server, "127.0.0.2", tls=True)
        self.assertEqual(s.command(b"AUTH PLAIN " + b64(b"\0alice\0wrong too")), FAILED)
        self.quit(s)
        # 127.0.0.3: a user that does not exist.
        s = self.session(server, "127.0.0.3")
        self.assertTrue(s.command(b"USER nobody").startswith(b"+OK"))
        self.assertEqual(s.command(b"PASS guess"), FAILED)
        self.quit(s)
        # 127.0.0.4: a successful login, then the right password again, refused by LOGIN-DELAY:
        # neither may count as a failure.
        s = self.session(server, "127.0.0.4")
        self.assertTrue(s.command(b"USER alice").startswith(b"+OK"))
        self.assertEqual(s.command(b"PASS " + PASSWORD.encode()), b"+OK Logged in.\r\n")
        self.quit(s)
        s = self.session(server, "127.0.0.4")
        self.assertTrue(s.command(b"USER alice").startswith(b"+OK"))
        self.assertTrue(s.command(b"PASS " + PASSWORD.encode()).startswith(b"-ERR [LOGIN-DELAY]"))
        self.quit(s)
        server.stop()  # everything logged is on disk once the process has exited

        report = fail2ban_regex(server.log_path)
        hint = ("\nThe server must log one 'auth failed: user=... mechanism=... rip=... lip=... tls=... "
                "reason=...' line per failed login (issue 14 item 7).\nfail2ban-regex said:\n"
                + report.output + "\nThe server's log:\n" + server.log())
        self.assertEqual(report.total, 3, hint)
        self.assertEqual(sorted(report.hosts), ["127.0.0.2", "127.0.0.2", "127.0.0.3"], hint)
        self.assertEqual(sum("tls=yes" in line for line in report.matched), 1, hint)
        # The success and the refusal are logged, and fail2ban passes over both.
        from_4 = [line for line in report.missed if " rip=127.0.0.4 " in line]
        self.assertEqual(len(from_4), 2, hint)
        self.assertIn(" auth ok: ", from_4[0], hint)
        self.assertIn(" auth failed: ", from_4[1], hint)
        self.assertNotIn("127.0.0.4", report.hosts, hint)
