"""Checkers: Dovecot-format passwd-file (``--auth passwd-file:PATH``) and its strcred factory.

The file is ``user:{SCHEME}secret[:uid:gid:gecos:home:shell:extra]``, one user per line, ``#``
comments. It is re-read whenever its modification time or size changes; while it cannot be read,
no user can log in (fail closed, logged once). An unknown user is checked against a dummy secret so
that it costs the same as a wrong password. An entry with the ``nologin`` extra field, or whose
password field starts with ``!``, is disabled: no login at all, not even by certificate or token.

Identities proven without a password (EXTERNAL, OAuth, SCRAM) go through
:class:`PreauthenticatedChecker`, which asks the user database (:class:`IUserDatabase`).
"""

from __future__ import annotations

import collections
import contextvars
import hashlib
import hmac
import os
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

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
from twisted_pop3ng.errors import TemporaryFailure
from twisted_pop3ng.interfaces import LATER, IInlineChecker  # LATER: also re-exported from here


#: Threads that hash passwords at once: Argon2ID takes 64 MB each, so a flood of logins must queue
#: rather than multiply memory (Dovecot bounds its auth workers the same way).
HASH_THREADS = 4
#: Hashes that may wait for a thread; past that a login is refused at once with ``-ERR [SYS/TEMP]``
#: (F2: an unbounded queue let a flood delay every real login without limit and grow memory).
#: ``twistd pop3ng --max-hash-queue`` sets it (:meth:`HashPool.configure`).
MAX_HASH_QUEUE = 32


class HashPoolFull(TemporaryFailure):
    text = "Server busy, try again later"


#: The priority of hashes queued from here on in this context (see :class:`HashPool`): the server
#: sets SUSPECT around a login from an address with recent failures.
NORMAL, SUSPECT = 0, 1
hash_priority: "contextvars.ContextVar[int]" = contextvars.ContextVar("hash_priority", default=NORMAL)


class HashPool:
    """At most ``threads`` hashes run at once (in the reactor's thread pool), at most ``backlog``
    wait; a waiting job whose Deferred is cancelled (its client left) is dropped before it runs,
    and one cancelled while running has its result discarded.

    Rules: no job waits unboundedly (the queue is bounded and each job is one verification);
    jobs queued at :data:`NORMAL` priority (clients without recent failures: real users, as far as
    the server can tell) run before :data:`SUSPECT` ones, and when the queue is full a normal job
    takes the place of the newest suspect one (which is refused, ``SYS/TEMP``), so a guesser
    filling the queue does not lock real users out; FIFO within a priority; the reactor owns
    the threads (it starts, stops, and in trial resets the pool)."""

    def __init__(self, threads: int = HASH_THREADS, backlog: int = MAX_HASH_QUEUE) -> None:
        self.threads = threads
        self.backlog = backlog
        self.running = 0
        #: Waiting jobs by priority (NORMAL, SUSPECT).
        self.queues: Tuple["collections.deque[_HashJob]", ...] = (collections.deque(),
                                                                   collections.deque())

    @property
    def waiting(self) -> int:
        return len(self.queues[NORMAL]) + len(self.queues[SUSPECT])

    def configure(self, threads: Optional[int] = None, backlog: Optional[int] = None) -> None:
        if threads is not None:
            self.threads = max(int(threads), 1)
        if backlog is not None:
            self.backlog = max(int(backlog), 0)

    def run(self, function: Any, *args: Any) -> defer.Deferred:
        priority = SUSPECT if hash_priority.get() == SUSPECT else NORMAL
        if self.running < self.threads:
            job = _HashJob(self, function, args, priority)
            self._start(job)
            return job.deferred
        if self.waiting >= self.backlog:
            suspects = self.queues[SUSPECT]
            if priority == SUSPECT or not suspects:
                return defer.fail(HashPoolFull())
            evicted = suspects.pop()  # the newest suspect gives its place up
            evicted.started = True  # (not to be removed again by its canceller)
            evicted.deferred.errback(HashPoolFull())
        job = _HashJob(self, function, args, priority)
        self.queues[priority].append(job)
        return job.deferred

    def _start(self, job: "_HashJob") -> None:
        self.running += 1
        job.started = True
        try:
            d = threads.deferToThread(job.function, *job.args)
        except Exception:
            d = defer.fail()
        d.addBoth(self._finished, job)

    def _finished(self, result: Any, job: "_HashJob") -> None:
        self.running -= 1
        queues = self.queues
        while self.running < self.threads and (queues[NORMAL] or queues[SUSPECT]):
            self._start((queues[NORMAL] or queues[SUSPECT]).popleft())
        if not job.deferred.called:  # (cancelled meanwhile: its client is gone)
            job.deferred.callback(result)  # a Failure errbacks

    def _cancel(self, job: "_HashJob") -> None:
        if not job.started:
            try:
                self.queues[job.priority].remove(job)
            except ValueError:
                pass


