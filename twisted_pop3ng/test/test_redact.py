"""Secrets stay out of what the commands print: ``_redact.redact`` itself, and each place a user's
own input is echoed in an error (config keys, forward URLs, ``--auth``, OAuth URLs, DSNs)."""

from __future__ import annotations

import io
import sys

from twisted.python import usage
from twisted.trial import unittest

from twisted_pop3ng._redact import redact
from twisted_pop3ng.delivery import lda
from twisted_pop3ng.fetch import config
from twisted_pop3ng.fetch.forward import parse_forward_url
from twisted_pop3ng.mailbox import redact_spec
from twisted_pop3ng.service.options import Options

SECRET = "s3cr3t"


class RedactTests(unittest.TestCase):
    def test_what_is_hidden(self) -> None:
        cases = {
            "host=h password=s3cr3t dbname=d": "host=h password=*** dbname=d",
            "host=h password='s3cr3t and more' dbname=d": "host=h password=*** dbname=d",
            # libpq reads "s3cr3t more" here: the escaped space is part of the value
            "host=h password=s3cr3t\\ more dbname=d": "host=h password=*** dbname=d",
            "host=h password='s3cr3t more": "host=h password=***",  # never closed
            "PASSWORD = s3cr3t": "PASSWORD = ***",
            "postgresql://u:s3cr3t@h/db": "postgresql://u:***@h/db",
            "postgresql://u:s3c@r3t@h/db": "postgresql://u:***@h/db",  # up to the last @
            "smtp://u:s3cr3t@mx:25": "smtp://u:***@mx:25",
        }
        for text, shown in cases.items():
            self.assertEqual(redact(text), shown, text)
            self.assertEqual(redact_spec("postgresql:" + text), "postgresql:" + shown)

    def test_what_is_left_alone(self) -> None:
        for text in ("pop3s://alice@mail.example.org:995", "http://127.0.0.1:8080/jwks@v2",
                     "maildir:/var/mail/{user}/Maildir", "passwd-file:/etc/pop3ng/users", ""):
            self.assertEqual(redact(text), text)


class EchoTests(unittest.TestCase):
    def test_config_file_url_with_a_password(self) -> None:
        for key, text in (("url", '[accounts.a]\nurl = "pop3s://u:%s@h"\nmaildir = "/m"\n'),
                          ("forward", '[accounts.a]\nurl = "pop3s://u@h"\nforward = "smtp://u:%s@h"\n')):
            with self.assertRaises(config.ConfigError) as caught:
                config.parse(text % SECRET, "f.toml")
            self.assertIn("accounts.a." + key, str(caught.exception))
            self.assertIn("u:***@h", str(caught.exception))
            self.assertNotIn(SECRET, str(caught.exception))

    def test_forward_url_with_a_password(self) -> None:
        with self.assertRaises(ValueError) as caught:
            parse_forward_url("smtp://u:%s@mx" % SECRET)
        self.assertNotIn(SECRET, str(caught.exception))
        self.assertIn("smtp://u:***@mx", str(caught.exception))

    def test_deliver_auth_memory(self) -> None:
        err = io.StringIO()
        saved, sys.stderr = sys.stderr, err
        try:
            status = lda.main(["--mailbox", "maildir:" + self.mktemp() + "/{user}", "--auth",
                               "memory:alice:%s:bob" % SECRET, "alice"], stdin=io.BytesIO(b"S: x\n\nb\n"))
        finally:
            sys.stderr = saved
        self.assertEqual(status, 64)
        self.assertIn("memory:***", err.getvalue())
        self.assertNotIn(SECRET, err.getvalue())

    def parse_error(self, *argv: str) -> str:
        options = Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", *argv])
        return str(caught.exception)

    def test_oauth_url_with_a_password(self) -> None:
        users = self.mktemp()
        with open(users, "w") as f:
            f.write("alice:{PLAIN}pw\n")
        message = self.parse_error("--auth", "passwd-file:" + users, "--mailbox",
                                   "maildir:/tmp/{user}", "--oauth-jwks-url",
                                   "http://u:%s@example.org/jwks" % SECRET)
        self.assertIn("--oauth-jwks-url", message)
        self.assertNotIn(SECRET, message)

    def test_mailbox_dsn_with_an_escaped_space(self) -> None:
        message = self.parse_error("--mailbox", "postgresql:host=127.0.0.1 port=1 connect_timeout=1 "
                                   "password=%s\\ more" % SECRET)
        self.assertIn("password=***", message)
        self.assertNotIn(SECRET, message)
        self.assertNotIn("more", message)
