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
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.cred.strcred import ICheckerFactory
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface, implementer

from twisted_pop3ng.auth import passwords
from twisted_pop3ng.interfaces import LATER, IInlineChecker  # LATER: also re-exported from here


#: Threads that hash passwords at once: Argon2ID takes 64 MB each, so a flood of logins must queue
#: rather than multiply memory (Dovecot bounds its auth workers the same way).
HASH_THREADS = 4
_hash_slots = defer.DeferredSemaphore(HASH_THREADS)
#: Schemes verified on the reactor thread: plaintext compares and single fast digests.
CHEAP_SCHEMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT", "CRAM-MD5", "PLAIN-MD5", "MD5", "SHA",
                           "SHA1", "SHA256", "SHA512", "SMD5", "SSHA", "SSHA256", "SSHA512"})


def login_now(portal: Any, credentials: Any, interface: Any) -> Any:
    """``portal.login(credentials, None, interface)`` without Deferreds where possible.

    For a plain :class:`~twisted.cred.portal.Portal` whose checker for these credentials answers
    at once (it provides :class:`~twisted_pop3ng.interfaces.IInlineChecker`, as
    :class:`PasswdFileChecker` does), the realm is asked directly: the result is
    then the realm's (interface, avatar, logout) tuple, or a Deferred of it if the realm is
    asynchronous, and a wrong password raises UnauthorizedLogin. In every other case (another
    portal or checker, a slow hash) it is the portal's own Deferred. A login costs about a fifth
    of a short session's protocol work; the Deferred chain was a third of that.
    """
    if type(portal) is Portal:
        for iface, checker in portal.checkers.items():  # Portal.login's own choice of checker
            if iface.providedBy(credentials):
                if IInlineChecker.providedBy(checker):
                    avatar_id = checker.avatar_id_now(credentials)
                    if avatar_id is not LATER:
                        return portal.realm.requestAvatar(avatar_id, None, interface)
                break
    return portal.login(credentials, None, interface)


def hash_in_thread(function: Any, *args: Any) -> defer.Deferred:
    """Run a password-hashing call in the reactor's thread pool, at most HASH_THREADS at once.

    The reactor owns (starts, stops, and in trial, resets) the pool; the semaphore bounds how many
    hashes run together, so a login flood queues instead of multiplying Argon2's memory.
    """
    return _hash_slots.run(threads.deferToThread, function, *args)


class ISecretStore(Interface):
    """A checker that can hand out stored secrets, for challenge-response SASL (CRAM-MD5, SCRAM, APOP)."""

    def lookup_secret(username):
        """The stored ``{SCHEME}secret`` of ``username`` (str), or None; may return a Deferred."""

    def secret_schemes():
        """The set of schemes present in the store (to decide which mechanisms to offer)."""


class IPreauthenticated(Interface):
    """Credentials already proven by the SASL layer (SCRAM proof, TLS client certificate, OAuth)."""

    username = Attribute("The authenticated user name (str).")
    mechanism = Attribute("The SASL mechanism that proved it.")


@implementer(IPreauthenticated)
@dataclass(frozen=True)
class Preauthenticated:
    username: str
    mechanism: str


@implementer(ICredentialsChecker)
class PreauthenticatedChecker:
    """Accepts :class:`Preauthenticated` credentials; only our SASL mechanisms create them."""

    credentialInterfaces = (IPreauthenticated,)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        return defer.succeed(credentials.username)


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