class _HashJob:
    __slots__ = ("function", "args", "started", "priority", "deferred")

    def __init__(self, pool: HashPool, function: Any, args: Tuple[Any, ...], priority: int) -> None:
        self.function, self.args, self.started, self.priority = function, args, False, priority
        self.deferred: defer.Deferred = defer.Deferred(lambda _: pool._cancel(self))


#: The process's pool of password-hashing threads.
HASH_POOL = HashPool()


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
    """Run a password-hashing call in the reactor's thread pool through :data:`HASH_POOL`: at
    most HASH_THREADS at once, at most MAX_HASH_QUEUE waiting (past that it fails at once with
    :class:`HashPoolFull`, a ``SYS/TEMP`` error). Cancelling the Deferred (the client left)
    drops the job if it has not started.
    """
    return HASH_POOL.run(function, *args)


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


class IUserDatabase(Interface):
    """A checker that can tell whether a user may log in at all, without a password.

    Identities proven another way -- a TLS client certificate (EXTERNAL), an OAuth token, a SCRAM
    proof -- are looked up here, so that removing or disabling a user stops those logins too
    (finding F6; Dovecot's passdb lookup with ``nopassword`` does the same).
    """

    def user_allowed(username):
        """True if ``username`` (str) is a known user that is not disabled; may return a Deferred."""


@implementer(ICredentialsChecker)
class PreauthenticatedChecker:
    """Accepts :class:`Preauthenticated` credentials (only our SASL mechanisms create them) of
    users that the user database knows and has not disabled.

    ``users`` is where they are looked up: a :class:`~twisted.cred.portal.Portal` (its other
    checkers, as they are at each login), or a list of checkers. Each checker that can answer
    (:class:`IUserDatabase`, Twisted's ``memory:``, ``file:`` and ``unix`` checkers) is asked;
    a user is accepted if one of them knows it. None trusts the mechanism alone (the behaviour
    before F6, for embedders whose portal has no user list): avoid it.
    """

    credentialInterfaces = (IPreauthenticated,)
    log = Logger()

    def __init__(self, users: Any = None) -> None:
        self.users = users
        self._warned = False

    def _checkers(self) -> List[Any]:
        users = self.users
        found = list(users.checkers.values()) if hasattr(users, "checkers") else list(users)
        unique: List[Any] = []
        for checker in found:  # a portal lists a checker once per credential interface
            if checker is not self and not isinstance(checker, PreauthenticatedChecker) \
                    and all(checker is not c for c in unique):
                unique.append(checker)
        return unique

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        username = credentials.username
        if self.users is None:
            return defer.succeed(username)
        lookups = [lookup for lookup in map(user_lookup, self._checkers()) if lookup is not None]
        if not lookups:
            if not self._warned:
                self._warned = True
                self.log.error("{mechanism} login refused: no --auth checker can look users up "
                               "(use passwd-file)", mechanism=credentials.mechanism)
            return defer.fail(UnauthorizedLogin("no user database"))
        return self._ask(lookups, username)

    @defer.inlineCallbacks
    def _ask(self, lookups: List[Callable[[str], Any]], username: str) -> Any:
        for lookup in lookups:
            if (yield defer.maybeDeferred(lookup, username)):
                return username
        raise UnauthorizedLogin("unknown or disabled user")


def user_lookup(checker: Any) -> Optional[Callable[[str], Any]]:
    """``username -> bool`` (or a Deferred) for a checker that can tell whether a user exists;
    None for one that cannot (it then takes no part in EXTERNAL/OAuth logins)."""
    if IUserDatabase.providedBy(checker):
        return checker.user_allowed
    from twisted.cred import checkers as cred_checkers

    if isinstance(checker, cred_checkers.InMemoryUsernamePasswordDatabaseDontUse):
        return lambda name: name in checker.users or name.encode("utf-8", "surrogateescape") in checker.users
    if isinstance(checker, cred_checkers.FilePasswordDB):
        def in_file(name: str) -> bool:
            try:
                checker.getUser(name.encode("utf-8", "surrogateescape"))
            except KeyError:
                return False
            return True

        return in_file
    if type(checker).__name__ == "UNIXChecker":  # twisted.plugins.cred_unix (--auth unix)
        import pwd

        def in_passwd(name: str) -> bool:
            try:
                pwd.getpwnam(name)
            except (KeyError, ValueError):
                return False
            return True

        return in_passwd
    return None


