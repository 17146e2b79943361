"""Where ``pop3ng fetch --config`` gets secrets: ``password_command``, ``password_env``, and OAuth 2
refresh tokens traded at a token endpoint (twisted.web, started here) for access tokens our own
server accepts (``--oauth-hmac-key``): cached in a 0600 file, refreshed when expired or rejected,
rotated refresh tokens saved, a SIGKILL during the refresh losing nothing."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from typing import Dict, List, Optional
from urllib.parse import parse_qs

from twisted.internet import defer, threads
from twisted.internet.address import IPv4Address
from twisted.web import resource, server

from twisted_pop3ng import fetch
from twisted_pop3ng.auth.oauth import issue_token

from .fetch_support import PASSWORD, FetchTestCase, maildir_messages, server_ca
from .support import start_server

KEY = b"0123456789abcdef-test-hmac-key"
CLIENT_ID, CLIENT_SECRET = "pop3ng-client", "s3cret/with:odd&chars"


def maildir_count(path: str) -> int:
    return len(maildir_messages(path))


class TokenEndpoint(resource.Resource):
    """RFC 6749 §6: refresh_token grant; optionally rotates the refresh token, or holds the answer
    until :attr:`release` fires (for the kill-during-refresh test)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.refresh_token = "refresh-1"
        self.rotate = False
        self.requests: List[Dict[str, List[str]]] = []
        self.hold: Optional[defer.Deferred] = None
        self.arrived: defer.Deferred = defer.Deferred()

    def render_POST(self, request: server.Request) -> object:
        assert request.content is not None  # (a POST always has a body, maybe empty)
        form = parse_qs(request.content.read().decode("ascii"))
        self.requests.append(form)
        request.setHeader(b"content-type", b"application/json")
        ok = (form.get("grant_type") == ["refresh_token"] and form.get("client_id") == [CLIENT_ID]
              and form.get("client_secret") == [CLIENT_SECRET]
              and form.get("refresh_token") == [self.refresh_token])
        if not ok:
            request.setResponseCode(400)
            return json.dumps({"error": "invalid_grant",
                               "error_description": "refresh token not valid"}).encode()
        answer = {"access_token": issue_token(KEY, "alice", lifetime=600), "expires_in": 600,
                  "token_type": "Bearer"}
        if self.rotate:
            self.refresh_token = "refresh-%d" % (len(self.requests) + 1)
            answer["refresh_token"] = self.refresh_token
        body = json.dumps(answer).encode()
        if self.hold is None:
            return body
        if not self.arrived.called:
            self.arrived.callback(None)

        def answer_now(_: object) -> None:
            try:
                request.write(body)
                request.finish()
            except Exception:
                pass  # the client is gone (killed)

        self.hold.addCallback(answer_now)
        return server.NOT_DONE_YET