@implementer(ICredentialsChecker, ISecretStore, IInlineChecker)
class PasswdFileChecker:
    """Password checks of hashed schemes run in a thread: they are slow on purpose and must not
    block. Plaintext compares and single fast digests (:data:`CHEAP_SCHEMES`) run inline: the
    thread hop (and the GIL hand-over) cost a loaded server more than the check itself."""

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)
    log = Logger()

    def __init__(self, path: str, default_scheme: str = passwords.DEFAULT_SCHEME) -> None:
        self.path = path
        self.default_scheme = default_scheme
        self._stamp: Optional[Tuple[int, int, int]] = None
        self._users: Dict[str, PasswdEntry] = {}
        self._dummy = "{PLAIN}\0dummy"
        self._load()

    def _load(self) -> None:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
            self._users = parse_passwd_file(f.read())
        self._stamp = stamp
        # Unknown users are verified against a real entry's hash (result discarded), so that
        # they cost what a wrong password costs: no user enumeration by timing.
        self._dummy = next(iter(self._users.values())).password if self._users else "{PLAIN}\0dummy"

    def lookup(self, username: str) -> Optional[PasswdEntry]:
        try:
            self._load()
        except OSError:
            self.log.failure("cannot re-read passwd-file {path}", path=self.path)
        return self._users.get(username)

    def lookup_secret(self, username: str) -> Optional[str]:
        entry = self.lookup(username)
        if entry is None:
            return None
        scheme, secret = passwords.split_scheme(entry.password, self.default_scheme)
        return "{%s}%s" % (scheme, secret)

    def secret_schemes(self) -> set:
        self.lookup("")
        return {passwords.split_scheme(e.password, self.default_scheme)[0] for e in self._users.values()}

    def avatar_id_now(self, credentials: Any) -> Any:
        """The avatar id of a username/password whose stored scheme is cheap (see
        :data:`CHEAP_SCHEMES`), or raise UnauthorizedLogin; :data:`LATER` for anything else (a slow
        hash, hashed credentials), which :meth:`requestAvatarId` handles. Used by
        :func:`login_now`: the same check without a Deferred."""
        if not IUsernamePassword.providedBy(credentials):
            return LATER
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "surrogateescape")
        entry = self.lookup(username)
        stored = entry.password if entry is not None else self._dummy
        if passwords.split_scheme(stored, self.default_scheme)[0] not in CHEAP_SCHEMES:
            return LATER
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        return self._avatar_id(self._verify(entry, username, password), entry)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        # A compare or one fast digest: a thread hop would cost more than the check.
        try:
            avatar_id = self.avatar_id_now(credentials)
        except Exception:
            return defer.fail()
        if avatar_id is not LATER:
            return defer.succeed(avatar_id)
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "surrogateescape")
        entry = self.lookup(username)
        if IUsernamePassword.providedBy(credentials):
            password = credentials.password
            if isinstance(password, str):
                password = password.encode("utf-8")
            d = hash_in_thread(self._verify, entry, username, password)
        else:
            d = defer.succeed(self._check_hashed(entry, credentials))

        return d.addCallback(self._avatar_id, entry)

    @staticmethod
    def _avatar_id(ok: bool, entry: Optional[PasswdEntry]) -> Any:
        if ok and entry is not None:
            return entry.user
        raise UnauthorizedLogin("authentication failed")

    def _verify(self, entry: Optional[PasswdEntry], username: str, password: bytes) -> bool:
        try:
            if entry is None:
                passwords.verify(self._dummy, password, self.default_scheme)
                return False
            if passwords.verify(entry.password, password, self.default_scheme):
                return True
            # RFC 4616: PLAIN passwords should be SASLprep'ed; try the prepared form of a
            # non-ASCII password too (stored secrets may have been made from either).
            prepared = passwords.saslprep(password) if not password.isascii() else password
            return prepared != password and passwords.verify(entry.password, prepared, self.default_scheme)
        except passwords.UnknownScheme as error:
            self.log.error("passwd-file {path}: unsupported scheme {scheme} for {user}",
                           path=self.path, scheme=str(error), user=username)
            return False

    def _check_hashed(self, entry: Optional[PasswdEntry], credentials: Any) -> bool:
        """CRAM-MD5 / APOP: needs a plaintext secret, or a ``{CRAM-MD5}`` context for CRAM-MD5."""
        if entry is None:
            return False
        scheme, secret = passwords.split_scheme(entry.password, self.default_scheme)
        if scheme in passwords.PLAINTEXT_SCHEMES:
            return bool(credentials.checkPassword(secret.encode("utf-8", "surrogateescape")))
        check_stored = getattr(credentials, "check_stored", None)
        if check_stored is not None:
            return bool(check_stored(scheme, secret))
        return False


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