@dataclass(frozen=True)
class PasswdEntry:
    user: str
    password: str
    fields: Tuple[str, ...] = ()

    @property
    def extra_fields(self) -> List[str]:
        """Dovecot's extra fields (the eighth field on): ``key=value`` or bare ``key`` words."""
        return ":".join(self.fields[5:]).split()

    @cached_property  # (an entry never changes: a reload of the file makes new ones)
    def disabled(self) -> bool:
        """No login of any kind: Dovecot's ``nologin`` extra field, or a password field locked
        with a leading ``!`` (``usermod -L``; OpenSSH refuses key logins of such accounts too).
        A password of ``*`` only means "no password": certificates and tokens still work."""
        return self.password.startswith("!") or any(
            f == "nologin" or f.startswith("nologin=") for f in self.extra_fields)


def parse_passwd_file(text: str) -> Dict[str, PasswdEntry]:
    """The users of a Dovecot-format passwd-file (see :func:`read_passwd_file`)."""
    return read_passwd_file(text)[0]


def read_passwd_file(text: str) -> Tuple[Dict[str, PasswdEntry], List[str]]:
    """(users, problems): the entries, and a sentence per line that was skipped.

    As Dovecot's passwd-file: the first entry of a user wins and a later one is reported (an
    entry appended to change a password does not take effect silently, in either server).
    """
    users: Dict[str, PasswdEntry] = {}
    first_line: Dict[str, int] = {}
    problems: List[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, rest = line.partition(":")
        if not sep or not user:
            problems.append("line %d: not USER:PASSWORD[:...]; skipped" % number)
            continue
        if user in users:
            problems.append("line %d: user %s exists more than once; the entry on line %d is used"
                            % (number, user, first_line[user]))
            continue
        # The password field ends at the next colon, except for {PLAIN} secrets, which Dovecot
        # cannot contain colons either; extra fields follow.
        fields = rest.split(":")
        users[user] = PasswdEntry(user, fields[0], tuple(fields[1:]))
        first_line[user] = number
    return users, problems


@implementer(ICredentialsChecker, ISecretStore, IInlineChecker, IUserDatabase)
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
        #: Why the file could not be re-read (None: it could); see :meth:`_reload`.
        self._unreadable: Optional[str] = None
        self._load()

    def _load(self) -> None:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
            self._users, problems = read_passwd_file(f.read())
        self._stamp = stamp
        for problem in problems:  # (once per version of the file)
            self.log.warn("passwd-file {path}: {problem}", path=self.path, problem=problem)
        passwords.forget_prepared()
        # Unknown users are verified against a real entry's hash (result discarded), so that
        # they cost what a wrong password costs: no user enumeration by timing.
        self._dummy = next(iter(self._users.values())).password if self._users else "{PLAIN}\0dummy"

    def lookup(self, username: str) -> Optional[PasswdEntry]:
        """The user's entry (None: no such user); ``TemporaryFailure`` while the file cannot be
        read: a login then gets ``[SYS/TEMP]`` (not a wrong password a fail2ban jail counts) and
        LMTP a ``451`` (not a ``550`` that bounces the mail)."""
        self._reload()
        if self._unreadable is not None:
            raise TemporaryFailure("User database unavailable")
        return self._users.get(username)

    def _reload(self) -> None:
        """Re-read the file if it changed; if it cannot be read, refuse every login (F14).

        Keeping the last good copy would "fail open": a password changed or a user removed in a
        file the server can no longer read (a 0600 root file after ``twistd --uid``, a file being
        replaced) would stay valid until a restart, silently. Instead every lookup fails as
        temporary until the file can be read again -- logged once when that starts and once when
        it ends, so that unauthenticated clients (CAPA looks at the schemes) cannot flood the log."""
        try:
            self._load()
        except OSError as error:
            if self._unreadable is None:
                self.log.error("passwd-file {path} cannot be re-read ({error}): refusing every "
                               "login until it can (check that the server's user may read it)",
                               path=self.path, error=error.strerror or str(error))
                self._users, self._stamp = {}, None
            self._unreadable = str(error)
            return
        if self._unreadable is not None:
            self._unreadable = None
            self.log.info("passwd-file {path} read again: {count} users", path=self.path,
                          count=len(self._users))

    def user_allowed(self, username: str) -> bool:
        """:class:`IUserDatabase`: present in the file and not :attr:`PasswdEntry.disabled`."""
        entry = self.lookup(username)
        return entry is not None and not entry.disabled

    def lookup_secret(self, username: str) -> Optional[str]:
        entry = self.lookup(username)
        if entry is None:
            return None
        scheme, secret = passwords.split_scheme(entry.password, self.default_scheme)
        return "{%s}%s" % (scheme, secret)

    def secret_schemes(self) -> frozenset:
        """The schemes in the file: computed once per version of the file, not per CAPA or AUTH
        (F3: a scan of every entry per command made each 6-byte CAPA cost O(users))."""
        self._reload()
        return self._derived()[1]

    def _derived(self) -> Tuple[str, frozenset]:
        """(dummy secret, schemes) of the users table now loaded, remembered per table: every
        reload makes a new table, which invalidates them."""
        users = self._users
        cached = self.__dict__.get("_derived_cache")
        if cached is not None and cached[0] is users:
            return cached[1], cached[2]
        dummy, schemes = dummy_secret(users.values(), self.default_scheme)
        self._derived_cache = (users, dummy, schemes)
        return dummy, schemes

    def salt_key(self) -> bytes:
        """The key of the made-up SCRAM salts of unknown users and of the salts derived for
        ``{PLAIN}`` users, when the administrator gives none (``--sasl-secret-file``): an HMAC over
        this file's path and its entries, so that every ``--workers`` process and every restart
        computes the same key for the same file (F7: a random key per process changed an unknown
        user's salt, never a stored user's). The entries hold the password hashes, which a
        client does not know, so the key cannot be computed from outside; it changes when the
        file does (see docs/security.rst)."""
        self._reload()
        return self._scram_derived()[0]

    def scram_profile(self, mechanism: str) -> Tuple[int, bool]:
        """(iteration count, derived) an unknown user's fake SCRAM exchange for ``mechanism``
        (``"SCRAM-SHA-256"``) must show to look like a user of the file (F7): the most common
        iteration count of the users that mechanism can serve -- their ``{SCRAM-*}`` secrets, and
        ``{PLAIN}`` ones at :data:`passwords.SCRAM_ITERATIONS` -- 4096 if there is none; and
        whether most of those users are ``{PLAIN}`` ones, whose keys cost a PBKDF2 in a thread."""
        self._reload()
        return self._scram_derived()[1].get(mechanism, (passwords.SCRAM_ITERATIONS, False))

    def _scram_derived(self) -> Tuple[bytes, Dict[str, Tuple[int, bool]]]:
        """(:meth:`salt_key`, :meth:`scram_profile` by mechanism) of the users table now loaded,
        remembered per table like :meth:`_derived`."""
        users = self._users
        cached = self.__dict__.get("_scram_cache")
        if cached is not None and cached[0] is users:
            return cached[1], cached[2]
        key = hmac.new(b"twisted-pop3ng SCRAM salt key 1", self.path.encode("utf-8", "surrogateescape"),
                       hashlib.sha256)
        counts: Dict[str, Counter] = {}
        plain = 0
        for entry in users.values():
            key.update(b"\0%s\0%s" % (entry.user.encode("utf-8", "surrogateescape"),
                                        entry.password.encode("utf-8", "surrogateescape")))
            scheme, secret = passwords.split_scheme(entry.password, self.default_scheme)
            if scheme in passwords.PLAINTEXT_SCHEMES:
                plain += 1
            elif scheme.startswith("SCRAM-"):
                count = secret.split(",", 1)[0]
                if count.isdigit():
                    counts.setdefault(scheme, Counter())[int(count)] += 1
        profiles: Dict[str, Tuple[int, bool]] = {}
        for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            stored = counts.get(mechanism, Counter())
            both = stored + Counter({passwords.SCRAM_ITERATIONS: plain} if plain else {})
            # (ties: the larger count; a fake must not look cheaper than real users)
            iterations = (max(both, key=lambda i: (both[i], i)) if both
                          else passwords.SCRAM_ITERATIONS)
            profiles[mechanism] = (iterations, plain > sum(stored.values()))
        self._scram_cache = (users, key.digest(), profiles)
        return key.digest(), profiles

    def avatar_id_now(self, credentials: Any) -> Any:
        """The avatar id of a username/password whose stored scheme is cheap (see
        :data:`CHEAP_SCHEMES`), or raise UnauthorizedLogin; :data:`LATER` for anything else (a slow
        hash, hashed credentials), which :meth:`requestAvatarId` handles. Used by
        :func:`login_now`: the same check without a Deferred."""
        if not IUsernamePassword.providedBy(credentials):
            return LATER
        username: Union[str, bytes] = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "surrogateescape")
        entry = self.lookup(username)
        stored = entry.password if entry is not None else self._derived()[0]
        if passwords.split_scheme(stored, self.default_scheme)[0] not in CHEAP_SCHEMES:
            return LATER
        password: Union[str, bytes] = credentials.password
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
        try:
            entry = self.lookup(username)
        except Exception:
            return defer.fail()
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
        if ok and entry is not None and not entry.disabled:
            return entry.user
        raise UnauthorizedLogin("authentication failed")

    def _verify(self, entry: Optional[PasswdEntry], username: str, password: bytes) -> bool:
        """Check ``password``; a known and an unknown user cost the same verifications (F7): an
        unknown one is checked against :func:`dummy_secret` (the file's most common scheme and
        cost), the SASLprep'ed second try included."""
        # RFC 4616: PLAIN passwords should be SASLprep'ed; try the prepared form of a non-ASCII
        # password too (stored secrets may have been made from either).
        prepared = passwords.saslprep(password) if not password.isascii() else password
        stored = entry.password if entry is not None else self._derived()[0]
        try:
            ok = passwords.verify(stored, password, self.default_scheme, user=username)
            if not ok and prepared != password:
                ok = passwords.verify(stored, prepared, self.default_scheme, user=username)
        except passwords.UnknownScheme as error:
            # (repr: the name is the client's, it must not forge log lines)
            self.log.error("passwd-file {path}: unsupported scheme {scheme} for {user!r}",
                           path=self.path, scheme=str(error), user=username)
            return False
        return ok and entry is not None

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


