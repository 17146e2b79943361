"""The ``pop3ng fetch --config`` file: every mistake names the file, the line and the key; the
example parses; defaults and per-account values combine as documented."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from twisted.trial import unittest

from twisted_pop3ng.fetch import config
from twisted_pop3ng.fetch.example import EXAMPLE_CONFIG

def _a_ca_file() -> str:
    """A real CA file (the config checks that cafile holds a certificate)."""
    import atexit
    import tempfile

    import trustme

    fd, path = tempfile.mkstemp(prefix="pop3ng-ca-", suffix=".pem")
    os.close(fd)
    atexit.register(os.unlink, path)
    trustme.CA().cert_pem.write_to_path(path)
    return path


CA_FILE = _a_ca_file()
GOOD = """\
[defaults]
cafile = "CA_PLACEHOLDER"
keep = true
maildir = "/srv/mail/default"

[accounts.work]
url = "pop3s://alice@mail.example.org"
password_file = "~/work.pw"

[accounts."home"]
url = "pop3://bob@pop.example.net:1100"
password_command = "pass show home"
forward = "lmtp:/run/dovecot/lmtp"
forward_to = "bob"
keep = false
""".replace("CA_PLACEHOLDER", CA_FILE)


class ConfigTests(unittest.TestCase):
    def error(self, text: str) -> config.ConfigError:
        with self.assertRaises(config.ConfigError) as caught:
            config.parse(textwrap.dedent(text), "fetch.toml")
        return caught.exception

    def test_defaults_apply_and_an_accounts_own_values_win(self) -> None:
        parsed = config.parse(GOOD, "fetch.toml")
        work, home = parsed.accounts
        self.assertEqual((work.name, home.name), ("work", "home"))
        self.assertEqual(work.destination, ("maildir", "/srv/mail/default"))
        self.assertEqual(work.get("password_file"), os.path.expanduser("~/work.pw"))
        self.assertEqual(work.get("cafile"), CA_FILE)
        self.assertIs(work.get("keep"), True)
        # home's own destination replaces the default maildir rather than clashing with it
        self.assertEqual(home.destination, ("forward", "lmtp:/run/dovecot/lmtp"))
        self.assertIs(home.get("keep"), False)
        self.assertEqual(parsed.select(["home"]), [home])
        self.assertEqual(parsed.select([]), [work, home])

    def test_the_example_parses(self) -> None:
        parsed = config.parse(EXAMPLE_CONFIG, "example")
        self.assertEqual([a.name for a in parsed.accounts], ["work", "home", "cloud"])
        self.assertEqual([a.destination[0] for a in parsed.accounts], ["maildir", "forward", "mbox"])
        self.assertEqual(parsed.daemon.parallel, 4)
        self.assertEqual(parsed.accounts[2].get("poll_interval"), 900.0)
        self.assertEqual(parsed.accounts[0].get("poll_interval"), 300.0)

    def test_syntax_error_names_the_line(self) -> None:
        e = self.error("""\
            [accounts.a]
            url = "pop3://a@h"
            maildir = "/m
            """)
        self.assertEqual(e.line, 3)
        self.assertTrue(str(e).startswith("fetch.toml:3: TOML syntax error"), str(e))

    def test_wrong_type_names_file_line_and_key(self) -> None:
        e = self.error("""\
            [defaults]
            keep = "yes"
            [accounts.a]
            url = "pop3://a@h"
            maildir = "/m"
            """)
        self.assertEqual(str(e), 'fetch.toml:2: defaults.keep: expected true or false '
                                 '(without quotes), got "yes"')
        e = self.error("""\
            [accounts.a]
            url = "pop3://a@h"
            maildir = "/m"

            [accounts.b]
            url = "pop3://b@h"
            maildir = "/m"
            timeout = -3
            """)
        self.assertEqual((e.line, e.key), (8, "accounts.b.timeout"))
        self.assertIn("expected a positive number, got -3", str(e))

    def test_nan_and_infinity_are_not_numbers_here(self) -> None:
        # TOML has nan and inf; "keep_days = nan" compared false with every age and a keep run
        # deleted every message.
        for key, value in (("keep_days", "nan"), ("keep_days", "inf"), ("keep_days", "-1.0"),
                           ("timeout", "nan"), ("timeout", "inf"), ("poll_interval", "nan")):
            extra = "keep = true\n" if key == "keep_days" else ""
            e = self.error('[accounts.a]\nurl = "pop3://a@h"\nmaildir = "/m"\n%s%s = %s\n'
                           % (extra, key, value))
            self.assertEqual(e.key, "accounts.a." + key, (key, value))

    def test_cafile_and_mechanism_are_checked_when_read(self) -> None:
        # A typo is a usage error naming the key, not a TLS or SASL failure after connecting.
        garbage = self.mktemp()
        with open(garbage, "w") as f:
            f.write("not a certificate\n")
        for key, value, words in (("cafile", "/nonexistent/ca.pem", "cannot read"),
                                  ("cafile", garbage, "no PEM certificate"),
                                  ("mechanism", "BOGUS", "SCRAM-SHA-256")):
            e = self.error('[accounts.a]\nurl = "pop3s://a@h"\nmaildir = "/m"\n%s = "%s"\n'
                           % (key, value))
            self.assertEqual(e.key, "accounts.a." + key)
            self.assertIn(words, str(e))

    def test_unknown_key_with_a_hint(self) -> None:
        e = self.error("""\
            [accounts.a]
            url = "pop3://a@h"
            maildir = "/m"
            keep = true
            keep-days = 3
            """)
        self.assertEqual((e.line, e.key), (5, "accounts.a.keep-days"))
        self.assertIn("unknown key (did you mean keep_days?)", str(e))
        e = self.error("""\
            [acounts.a]
            url = "pop3://a@h"
            """)
        self.assertEqual((e.line, e.key), (1, "acounts"))

    def test_dotted_and_quoted_keys_are_found(self) -> None:
        e = self.error("""\
            accounts.a.url = "pop3://a@h"
            accounts.a.maildir = "/m"
            accounts."a".batch = 0
            """)
        self.assertEqual((e.line, e.key), (3, "accounts.a.batch"))

    def test_rules_between_keys(self) -> None:
        cases = {
            "two destinations": ("""\
                [accounts.a]
                url = "pop3://a@h"
                maildir = "/m"
                mbox = "/x"
                """, 4, "exactly one destination"),
            "no destination": ("""\
                [accounts.a]
                url = "pop3://a@h"
                """, 1, "has none"),
            "no url": ("""\
                [accounts.a]
                maildir = "/m"
                """, 1, "no url"),
            "keep_days without keep": ("""\
                [accounts.a]
                url = "pop3://a@h"
                maildir = "/m"
                keep_days = 3
                """, 4, "keep_days needs keep = true"),
            "two secrets": ("""\
                [accounts.a]
                url = "pop3://a@h"
                maildir = "/m"
                password_file = "/p"
                password_env = "P"
                """, 5, "one source"),
            "forward option without forward": ("""\
                [accounts.a]
                url = "pop3://a@h"
                maildir = "/m"
                forward_to = "bob"
                """, 4, "only for a forward destination"),
            "bad URL": ("""\
                [accounts.a]
                url = "http://a@h"
                maildir = "/m"
                """, 2, "url"),
            "URL without user": ("""\
                [accounts.a]
                url = "pop3://h"
                maildir = "/m"
                """, 2, "needs a user name"),
            "bad forward URL": ("""\
                [accounts.a]
                url = "pop3://a@h"
                forward = "lmtp:relative/socket"
                """, 3, "absolute socket path"),
            "OAuth incomplete": ("""\
                [accounts.a]
                url = "pop3://a@h"
                maildir = "/m"
                oauth_token_endpoint = "https://idp/token"
                """, 4, "oauth_client_id"),
            "bad recipient": ("""\
                [accounts.a]
                url = "pop3://a@h"
                forward = "smtp://localhost"
                forward_to = "bob@example.org\\r\\nRCPT TO:<evil@example.org>"
                """, 4, "expected an address without spaces"),
            "bad on_reject": ("""\
                [accounts.a]
                url = "pop3://a@h"
                forward = "smtp://localhost"
                on_reject = "bounce"
                """, 4, 'expected one of "keep", "delete"'),
            "no accounts": ("""\
                [defaults]
                keep = true
                """, None, "no accounts"),
            "account not a table": ("""\
                accounts = 3
                """, 1, "expected a table"),
        }
        for name, (text, line, words) in cases.items():
            e = self.error(text)
            self.assertEqual(e.line, line, name)
            self.assertIn(words, str(e), name)
            if line is not None:
                self.assertTrue(str(e).startswith("fetch.toml:%d: " % line), (name, str(e)))

    def test_unknown_account_selected(self) -> None:
        parsed = config.parse(GOOD, "fetch.toml")
        with self.assertRaises(config.ConfigError) as caught:
            parsed.select(["work", "nope"])
        self.assertIn("no account named nope (the file has: home, work)", str(caught.exception))

    def test_unreadable_and_non_utf8_files(self) -> None:
        with self.assertRaises(config.ConfigError) as caught:
            config.load("/nonexistent/fetch.toml")
        self.assertIn("/nonexistent/fetch.toml: cannot read", str(caught.exception))
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[accounts.a]\n# caf\xe9\n")
        with self.assertRaises(config.ConfigError) as caught:
            config.load(path)
        self.assertEqual(caught.exception.line, 2)


class CommandLineTests(unittest.TestCase):
    """The console script: --print-example-config, and config errors as exit 2 with one line."""

    def run_cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "twisted_pop3ng.cli", "fetch", *args],
                              capture_output=True, timeout=60)

    def test_print_example_config_parses(self) -> None:
        result = self.run_cli("--print-example-config")
        self.assertEqual(result.returncode, 0)
        self.assertEqual(result.stdout.decode(), EXAMPLE_CONFIG)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(result.stdout)
        self.assertEqual(len(config.load(path).accounts), 3)

    def test_config_error_exit_code_and_message(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[accounts.a]\nurl = "pop3://a@h"\nmaildir = "/m"\nbatch = "ten"\n')
        result = self.run_cli("--config", path)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr.decode(),
                         'pop3ng fetch: %s:4: accounts.a.batch: expected a whole number, 1 or '
                         'more, got "ten"\n' % path)

    def test_single_account_options_do_not_mix_with_config(self) -> None:
        result = self.run_cli("--config", "x.toml", "--maildir", "/m")
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"--maildir goes in the config file", result.stderr)
        result = self.run_cli("pop3://a@h", "--maildir", "/m", "--daemon", "60")
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"--daemon go with --config", result.stderr)
        result = self.run_cli("pop3://a@h")
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"--maildir --mbox --mda --forward is required", result.stderr)


    def test_numbers_on_the_command_line_follow_the_config_rules(self) -> None:
        # Refused before anything connects (port 1 would refuse the connection: exit 5, not 2).
        for option, value in (("--timeout", "nan"), ("--timeout", "0"), ("--timeout", "-1"),
                              ("--keep-days", "-3"), ("--keep-days", "nan"), ("--batch", "-1"),
                              ("--pipeline", "0"), ("--max-message-size", "-5")):
            result = self.run_cli("pop3://a@127.0.0.1:1", "--maildir", self.mktemp(), "--keep",
                                  option, value)
            self.assertEqual(result.returncode, 2, (option, value, result.stderr))
            self.assertIn(b"argument %s: expected" % option.encode(), result.stderr)
        result = self.run_cli("--config", "x.toml", "--daemon", "nan")
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"argument --daemon: expected a positive number", result.stderr)

    def test_url_cafile_and_mechanism_are_usage_errors_before_connecting(self) -> None:
        garbage = self.mktemp()
        with open(garbage, "w") as f:
            f.write("not a certificate\n")
        env_cases = (
            (["pop3s://h"], b"needs a user name"),
            (["pop3s://u@127.0.0.1:0"], b"bad port"),
            (["pop3s://u@127.0.0.1:1", "--cafile", garbage], b"argument --cafile"),
            (["pop3s://u@127.0.0.1:1", "--cafile", "/nonexistent/ca.pem"], b"argument --cafile"),
            (["pop3s://u@127.0.0.1:1", "--mechanism", "BOGUS"], b"argument --mechanism"),
        )
        for argv, words in env_cases:
            result = subprocess.run([sys.executable, "-m", "twisted_pop3ng.cli", "fetch", *argv,
                                     "--maildir", self.mktemp()], capture_output=True, timeout=60,
                                    env=dict(os.environ, POP3NG_PASSWORD="x"))
            self.assertEqual(result.returncode, 2, (argv, result.stderr))
            self.assertIn(words, result.stderr)
            self.assertNotIn(b"Traceback", result.stderr)

    def test_files_and_forward_options_named_in_errors(self) -> None:
        not_utf8 = self.mktemp()
        with open(not_utf8, "wb") as f:
            f.write(b"\xff\xfe\n")
        for argv, words in (
                (["--maildir", "m", "--password-file", not_utf8], b"--password-file %s: not UTF-8"
                 % not_utf8.encode()),
                (["--maildir", "m", "--password-file", "/nonexistent/pw"],
                 b"--password-file /nonexistent/pw: No such file"),
                (["--maildir", "m", "--forward-starttls", "never"], b"--forward-starttls goes with --forward"),
                (["--maildir", "m", "--on-reject", "delete"], b"--on-reject goes with --forward"),
                (["--maildir", "m", "--state", ""], b"--state is empty"),
                (["--maildir", ""], b"--maildir is empty"),
                (["--forward", "smtp://127.0.0.1:1", "--forward-cafile", "/nonexistent/ca.pem"],
                 b"argument --forward-cafile: cannot read /nonexistent/ca.pem")):
            result = self.run_cli("pop3://u@127.0.0.1:1", *argv)
            self.assertEqual(result.returncode, 2, (argv, result.stderr))
            self.assertIn(words, result.stderr)
        result = self.run_cli("--config", "x.toml", "--on-reject", "delete")
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"--on-reject goes in the config file", result.stderr)

    def test_the_library_refuses_them_too(self) -> None:
        from twisted_pop3ng.fetch.run import FetchOptions

        for bad in ({"keep_days": float("nan")}, {"keep_days": -1.0}, {"timeout": float("nan")},
                    {"timeout": 0.0}, {"batch": 0}, {"window": -1}):
            with self.assertRaises(ValueError, msg=repr(bad)):
                FetchOptions("pop3://a@h", "maildir", "/m", "pw", keep=True, **bad)  # type: ignore[arg-type]
        self.assertEqual(FetchOptions("pop3://a@h", "maildir", "/m", "pw", keep=True,
                                      keep_days=0.0).keep_days, 0.0)


class ContribUnitTests(unittest.TestCase):
    """contrib/fetch's systemd units run command lines pop3ng fetch accepts, on the config
    path the docs name."""

    def test_exec_start_lines_parse(self) -> None:
        import shlex

        from twisted_pop3ng.fetch.cli import _parser

        here = os.path.dirname(os.path.abspath(__file__))
        contrib = os.path.join(os.path.dirname(os.path.dirname(here)), "contrib", "fetch")
        seen = {}
        for name in ("pop3ng-fetch.service", "pop3ng-fetch-once.service"):
            with open(os.path.join(contrib, name)) as f:
                lines = [line for line in f.read().splitlines() if line.startswith("ExecStart=")]
            self.assertEqual(len(lines), 1, name)
            words = shlex.split(lines[0][len("ExecStart="):].replace("%h", "/home/u"))
            self.assertEqual(words[:2], ["pop3ng", "fetch"])
            args = _parser().parse_args(words[2:])
            self.assertEqual(args.config, "/home/u/.config/pop3ng/fetch.toml")
            seen[name] = args.daemon
        self.assertEqual(seen, {"pop3ng-fetch.service": 300.0, "pop3ng-fetch-once.service": None})
        with open(os.path.join(contrib, "pop3ng-fetch.timer")) as f:
            self.assertIn("Unit=pop3ng-fetch-once.service", f.read())
