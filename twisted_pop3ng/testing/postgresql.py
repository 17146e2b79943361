"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a temporary directory, 127.0.0.1 only.

    from twisted_pop3ng.testing.postgresql import fresh_database

    dsn = fresh_database()              # a new database with pop3ng's schema, e.g. for --mailbox
    store = PostgresStore.from_spec(dsn)

Rules of this module:

* one cluster per test process, started at the first :func:`cluster` call and stopped at exit
  (and, through ``PR_SET_PDEATHSIG``, when the test process dies without running its exit hooks);
* it listens on 127.0.0.1 on a port the kernel picked, and on a Unix socket in its own directory;
  nothing is shared with a system cluster;
* PostgreSQL refuses to run as root: as root the cluster runs as the ``postgres`` user (else
  ``nobody``), its directory handed over to that user;
* a missing PostgreSQL is an error (:class:`PostgresNotFound`), never a skipped test: the CI
  installs Debian's ``postgresql``;
* tests run with ``fsync=off`` (a crash of the test machine loses nothing worth keeping);
  benchmarks ask for :class:`TestCluster` ``(fsync=True)`` to measure what production does.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

__all__ = ["PostgresNotFound", "TestCluster", "cluster", "fresh_database", "drop_database", "find_bindir"]

#: Where Debian (and Ubuntu) put the server binaries, newest first; ``POP3NG_PG_BINDIR`` overrides.
_BINDIR_PATTERNS = ["/usr/lib/postgresql/*/bin"]
#: The superuser the tests connect as (trust authentication, loopback only).
SUPERUSER = "pop3ng"
#: The database created from scratch once and copied for each test (``CREATE DATABASE ... TEMPLATE``).
TEMPLATE = "pop3ng_template"


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries here: install Debian's ``postgresql`` (the CI does)."""


def find_bindir() -> str:
    """The directory holding ``initdb`` and ``postgres``."""
    candidates = [os.environ["POP3NG_PG_BINDIR"]] if os.environ.get("POP3NG_PG_BINDIR") else []
    for pattern in _BINDIR_PATTERNS:
        candidates += sorted(glob.glob(pattern), key=_version_key, reverse=True)
    for path in [os.path.dirname(shutil.which("initdb") or "")] + candidates:
        if path and os.access(os.path.join(path, "initdb"), os.X_OK) and \
                os.access(os.path.join(path, "postgres"), os.X_OK):
            return path
    raise PostgresNotFound("PostgreSQL's initdb/postgres not found (looked on PATH and in %s); install "
                           "postgresql (Debian: apt-get install postgresql) or set POP3NG_PG_BINDIR"
                           % ", ".join(_BINDIR_PATTERNS))


