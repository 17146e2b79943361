"""OAuth 2 access tokens for XOAUTH2/OAUTHBEARER from a refresh token (RFC 6749 §6).

The access token is cached in a private file (0600, written atomically, default beside the state
file: ``STATE.oauth``) with its expiry, and used until 60 seconds before it expires, or until the
POP3 server rejects it (then :meth:`OAuthTokens.access_token` is asked with ``force=True``).

A provider may rotate the refresh token (answer with a new ``refresh_token``): the new one is
written to ``oauth_refresh_token_file`` (atomically) *before* the access token is cached, so a
kill in between leaves a usable refresh token. A kill during the request itself loses nothing
either: the old refresh token is still on disk (providers that rotate keep it valid until the
new one is used, RFC 6819 §5.2.2.3 / OAuth 2.1 §6.1 recommend a grace period; one that does not
then needs a new sign-in, and no mail is touched by any of this).
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional

from twisted.internet import threads

from twisted_pop3ng._fs import write_atomically
from twisted_pop3ng.client.connect import parse_url
from twisted_pop3ng.fetch.config import account_error
from twisted_pop3ng.fetch.state import default_path

__all__ = ["OAuthTokens"]

#: A cached token this close to its expiry is refreshed rather than used.
MARGIN = 60.0
#: Without ``expires_in`` in the answer, a token is taken to last this long.
DEFAULT_LIFETIME = 3600.0
HTTP_TIMEOUT = 30.0


class OAuthTokens:
    def __init__(self, account: Any, endpoint: str, client_id: str, refresh_token_file: str,
                 cache_path: str, client_secret_file: Optional[str] = None,
                 scope: Optional[str] = None, cafile: Optional[str] = None) -> None:
        self.account = account
        self.endpoint = endpoint
        self.client_id = client_id
        self.refresh_token_file = refresh_token_file
        self.cache_path = cache_path
        self.client_secret_file = client_secret_file
        self.scope = scope
        self.cafile = cafile

    @classmethod
    def from_account(cls, account: Any) -> "OAuthTokens":
        get = account.get
        endpoint = get("oauth_token_endpoint")
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise account_error(account, "oauth_token_endpoint", "expected an https:// URL")
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
            raise account_error(account, "oauth_token_endpoint",
                                "the refresh token would travel in clear: use https://")
        state = get("state") or default_path(str(parse_url(get("url"))))  # as fetch() names it
        cache = get("oauth_cache") or state + ".oauth"
        return cls(account, endpoint, get("oauth_client_id"), get("oauth_refresh_token_file"),
                   cache, get("oauth_client_secret_file"), get("oauth_scope"),
                   get("oauth_cafile") or get("cafile"))

    async def access_token(self, reactor: Any, force: bool = False) -> str:
        if not force:
            cached = self._cached()
            if cached is not None:
                return cached
        result: str = await threads.deferToThreadPool(reactor, reactor.getThreadPool(),
                                                      self._refresh)
        return result

    def _cached(self) -> Optional[str]:
        try:
            with open(self.cache_path, "rb") as f:
                data = json.loads(f.read())
            token, expires = str(data["access_token"]), float(data["expires_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no cache, or an unreadable one: refresh
        return token if expires - MARGIN > time.time() else None

    def _read(self, key: str, path: str) -> str:
        try:
            with open(path, "r", encoding="utf-8") as f:
                value = f.readline().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise account_error(self.account, key, "cannot read %s: %s"
                                % (path, getattr(error, "strerror", None) or error))
        if not value:
            raise account_error(self.account, key, "%s is empty" % path)
        return value

    def _refresh(self) -> str:
        form: Dict[str, str] = {"grant_type": "refresh_token", "client_id": self.client_id,
                                "refresh_token": self._read("oauth_refresh_token_file",
                                                            self.refresh_token_file)}
        if self.client_secret_file:
            form["client_secret"] = self._read("oauth_client_secret_file", self.client_secret_file)
        if self.scope:
            form["scope"] = self.scope
        request = urllib.request.Request(
            self.endpoint, data=urllib.parse.urlencode(form).encode("ascii"), method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "Accept": "application/json"})
        context = ssl.create_default_context(cafile=self.cafile)
        started = time.time()
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT, context=context) as response:
                body = response.read(1 << 20)
        except urllib.error.HTTPError as error:
            raise self._refused(error.code, error.read(4096))
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise account_error(self.account, "oauth_token_endpoint",
                                "cannot reach the token endpoint: %s" % reason, exit_code=5)
        try:
            answer = json.loads(body)
            token = answer["access_token"]
            if not isinstance(token, str) or not token:
                raise ValueError("no access_token")
            lifetime = float(answer.get("expires_in") or DEFAULT_LIFETIME)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise account_error(self.account, "oauth_token_endpoint",
                                "the token endpoint's answer has no usable access_token", 5)
        rotated = answer.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != form["refresh_token"]:
            write_atomically(self.refresh_token_file, (rotated + "\n").encode("utf-8"))
        os.makedirs(os.path.dirname(self.cache_path) or ".", mode=0o700, exist_ok=True)
        write_atomically(self.cache_path, json.dumps(
            {"access_token": token, "expires_at": started + lifetime}).encode("utf-8"))
        return token

    def _refused(self, status: int, body: bytes) -> Exception:
        try:
            answer = json.loads(body)
            detail = "%s%s" % (answer.get("error", ""), ": " + answer["error_description"]
                               if answer.get("error_description") else "")
        except (ValueError, AttributeError, TypeError):
            detail = ""
        return account_error(self.account, "oauth_token_endpoint",
                             "the token endpoint refused the refresh (HTTP %d%s)"
                             % (status, ", " + detail[:200] if detail else ""), exit_code=3)
