"""The ``pop3ng fetch --config FILE`` file: TOML, any number of accounts, defaults at the top.

Rules of this module: it only reads and checks; nothing here opens a connection, runs a command or
reads a secret (:mod:`.credentials` does, when an account runs). Every mistake is a
:class:`ConfigError` naming the file, the line and the key (``FILE:LINE: accounts.work.keep: …``):
``tomllib`` gives the line of a syntax error, :func:`key_line` finds the line of a key for the
errors found after parsing. Keys are a table (:data:`ACCOUNT_KEYS`): a key not in it is an error,
so a typo never silently means "the default".
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted_pop3ng._redact import redact
from twisted_pop3ng.auth import sasl_client
from twisted_pop3ng.client.connect import parse_url
from twisted_pop3ng.tls.client import trust_root

__all__ = ["ConfigError", "Account", "DaemonSettings", "Config", "load", "parse", "key_line",
           "DESTINATIONS", "ACCOUNT_KEYS", "AccountError", "account_error"]

#: The destination keys; an account has exactly one.
DESTINATIONS = ("maildir", "mbox", "mda", "forward")
#: Keys naming where the password (or token) comes from; an account has at most one.
SECRETS = ("password_file", "password_env", "password_command", "token_file", "oauth_token_endpoint")


class ConfigError(ValueError):
    """A mistake in the config file; ``str()`` names the file, the line and the key."""

    def __init__(self, path: str, line: Optional[int], key: str, message: str) -> None:
        where = "%s:%d" % (path, line) if line else path
        super().__init__("%s: %s%s" % (where, key + ": " if key else "", message))
        self.path, self.line, self.key = path, line, key


class AccountError(Exception):
    """An account failed for a reason its config names (a password file that cannot be read, a
    token endpoint that refuses): ``str()`` names the file, line and key."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def account_error(account: "Account", key: str, message: str, exit_code: int = 2) -> AccountError:
    """An :class:`AccountError` naming where ``key`` was set for ``account``."""
    return AccountError(str(account.error(key, message)), exit_code)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _path(value: Any) -> str:
    return os.path.expanduser(_string(value))


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false (without quotes)")
    return value


# The number rules, shared with the command line (fetch.cli). "nan" and "inf" are floats that
# pass "value <= 0" tests both ways: keep_days = nan once deleted every message.

def positive_number(value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value <= 0):
        raise ValueError("expected a positive number")
    return float(value)


def non_negative_number(value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < 0):
        raise ValueError("expected a number, 0 or more")
    return float(value)


def whole_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("expected a whole number, 1 or more")
    return value




def _url(value: Any) -> str:
    text = _string(value)
    parsed = parse_url(text)  # ValueError names what is wrong
    if not parsed.username:
        raise ValueError("the URL needs a user name: pop3://USER@HOST")
    return text


def _forward(value: Any) -> str:
    from twisted_pop3ng.fetch.forward import parse_forward_url

    text = _string(value)
    parse_forward_url(text)
    return text


def address(value: Any) -> str:
    """An envelope address: what goes between ``<`` and ``>`` of MAIL FROM / RCPT TO."""
    if value == "":
        return value
    text = _string(value)
    if not re.fullmatch(r"[!-;=?-~]{1,254}", text):
        raise ValueError("expected an address without spaces, angle brackets or control "
                         "characters, such as alice or alice@example.org")
    return text


def _one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("expected one of %s" % ", ".join('"%s"' % c for c in choices))
        return value
    return check


def mechanism(value: Any) -> str:
    """A method ``pop3ng fetch`` can force (also its ``--mechanism``)."""
    text = _string(value).upper()
    if text not in sasl_client.FORCEABLE:
        raise ValueError("expected one of %s" % ", ".join(sorted(sasl_client.FORCEABLE)))
    return text


def cafile(value: Any) -> str:
    """A readable PEM file with at least one certificate (also ``--cafile``): checked before any
    connection, so that a typo is a usage error, not a TLS failure after the connect."""
    path = _path(value)
    try:
        trust_root(path)
    except OSError as error:
        raise ValueError("cannot read %s: %s" % (path, error.strerror or error))
    except Exception as error:  # no PEM block, or one OpenSSL cannot parse
        raise ValueError(str(error) if path in str(error) else "%s: %s" % (path, error))
    return path


