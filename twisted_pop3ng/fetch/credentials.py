"""Where an account's password or OAuth token comes from (config keys of the same names).

* ``password_file``: the first line of the file (without its line ending);
* ``password_env``: an environment variable;
* ``password_command``: ``sh -c COMMAND``, the first line of its stdout (mbsync's ``PassCmd``,
  msmtp's ``passwordeval``); a non-zero exit or no output is an error showing its stderr;
* ``token_file``: an OAuth 2 bearer token, as it is;
* ``oauth_token_endpoint`` and friends: a refresh token traded for access tokens (:mod:`.oauth`).

Secrets are read when the account runs, each time (a rotated password file is picked up by the
daemon without a reload), and blocking work (a command, an HTTP request) runs in a thread.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import threads

from twisted_pop3ng.fetch.config import AccountError, account_error

__all__ = ["AccountError", "Secret", "Credentials"]

#: A password command that has not answered by then is killed (a prompt waiting for a terminal).
COMMAND_TIMEOUT = 60.0


@dataclass
class Secret:
    password: Optional[str] = None
    token: Optional[str] = None


class Credentials:
    """The secret of one account (a :class:`~twisted_pop3ng.fetch.config.Account`)."""

    def __init__(self, account: Any, environ: Optional[Any] = None) -> None:
        self.account = account
        self.environ = os.environ if environ is None else environ
        self._oauth: Any = None
        if account.get("oauth_token_endpoint"):
            from twisted_pop3ng.fetch.oauth import OAuthTokens

            self._oauth = OAuthTokens.from_account(account)

    @property
    def refreshable(self) -> bool:
        """True when a rejected secret can be replaced by a fresh one (an OAuth access token)."""
        return self._oauth is not None

    async def get(self, reactor: Any) -> Secret:
        account = self.account
        if self._oauth is not None:
            return Secret(token=await self._oauth.access_token(reactor))
        if account.get("password_file"):
            return Secret(password=self._first_line("password_file"))
        if account.get("token_file"):
            return Secret(token=self._first_line("token_file"))
        if account.get("password_env"):
            name = account.get("password_env")
            if name not in self.environ:
                raise account_error(account, "password_env", "the environment has no %s" % name)
            return Secret(password=self.environ[name])
        if account.get("password_command"):
            return Secret(password=await threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), self._run_command))
        raise account_error(account, "url", "no password: set password_file, password_env, "
                                            "password_command, token_file or oauth_token_endpoint")

    async def refresh(self, reactor: Any) -> Secret:
        """A new access token after the server rejected the cached one."""
        return Secret(token=await self._oauth.access_token(reactor, force=True))

    def _first_line(self, key: str) -> str:
        path = self.account.get(key)
        try:
            with open(path, "r", encoding="utf-8") as f:
                line = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as error:
            raise account_error(self.account, key, "cannot read %s: %s"
                                % (path, getattr(error, "strerror", None) or error))
        if not line:
            raise account_error(self.account, key, "%s is empty" % path)
        return line

    def _run_command(self) -> str:
        command = self.account.get("password_command")
        try:
            result = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                                    capture_output=True, timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise account_error(self.account, "password_command",
                                "the command did not finish in %d seconds" % COMMAND_TIMEOUT)
        except OSError as error:
            raise account_error(self.account, "password_command", "cannot run: %s" % error)
        why = ""
        if result.returncode != 0:
            why = "the command exited with status %d" % result.returncode
        line = result.stdout.decode("utf-8", "replace").split("\n", 1)[0].rstrip("\r")
        if not why and not line:
            why = "the command printed nothing"
        if why:
            detail = result.stderr.decode("utf-8", "replace").strip()[-300:]
            raise account_error(self.account, "password_command",
                                why + (": " + detail if detail else ""))
        return line