class CredentialTests(FetchTestCase):
    def setUp(self) -> None:
        from twisted.internet import reactor

        super().setUp()
        key_file = os.path.join(self.root, "hmac.key")
        with open(key_file, "wb") as f:
            f.write(KEY)
        self.server = start_server(os.path.join(self.root, "server"), {"alice": PASSWORD},
                                   extra_args=["--oauth-hmac-key", key_file])
        self.addCleanup(self.server.stop)
        self.endpoint = TokenEndpoint()
        site = server.Site(self.endpoint)
        self.http = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(self.http.stopListening)
        address = self.http.getHost()
        assert isinstance(address, IPv4Address)
        self.http_port = address.port
        self.config_path = os.path.join(self.root, "fetch.toml")
        self.refresh_file = os.path.join(self.root, "refresh-token")
        self.secret_file = os.path.join(self.root, "client-secret")
        self.cache = os.path.join(self.root, "cache", "alice.oauth")
        with open(self.refresh_file, "w") as f:
            f.write("refresh-1\n")
        with open(self.secret_file, "w") as f:
            f.write(CLIENT_SECRET + "\n")
        self.count = 0

    def deliver(self, n: int = 2) -> None:
        for _ in range(n):
            self.count += 1
            self.server.deliver("alice", b"Subject: %d\r\n\r\nbody\r\n" % self.count)

    def write_config(self, secret_lines: List[str]) -> None:
        lines = ["[accounts.alice]",
                 'url = "pop3s://alice@localhost:%d"' % self.server.tls_port,
                 'cafile = "%s"' % server_ca(self.server),
                 'maildir = "%s"' % self.out] + secret_lines
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def oauth_config(self, *extra: str) -> None:
        self.write_config([
            'oauth_token_endpoint = "http://127.0.0.1:%d/token"' % self.http_port,
            'oauth_client_id = "%s"' % CLIENT_ID,
            'oauth_client_secret_file = "%s"' % self.secret_file,
            'oauth_refresh_token_file = "%s"' % self.refresh_file,
            'oauth_cache = "%s"' % self.cache, *extra])

    def run_fetch(self, env: Optional[Dict[str, str]] = None) -> defer.Deferred:
        """In a thread: the token endpoint is served by this test's reactor meanwhile."""
        return threads.deferToThread(self.fetch, "--config", self.config_path, env=env)

    # -- OAuth ---------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_oauth_token_cached_refreshed_when_expired_or_rejected(self):
        self.deliver()
        self.oauth_config()
        code, err = yield self.run_fetch()
        self.assertEqual(code, 0, err)
        self.assertEqual(maildir_count(self.out), 2)
        self.assertEqual(len(self.endpoint.requests), 1)
        self.assertEqual(stat.S_IMODE(os.stat(self.cache).st_mode), 0o600)
        # cached: the next run asks the endpoint nothing
        self.deliver()
        code, err = yield self.run_fetch()
        self.assertEqual(code, 0, err)
        self.assertEqual((maildir_count(self.out), len(self.endpoint.requests)), (4, 1))
        # expired: refreshed before use
        with open(self.cache, "w") as f:
            json.dump({"access_token": issue_token(KEY, "alice", lifetime=600),
                       "expires_at": time.time() - 10}, f)
        self.deliver()
        code, err = yield self.run_fetch()
        self.assertEqual(code, 0, err)
        self.assertEqual((maildir_count(self.out), len(self.endpoint.requests)), (6, 2))
        # rejected by the server although not expired (revoked): refreshed once, run again
        with open(self.cache, "w") as f:
            json.dump({"access_token": issue_token(b"another-key-0123456789", "alice"),
                       "expires_at": time.time() + 600}, f)
        self.deliver()
        code, err = yield self.run_fetch()
        self.assertEqual(code, 0, err)
        self.assertEqual((maildir_count(self.out), len(self.endpoint.requests)), (8, 3))
        self.assertEqual(maildir_count(self.server.maildir("alice")), 0)

    @defer.inlineCallbacks
    def test_both_oauth_mechanisms_and_a_rotated_refresh_token(self):
        self.endpoint.rotate = True
        for mechanism in ("XOAUTH2", "OAUTHBEARER"):
            if os.path.exists(self.cache):
                os.unlink(self.cache)
            self.deliver(1)
            self.oauth_config('mechanism = "%s"' % mechanism)
            code, err = yield self.run_fetch()
            self.assertEqual(code, 0, (mechanism, err))
            with open(self.refresh_file) as f:
                self.assertEqual(f.read().strip(), self.endpoint.refresh_token)
        self.assertEqual(maildir_count(self.out), 2)

    @defer.inlineCallbacks
    def test_endpoint_refuses_the_refresh_token(self):
        self.deliver()
        with open(self.refresh_file, "w") as f:
            f.write("stale\n")
        self.oauth_config()
        code, err = yield self.run_fetch()
        self.assertEqual(code, fetch.EXIT_AUTH, err)
        self.assertIn("%s:5: accounts.alice.oauth_token_endpoint: the token endpoint refused the "
                      "refresh (HTTP 400, invalid_grant: refresh token not valid)"
                      % self.config_path, err)
        self.assertEqual(maildir_count(self.server.maildir("alice")), 2)

    @defer.inlineCallbacks
    def test_sigkill_during_the_refresh_loses_nothing(self):
        self.deliver()
        self.endpoint.rotate = True
        self.endpoint.hold = defer.Deferred()
        self.oauth_config()
        process = subprocess.Popen(self.command("--config", self.config_path), env=self.env(),
                                   stderr=subprocess.DEVNULL)
        yield self.endpoint.arrived  # the request is in; the answer (and its rotation) held back
        process.send_signal(signal.SIGKILL)
        yield threads.deferToThread(process.wait)
        self.endpoint.hold.callback(None)
        # The provider rotated; a provider that keeps the old refresh token valid for a grace
        # period (as RFC 6819 recommends) accepts it once more: here, by resetting the expectation.
        self.endpoint.refresh_token = "refresh-1"
        self.endpoint.hold = None
        with open(self.refresh_file) as f:
            self.assertEqual(f.read(), "refresh-1\n")  # untouched by the killed run
        self.assertFalse(os.path.exists(self.cache))
        self.assertEqual(maildir_count(self.server.maildir("alice")), 2)
        code, err = yield self.run_fetch()
        self.assertEqual(code, 0, err)
        self.assertEqual(maildir_count(self.out), 2)

    # -- passwords -----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_password_command_and_environment(self):
        self.deliver()
        pw_file = os.path.join(self.root, "pw")
        with open(pw_file, "w") as f:
            f.write(PASSWORD + "\nsecond line ignored\n")
        self.write_config(['password_command = "cat \'%s\'"' % pw_file])
        code, err = yield self.run_fetch()
        self.assertEqual(code, 0, err)
        self.assertEqual(maildir_count(self.out), 2)
        self.deliver()
        self.write_config(['password_command = "echo no such secret >&2; exit 3"'])
        code, err = yield self.run_fetch()
        self.assertEqual(code, fetch.EXIT_USAGE, err)
        self.assertIn("%s:5: accounts.alice.password_command: the command exited with status 3: "
                      "no such secret" % self.config_path, err)
        self.write_config(['password_env = "MY_MAIL_PASSWORD"'])
        code, err = yield self.run_fetch()
        self.assertEqual(code, fetch.EXIT_USAGE, err)
        self.assertIn("the environment has no MY_MAIL_PASSWORD", err)
        code, err = yield self.run_fetch(env={"MY_MAIL_PASSWORD": PASSWORD})
        self.assertEqual(code, 0, err)
        self.assertEqual(maildir_count(self.out), 4)
        self.write_config(['password_env = "MY_MAIL_PASSWORD"'])
        code, err = yield self.run_fetch(env={"MY_MAIL_PASSWORD": "wrong"})
        self.assertEqual(code, fetch.EXIT_AUTH, err)