#: Every key an account (or ``[defaults]``) may have, with its check. The checks return the value
#: as the fetch uses it (``~`` expanded in paths).
ACCOUNT_KEYS: Dict[str, Callable[[Any], Any]] = {
    "url": _url,
    "maildir": _path, "mbox": _path, "mda": _string, "forward": _forward,
    "forward_to": lambda v: address(_string(v)), "forward_from": address,
    "forward_cafile": cafile, "forward_starttls": _one_of("auto", "require", "never"),
    "on_reject": _one_of("keep", "delete"),
    "password_file": _path, "password_env": _string, "password_command": _string,
    "token_file": _path,
    "oauth_token_endpoint": _string, "oauth_client_id": _string, "oauth_client_secret_file": _path,
    "oauth_refresh_token_file": _path, "oauth_cache": _path, "oauth_scope": _string,
    "oauth_cafile": _path,
    "keep": _boolean, "keep_days": non_negative_number, "state": _path, "cafile": cafile,
    "mechanism": mechanism, "timeout": positive_number,
    "allow_plaintext": _boolean, "allow_plain_fallback": _boolean,
    "max_message_size": whole_count, "batch": whole_count, "pipeline": whole_count,
    "poll_interval": positive_number,
}
#: Keys of the optional ``[daemon]`` table.
DAEMON_KEYS: Dict[str, Callable[[Any], Any]] = {
    "parallel": whole_count, "max_backoff": positive_number, "poll_interval": positive_number,
}


@dataclass
class Account:
    """One account, defaults applied and every value checked."""

    name: str
    settings: Dict[str, Any]
    #: For each key, the table that set it (``("defaults",)`` or ``("accounts", NAME)``) and
    #: its line: errors found later (a secret file that cannot be read) point there.
    origins: Dict[str, Tuple[Tuple[str, ...], Optional[int]]] = field(default_factory=dict)
    path: str = ""

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    @property
    def destination(self) -> Tuple[str, str]:
        kind = next(k for k in DESTINATIONS if k in self.settings)
        return kind, self.settings[kind]

    def key_path(self, key: str) -> Tuple[str, ...]:
        table = self.origins.get(key, (("accounts", self.name), None))[0]
        return table + (key,)

    def error(self, key: str, message: str) -> ConfigError:
        """A :class:`ConfigError` at the line where ``key`` was set for this account."""
        line = self.origins.get(key, ((), None))[1]
        return ConfigError(self.path, line, ".".join(self.key_path(key)), message)


@dataclass
class DaemonSettings:
    parallel: int = 4
    max_backoff: float = 3600.0
    poll_interval: Optional[float] = None


@dataclass
class Config:
    path: str
    accounts: List[Account]
    daemon: DaemonSettings

    def select(self, names: Sequence[str]) -> List[Account]:
        """The named accounts in the order given (all of them when none are named)."""
        if not names:
            return list(self.accounts)
        known = {a.name: a for a in self.accounts}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(self.path, None, "", "no account named %s (the file has: %s)"
                              % (", ".join(missing), ", ".join(sorted(known)) or "none"))
        return [known[n] for n in dict.fromkeys(names)]


