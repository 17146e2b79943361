"""Maildrop locks: PostgreSQL session-level advisory locks, all of a process's on one connection.

A lock held by a session's backend dies with that session: when a front end crashes or is killed,
PostgreSQL sees its connection close and the maildrops are free at once, on every front end.
Advisory locks are re-entrant within one PostgreSQL session, so exclusivity between the sessions
of one process is the store's (its set of open maildrops, checked before PostgreSQL is asked);
here a lock and its unlock may then run in either order for consecutive sessions of one process
(the counts balance: a session's unlock never frees the next session's lock).

If the lock connection fails (a database restart, a failover), every lock taken on it is gone: the
*generation* moves on, and the sessions that held a lock of the old generation learn it from
:meth:`MaildropLocks.holds` (and their commit re-checks ``pg_locks`` itself), so they end with
``-ERR [SYS/TEMP]`` and commit nothing instead of going on unlocked.

Rules of this module: blocking calls (run them in a worker thread); one mutex around the connection.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from twisted_pop3ng.errors import MailboxInUse, TemporaryFailure

#: The first key of the two-key advisory lock form ("pop3" in ASCII), so that pop3ng's locks do not
#: collide with other applications' single-key locks on the same database; the second is the maildrop id.
LOCK_NAMESPACE = 0x706F7033
#: TCP keepalives for the lock connection (unless the DSN sets them): a silently dead database host
#: is noticed within about a minute, so sessions stop relying on locks that are gone.
_KEEPALIVES = {"keepalives": "1", "keepalives_idle": "20", "keepalives_interval": "5", "keepalives_count": "4"}


@dataclass(frozen=True)
class LockToken:
    """One held maildrop lock: which lock connection (generation, backend pid and start) holds it."""

    maildrop_id: int
    generation: int
    backend_pid: int
    backend_start: Any


class MaildropLocks:
    """The maildrop locks of one process, on a dedicated connection (opened when first needed)."""

    def __init__(self, params: Dict[str, str]) -> None:
        self._params = dict(_KEEPALIVES, **params)
        self._params.setdefault("application_name", "pop3ng locks")
        self._mutex = threading.Lock()
        self._conn: Any = None
        self._backend: Any = None
        #: Called (in the thread that saw it) when the lock connection turned out dead: the
        #: database went away, so the store's pooled connections are dead too.
        self.on_lost: Optional[Callable[[], None]] = None
        self._held = 0  # locks taken on the current connection and not released
        self.generation = 0

    def acquire(self, username: str) -> Optional[Tuple[LockToken, str]]:
        """Lock the user's maildrop: its token and UIDL prefix; None when the user has no maildrop
        row yet (make it, then ask again); ``MailboxInUse`` at once (never wait) when another
        session holds it. The caller makes sure no other session of this process holds it (the
        lock is re-entrant here). Finding the maildrop and locking it is one round trip."""
        import psycopg

        with self._mutex:
            row = None
            for attempt in (1, 2):
                try:
                    conn = self._connection()
                    row = conn.execute("SELECT id, uid_prefix, pg_try_advisory_lock(%s, id) FROM "
                                       "maildrops WHERE username = %s", (LOCK_NAMESPACE, username)).fetchone()
                    break
                except psycopg.Error:
                    fresh = self._conn is None  # (the connection itself could not be made)
                    self._lost()
                    # A connection found dead (the database restarted, or cut it) is made again
                    # once, so that login need not fail; the locks held on it died with it (the
                    # generation changed: their sessions find out at their next step).
                    if fresh or attempt == 2:
                        raise TemporaryFailure("Mailbox database unavailable, try again later") from None
            if row is None:
                return None
            if not row[2]:
                raise MailboxInUse()
            self._held += 1
            return LockToken(int(row[0]), self.generation, *self._backend), str(row[1])

    def release(self, token: LockToken) -> None:
        """Unlock, once per acquire; a lock of a lost generation is gone already."""
        import psycopg

        with self._mutex:
            if token.generation != self.generation or self._conn is None:
                return
            self._held -= 1
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, token.maildrop_id))
            except psycopg.Error:
                self._lost()

    def holds(self, token: LockToken) -> bool:
        """Whether the lock is (as far as this process knows) still held: cheap, no query."""
        return token.generation == self.generation

    def check(self) -> None:
        """Ask the lock connection whether it is alive (a keepalive); a dead one is a lost generation."""
        import psycopg

        with self._mutex:
            if self._conn is None or not self._held:
                return
            try:
                self._conn.execute("SELECT 1")
            except psycopg.Error:
                self._lost()

    def close(self) -> None:
        with self._mutex:
            self._lost()

    def _connection(self) -> Any:
        if self._conn is None:
            import psycopg
            from psycopg.conninfo import make_conninfo

            conn = psycopg.connect(make_conninfo("", **self._params), autocommit=True)
            self._backend = conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
            self._conn = conn
        return self._conn

    def _lost(self) -> None:
        conn, self._conn = self._conn, None
        self._held = 0
        if self.on_lost is not None:
            self.on_lost()
        if conn is not None:
            self.generation += 1
            try:
                conn.close()
            except Exception:
                pass


#: Whether a backend (pid + start time, so a recycled pid does not count) holds the maildrop lock:
#: the commit's own check, inside its transaction, on the database it commits to.
STILL_LOCKED = """
    SELECT EXISTS (
        SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
           AND l.pid = %s AND a.backend_start = %s)"""


def still_locked(conn: Any, token: Optional[LockToken]) -> bool:
    if token is None:
        return False
    row = conn.execute(STILL_LOCKED, (LOCK_NAMESPACE, token.maildrop_id, token.backend_pid,
                                      token.backend_start)).fetchone()
    return bool(row[0])