def _version_key(path: str) -> Any:
    version = path.rstrip("/").split("/")[-2]
    return [int(part) if part.isdigit() else 0 for part in version.split(".")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_user() -> Optional[pwd.struct_passwd]:
    """The user to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run "
                       "PostgreSQL as (it refuses to run as root)")


class TestCluster:
    """A PostgreSQL cluster of our own in a temporary directory; :meth:`start`, :meth:`stop`."""

    __test__ = False  # (not a test case, whatever its name says)

    def __init__(self, fsync: bool = False, settings: Optional[Dict[str, str]] = None) -> None:
        self.fsync = fsync
        self.settings = dict(settings or {})
        self.directory: Optional[str] = None
        self.port = 0
        self.process: Optional["subprocess.Popen[bytes]"] = None
        self._names = itertools.count(1)
        self._user = _unprivileged_user()

    @property
    def socket_dir(self) -> str:
        assert self.directory is not None
        return os.path.join(self.directory, "run")

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq conninfo string for ``dbname`` over TCP on 127.0.0.1."""
        return "host=127.0.0.1 port=%d user=%s dbname=%s" % (self.port, SUPERUSER, dbname)

    def start(self) -> None:
        bindir = find_bindir()
        self.directory = tempfile.mkdtemp(prefix="pop3ng-pg-")
        data = os.path.join(self.directory, "data")
        os.mkdir(self.socket_dir)
        if self._user is not None:
            for path in (self.directory, self.socket_dir):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self._run([os.path.join(bindir, "initdb"), "-D", data, "-U", SUPERUSER, "--auth=trust",
                   "-E", "UTF8", "--locale=C", "--no-sync"])
        for _ in range(5):  # another process may take the port between our probe and bind
            self.port = _free_port()
            if self._start_server(bindir, data):
                return
        raise RuntimeError("the test PostgreSQL did not start: see %s" % self._log_path())

    def _log_path(self) -> str:
        assert self.directory is not None
        return os.path.join(self.directory, "postgres.log")

    def _start_server(self, bindir: str, data: str) -> bool:
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(self.port),
            "unix_socket_directories": self.socket_dir, "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on" if self.fsync else "off", "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "200", "shared_buffers": "64MB", "log_min_messages": "warning",
        }
        settings.update(self.settings)
        args = [os.path.join(bindir, "postgres"), "-D", data]
        for key, value in settings.items():
            args += ["-c", "%s=%s" % (key, value)]
        log = open(self._log_path(), "ab")
        try:
            # (PR_SET_PDEATHSIG fires when the *thread* that started the child ends: only from the
            # main thread does it mean "when this process dies".)
            in_main = threading.current_thread() is threading.main_thread()
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent if in_main else None, **self._as_user())
        finally:
            log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self._ready():
                return True
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the test PostgreSQL did not accept connections within 60 s")

    def _ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.dsn(), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def _as_user(self) -> Dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _run(self, args: List[str]) -> None:
        result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.directory, **self._as_user())
        if result.returncode != 0:
            raise RuntimeError("%s failed (%d):\n%s" % (args[0], result.returncode,
                                                        result.stdout.decode("utf-8", "replace")))

    def pause(self) -> None:
        """Fast shutdown (clients are disconnected), keeping the data: :meth:`resume` starts the
        same cluster on the same port (a database that goes down and comes back)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(30)

    def resume(self) -> None:
        assert self.directory is not None and self.process is None
        if not self._start_server(find_bindir(), os.path.join(self.directory, "data")):
            raise RuntimeError("the test PostgreSQL did not start again: see %s" % self._log_path())

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected), then the directory goes."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    # -- databases ------------------------------------------------------------------------------

    def create_database(self, schema: bool = True) -> str:
        """A new empty database (with pop3ng's schema unless ``schema`` is False); its DSN."""
        import psycopg

        name = "t%d_%d" % (os.getpid(), next(self._names))
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            if schema:
                self._ensure_template(conn)
            conn.execute("CREATE DATABASE %s TEMPLATE %s STRATEGY FILE_COPY"
                         % (name, TEMPLATE if schema else "template0"))
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        name = str(conninfo_to_dict(dsn)["dbname"])
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)

    _template_lock = threading.Lock()
    _template_ready = False

    def _ensure_template(self, conn: Any) -> None:
        with self._template_lock:
            if self._template_ready:
                return
            from twisted_pop3ng.mailbox.postgresql.schema import upgrade

            conn.execute("CREATE DATABASE %s TEMPLATE template0" % TEMPLATE)
            upgrade(self.dsn(TEMPLATE))
            self._template_ready = True


def _die_with_parent() -> None:
    """In the child before exec: SIGQUIT (PostgreSQL's immediate shutdown) when the test process
    dies, even by SIGKILL (Linux), so a killed trial run leaves no cluster behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGQUIT)  # PR_SET_PDEATHSIG
    except Exception:
        pass


_cluster: Optional[TestCluster] = None
_cluster_lock = threading.Lock()


def cluster() -> TestCluster:
    """This process's test cluster, started at the first call and stopped at exit."""
    global _cluster
    with _cluster_lock:
        if _cluster is None:
            started = TestCluster()
            started.start()
            atexit.register(started.stop)
            _cluster = started
        return _cluster


def fresh_database(schema: bool = True) -> str:
    """The DSN of a new database on this process's test cluster (see :meth:`TestCluster.create_database`)."""
    return cluster().create_database(schema)


def drop_database(dsn: str) -> None:
    """Drop a database :func:`fresh_database` made (connections to it are cut)."""
    cluster().drop_database(dsn)