def load(path: str) -> Config:
    """Read and check the file; :class:`ConfigError` for any mistake, an unreadable file included."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise ConfigError(path, None, "", "cannot read: %s" % (error.strerror or error))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(path, data.count(b"\n", 0, error.start) + 1, "", "not UTF-8 text")
    return parse(text, path)


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column \d+\)$")


def parse(text: str, path: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        found = _TOML_POSITION.search(message)
        line = int(found.group(1)) if found else None
        raise ConfigError(path, line, "", "TOML syntax error: %s" % _TOML_POSITION.sub("", message))

    def fail(key_path: Tuple[str, ...], message: str) -> ConfigError:
        return ConfigError(path, key_line(text, key_path), ".".join(key_path), message)

    for key in data:
        if key not in ("defaults", "accounts", "daemon"):
            raise fail((key,), "unknown key (the file has [defaults], [daemon] and "
                               "[accounts.NAME] tables)")
    defaults = _table(data, "defaults", fail)
    daemon_table = _table(data, "daemon", fail)
    accounts_table = _table(data, "accounts", fail)
    default_values = _check_keys(defaults, ("defaults",), ACCOUNT_KEYS, fail)
    daemon = DaemonSettings(**_check_keys(daemon_table, ("daemon",), DAEMON_KEYS, fail))
    if not accounts_table:
        raise fail(("accounts",), "no accounts: add an [accounts.NAME] table")
    accounts = []
    for name, table in accounts_table.items():
        if not isinstance(table, dict):
            raise fail(("accounts", name), "expected a table: [accounts.%s]" % name)
        if not re.fullmatch(r"[A-Za-z0-9_.@+-]{1,64}", name):
            raise fail(("accounts", name), "account names are 1-64 letters, digits and _.@+-")
        values = _check_keys(table, ("accounts", name), ACCOUNT_KEYS, fail)
        inherited = _inherited(default_values, values)
        origins: Dict[str, Tuple[Tuple[str, ...], Optional[int]]] = {
            k: (("defaults",), key_line(text, ("defaults", k))) for k in inherited}
        origins.update({k: (("accounts", name), key_line(text, ("accounts", name, k)))
                        for k in values})
        settings = dict(inherited, **values)
        account = Account(name, settings, origins, path)
        _check_account(account, fail)
        accounts.append(account)
    return Config(path, accounts, daemon)


def _inherited(defaults: Dict[str, Any], own: Dict[str, Any]) -> Dict[str, Any]:
    """What an account takes from ``[defaults]``: a destination or a secret source of its own
    replaces the default one (rather than clashing with it)."""
    oauth = tuple(k for k in ACCOUNT_KEYS if k.startswith("oauth_"))
    dropped: set = set()
    for primary, group in ((DESTINATIONS, DESTINATIONS), (SECRETS, SECRETS + oauth)):
        if any(k in own for k in primary):
            dropped.update(group)
    return {k: v for k, v in defaults.items() if k not in dropped}


def _table(data: Dict[str, Any], name: str, fail: Callable[..., ConfigError]) -> Dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise fail((name,), "expected a table: [%s]" % name)
    return table


def _check_keys(table: Dict[str, Any], where: Tuple[str, ...], keys: Dict[str, Callable[[Any], Any]],
                fail: Callable[..., ConfigError]) -> Dict[str, Any]:
    values = {}
    for key, value in table.items():
        check = keys.get(key)
        if check is None:
            close = [k for k in keys if k.replace("_", "") == key.replace("_", "").replace("-", "")]
            hint = " (did you mean %s?)" % close[0] if close else ""
            raise fail(where + (key,), "unknown key%s" % hint)
        try:
            values[key] = check(value)
        except ValueError as error:
            raise fail(where + (key,), "%s, got %s" % (error, _shown(value)))
    return values


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        value = redact(value)  # (a URL with user:password@ is refused: not by showing it)
        return '"%s"' % value if len(value) < 60 else '"%s…"' % value[:57]
    if isinstance(value, (dict, list)):
        return "a table" if isinstance(value, dict) else "a list"
    return repr(value)


def _check_account(account: Account, fail: Callable[..., ConfigError]) -> None:
    """The rules between keys: one URL, one destination, one secret, keep_days with keep."""
    where = ("accounts", account.name)
    settings = account.settings
    at = account.key_path
    if "url" not in settings:
        raise fail(where, 'no url: add url = "pop3s://USER@HOST"')
    destinations = [k for k in DESTINATIONS if k in settings]
    if len(destinations) != 1:
        raise fail(at(destinations[1]) if destinations else where,
                   "an account needs exactly one destination of %s; it %s"
                   % (", ".join(DESTINATIONS), "has " + " and ".join(destinations)
                      if destinations else "has none"))
    forward_only = [k for k in ("forward_to", "forward_from", "forward_cafile", "forward_starttls",
                                "on_reject") if k in settings and at(k)[0] == "accounts"]
    if forward_only and "forward" not in settings:
        raise fail(at(forward_only[0]), "only for a forward destination")
    secrets = [k for k in SECRETS if k in settings]
    if len(secrets) > 1:
        raise fail(at(secrets[1]), "an account takes its password or token from one source; "
                                   "it also has %s" % secrets[0])
    if "oauth_token_endpoint" in settings:
        for needed in ("oauth_client_id", "oauth_refresh_token_file"):
            if needed not in settings:
                raise fail(at("oauth_token_endpoint"), "OAuth needs %s too" % needed)
    if "keep_days" in settings and not settings.get("keep"):
        raise fail(at("keep_days"), "keep_days needs keep = true")


_HEADER = re.compile(r"^\s*\[(?!\[)(.*)\]\s*(#.*)?$")
_ASSIGNMENT = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
                         r"(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


def _key_path(text: str) -> Optional[Tuple[str, ...]]:
    """The key path of a TOML key (``a."b c".d``), parsed by tomllib itself."""
    try:
        node: Any = tomllib.loads("%s = 0" % text)
    except tomllib.TOMLDecodeError:
        return None
    parts = []
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        parts.append(key)
    return tuple(parts)


def key_line(text: str, key_path: Tuple[str, ...]) -> Optional[int]:
    """The 1-based line where ``key_path`` is set (or its table begins), None if not found.

    A small scanner over table headers and ``key =`` lines: enough for the files people write
    (dotted keys and quoted names included); inside multi-line strings it may be fooled, which
    only costs the line number of an error message.
    """
    table: Tuple[str, ...] = ()
    best: Optional[int] = None
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            parsed = _key_path(header.group(1))
            if parsed is not None:
                table = parsed
                if table[:len(key_path)] == key_path:
                    return number  # the table itself, or the first one inside it
                if best is None and key_path[:len(table)] == table and table:
                    best = number
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment:
            parsed = _key_path(assignment.group(1))
            if parsed is not None:
                full = table + parsed
                if full[:len(key_path)] == key_path:
                    return number
                if full == key_path[:len(full)]:
                    best = number  # an inline table holding the key
    return best
