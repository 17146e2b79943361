"""Checkers: Dovecot-format passwd-file (``--auth passwd-file:PATH``) and its strcred factory.

The file is ``user:{SCHEME}secret[:uid:gid:gecos:home:shell:extra]``, one user per line, ``#``
comments. It is re-read whenever its modification time or size changes. An unknown user is checked
against a dummy secret so that it costs the same as a wrong password.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.strcred import ICheckerFactory
from twisted.internet import defer
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from . import passwords


@dataclass(frozen=True)
class PasswdEntry:
    user: str
    password: str
    fields: Tuple[str, ...] = ()


def parse_passwd_file(text: str) -> Dict[str, PasswdEntry]:
    users: Dict[str, PasswdEntry] = {}
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, rest = line.partition(":")
        if not sep or not user:
            continue
        # The password field ends at the next colon, except for {PLAIN} secrets, which Dovecot
        # cannot contain colons either; extra fields follow.
        fields = rest.split(":")
        users[user] = PasswdEntry(user, fields[0], tuple(fields[1:]))
    return users


@implementer(ICredentialsChecker)
class PasswdFileChecker:
    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(self, path: str, default_scheme: str = passwords.DEFAULT_SCHEME) -> None:
        self.path = path
        self.default_scheme = default_scheme
        self._stamp: Optional[Tuple[int, int, int]] = None
        self._users: Dict[str, PasswdEntry] = {}
        self._load()

    def _load(self) -> None:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
            self._users = parse_passwd_file(f.read())
        self._stamp = stamp

    def lookup(self, username: str) -> Optional[PasswdEntry]:
        try:
            self._load()
        except OSError:
            self.log.failure("cannot re-read passwd-file {path}", path=self.path)
        return self._users.get(username)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "surrogateescape")
        entry = self.lookup(username)
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        try:
            if entry is None:
                passwords.verify("{PLAIN}\0dummy", password)
                ok = False
            else:
                ok = passwords.verify(entry.password, password, self.default_scheme)
        except passwords.UnknownScheme as error:
            self.log.error("passwd-file {path}: unsupported scheme {scheme} for {user}",
                           path=self.path, scheme=str(error), user=username)
            ok = False
        if ok:
            return defer.succeed(entry.user)
        return defer.fail(UnauthorizedLogin("authentication failed"))


@implementer(ICheckerFactory, IPlugin)
class PasswdFileCheckerFactory:
    authType = "passwd-file"
    authHelp = ("A Dovecot-format passwd-file: user:{SCHEME}secret[:uid:gid:gecos:home:shell:extra]. "
                "Re-read when it changes.")
    argStringFormat = "Path to the passwd-file"
    credentialInterfaces = PasswdFileChecker.credentialInterfaces

    def generateChecker(self, argstring: str = "") -> PasswdFileChecker:
        from twisted.cred.strcred import InvalidAuthArgumentString

        if not argstring:
            raise InvalidAuthArgumentString("passwd-file needs a path: --auth passwd-file:/etc/pop3ng/users")
        try:
            return PasswdFileChecker(argstring)
        except OSError as error:
            raise InvalidAuthArgumentString("cannot read passwd-file %s: %s" % (argstring, error.strerror))