def cost_signature(stored: str, default_scheme: str = passwords.DEFAULT_SCHEME) -> Tuple[str, str]:
    """What a verification of ``stored`` costs, as (scheme, parameters): the crypt(3) prefix up to
    the salt (``$2b$12``, ``$6$rounds=656000``, ``$argon2id$v=19$m=65536,t=3,p=4``), PBKDF2's and
    SCRAM's iteration counts; nothing for single digests and plaintext."""
    scheme, secret = passwords.split_scheme(stored, default_scheme)
    if secret.startswith("$"):
        parts = secret.split("$")
        if len(parts) >= 3 and parts[1].startswith("2"):  # bcrypt: $2b$COST$salt+hash
            return scheme, "$".join(parts[:3])
        if scheme == "PBKDF2" and len(parts) >= 5:  # $1$salt$rounds$hex
            return scheme, parts[3]
        return scheme, "$".join(parts[:-2])
    if scheme.startswith("SCRAM-"):
        return scheme, secret.split(",", 1)[0]
    return scheme, ""


def dummy_secret(entries: Any, default_scheme: str = passwords.DEFAULT_SCHEME) -> Tuple[str, frozenset]:
    """(the secret an unknown user is checked against, the schemes present) for ``entries``.

    The dummy is an entry of the most common :func:`cost_signature` (the first such entry), so
    that a wrong name costs what a wrong password costs for most users -- same scheme, same cost,
    same path (inline or the hash pool) -- even in a file with mixed schemes or costs (F7; the
    first entry's hash was used, which in a file being migrated could be the odd one out)."""
    counts: Counter = Counter()
    first: Dict[Tuple[str, str], str] = {}
    schemes = set()
    for entry in entries:
        signature = cost_signature(entry.password, default_scheme)
        counts[signature] += 1
        first.setdefault(signature, entry.password)
        schemes.add(signature[0])
    if not counts:
        return "{PLAIN}\0dummy", frozenset()
    best = max(counts.values())
    signature = next(sig for sig in first if counts[sig] == best)
    return first[signature], frozenset(schemes)


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
