"""Run a private Dovecot POP3 server on 127.0.0.1 for interop tests and benchmarks.

Debian's ``dovecot-pop3d`` (2.3) is started in the foreground (``dovecot -F -c CONF``) with its own
configuration, passwd-file, maildirs, log and state under ``root``; its ``base_dir`` (UNIX sockets)
lives in a short private directory under ``/tmp`` because socket paths are limited to 108 bytes and
the unprivileged login user must be able to reach them.

Dovecot refuses mail access as root ("Mail access not allowed for root"), so mail is accessed as
``nobody`` and the passwd-file is read by the ``dovecot`` user. They cannot be expected to reach
``root`` (a ``mkdtemp`` is 0700, a home directory may be too), and the modes of directories the test
does not own are never changed: while Dovecot runs, ``root/mail`` and ``root/users`` are symlinks
into a private directory under ``/tmp`` that the helper creates searchable (0711), and ``stop()``
moves them back into ``root`` (mail that Dovecot left is still there for the test to check).
Messages delivered later by root (``support.deliver``) are world-readable files in directories
Dovecot owns, so it can read, rename and delete them.

Usage::

    dovecot = start_dovecot(root, {"alice": "secret"}, certs=make_certificates(root))
    deliver(dovecot.maildir("alice"), b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
    poplib.POP3("127.0.0.1", dovecot.port) ...
    dovecot.stop()
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, Optional

from .support import stop_process, wait_for_greeting

MAIL_USER = "nobody"
LOGIN_USER = "dovenull"
INTERNAL_USER = "dovecot"
AUTH_MECHANISMS = "plain login cram-md5 scram-sha-1 scram-sha-256"


def dovecot_available() -> bool:
    """True when the ``dovecot`` binary is on PATH and we may run it (root, for its privilege drops)."""
    return shutil.which("dovecot") is not None and os.geteuid() == 0


def _ensure_system_user(name: str) -> None:
    """Create a locked system user Dovecot drops privileges to, only when it is missing."""
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                    "--shell", "/usr/sbin/nologin", name], check=True)


def free_port() -> int:
    """A port the kernel considers free now (bound to 0, then released; callers retry on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def give_to_mail_user(path: str) -> None:
    """chown ``path`` recursively to the mail user, so Dovecot can write its index files there."""
    entry = pwd.getpwnam(MAIL_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


#: What Dovecot's unprivileged processes open under ``root``: kept in the reachable home meanwhile.
REACHABLE = ("mail", "users")


def _move_into_reach(root: str) -> str:
    """A fresh 0711 directory under /tmp (searchable by Dovecot's users, like /tmp itself) that
    takes ``root``'s mail and passwd-file; ``root/mail`` and ``root/users`` link to it."""
    home = tempfile.mkdtemp(prefix="dovecot-home-", dir="/tmp")
    os.chmod(home, 0o711)
    for name in REACHABLE:
        link = os.path.join(root, name)
        current = os.readlink(link) if os.path.islink(link) else link  # an earlier Dovecot's home
        if os.path.lexists(current):
            shutil.move(current, os.path.join(home, name))
        if os.path.islink(link):
            os.unlink(link)
    os.makedirs(os.path.join(home, "mail"), exist_ok=True)
    for name in REACHABLE:
        os.symlink(os.path.join(home, name), os.path.join(root, name))
    return home


def _move_home(home: str, root: str) -> None:
    """Undo :func:`_move_into_reach`: the mail and passwd-file back in ``root``, ``home`` gone."""
    for name in REACHABLE:
        link, moved = os.path.join(root, name), os.path.join(home, name)
        if os.path.islink(link) and os.readlink(link) == moved:
            os.unlink(link)
            if os.path.lexists(moved):
                shutil.move(moved, link)
    shutil.rmtree(home, ignore_errors=True)


@dataclass
class DovecotProcess:
    """A running private Dovecot; ``port`` is plain POP3 (STLS when certs), ``tls_port`` POP3S."""

    process: subprocess.Popen
    root: str
    base_dir: str
    config_path: str
    log_path: str
    port: int
    tls_port: Optional[int]
    #: The reachable directory under /tmp holding the mail and passwd-file while Dovecot runs.
    home: str = ""

    def maildir(self, user: str) -> str:
        return os.path.join(self.root, "mail", user, "Maildir")

    def deliver(self, user: str, message: bytes, name: Optional[str] = None) -> str:
        """Deliver into ``user``'s maildir (as the test process; the files stay readable)."""
        from twisted_pop3ng.mailbox.maildir import deliver

        return deliver(self.maildir(user), message, name)

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM the master (it stops its children), wait, remove the socket directory, and
        move the mail and passwd-file back into ``root``. Calling it again does nothing more."""
        self._kill()
        if self.home:
            _move_home(self.home, self.root)

    def _kill(self) -> None:
        stop_process(self.process, timeout=15)
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _config(root: str, home: str, base_dir: str, port: int, tls_port: Optional[int],
            certs: Optional[Dict[str, str]], allow_plaintext: bool, extra: str) -> str:
    user = MAIL_USER
    group = grp.getgrgid(pwd.getpwnam(MAIL_USER).pw_gid).gr_name
    lines = [
        "# generated by tests/dovecot.py",
        "protocols = pop3",
        "listen = 127.0.0.1",
        "base_dir = %s" % base_dir,
        "state_dir = %s" % os.path.join(root, "state"),
        "log_path = %s" % os.path.join(root, "dovecot.log"),
        "instance_name = dovecot-%s" % os.path.basename(base_dir),
        "default_login_user = %s" % LOGIN_USER,
        "default_internal_user = %s" % INTERNAL_USER,
        "mail_uid = %s" % user,
        "mail_gid = %s" % group,
        "first_valid_uid = 1",
        "first_valid_gid = 1",
        "mail_location = maildir:%s/mail/%%u/Maildir" % home,
        "auth_mechanisms = %s" % AUTH_MECHANISMS,
        # Dovecot answers a failed login after 2 s, and delays the next ones from the same address
        # by up to 15 s more (the anvil "auth penalty", off when its socket cannot be opened:
        # mode 0); the tests judge the replies, not the waits.
        "auth_failure_delay = 0",
        "service anvil {",
        "  unix_listener anvil-auth-penalty {",
        "    mode = 0",
        "  }",
        "}",
        "disable_plaintext_auth = %s" % ("no" if allow_plaintext else "yes"),
        "passdb {",
        "  driver = passwd-file",
        "  args = scheme=PLAIN username_format=%%u %s" % os.path.join(home, "users"),
        "}",
        "userdb {",
        "  driver = static",
        "  args = home=%s/mail/%%u" % home,
        "}",
        "service pop3-login {",
        "  inet_listener pop3 {",
        "    address = 127.0.0.1",
        "    port = %d" % port,
        "  }",
        "  inet_listener pop3s {",
        "    address = 127.0.0.1",
        "    port = %d" % (tls_port or 0),
        "    ssl = yes",
        "  }",
        "}",
    ]
    if certs:
        lines += ["ssl = yes",
                  "ssl_cert = <%s" % os.path.abspath(certs["cert"]),
                  "ssl_key = <%s" % os.path.abspath(certs["key"])]
    else:
        lines += ["ssl = no"]
    return "\n".join(lines) + "\n" + extra + "\n"


def start_dovecot(root: str, users: Dict[str, str], certs: Optional[Dict[str, str]] = None,
                  allow_plaintext: bool = False, extra_config: str = "",
                  attempts: int = 5) -> DovecotProcess:
    """Start Dovecot for ``users`` ({PLAIN} passwords) with maildirs at ``root/mail/USER/Maildir``.

    ``certs`` ({'cert','key'} paths) enables STLS on ``port`` and POP3S on ``tls_port``.
    Loopback clients count as secured for Dovecot, so plaintext USER/PASS works without
    ``allow_plaintext``. ``extra_config`` is appended verbatim (later settings win, e.g. limits).
    """
    if not dovecot_available():
        raise RuntimeError("dovecot is not installed or we are not root")
    for name in (LOGIN_USER, INTERNAL_USER):
        _ensure_system_user(name)
    root = os.path.abspath(root)
    os.makedirs(os.path.join(root, "state"), exist_ok=True)
    home = _move_into_reach(root)
    with open(os.path.join(home, "users"), "w", encoding="utf-8") as f:
        for user, password in users.items():
            f.write("%s:{PLAIN}%s\n" % (user, password))
    for user in users:
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(home, "mail", user, "Maildir", sub), exist_ok=True)
    give_to_mail_user(os.path.join(home, "mail"))
    last_log = ""
    for _ in range(attempts):
        base_dir = tempfile.mkdtemp(prefix="dvc-", dir="/tmp")
        os.chmod(base_dir, 0o755)
        port = free_port()
        tls_port = free_port() if certs else None
        config_path = os.path.join(root, "dovecot.conf")
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(_config(root, home, base_dir, port, tls_port, certs, allow_plaintext, extra_config))
        log_path = os.path.join(root, "dovecot.log")
        stderr_path = os.path.join(root, "dovecot.stderr")
        with open(stderr_path, "ab") as err:
            process = subprocess.Popen(["dovecot", "-F", "-c", config_path],
                                       stdout=err, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        dovecot = DovecotProcess(process, root, base_dir, config_path, log_path, port, tls_port, home)
        if wait_for_greeting(process, port, time.monotonic() + 20, b"+OK"):
            return dovecot
        dovecot._kill()
        with open(stderr_path, "rb") as f:
            last_log = f.read().decode("utf-8", "replace") + dovecot.log()
    _move_home(home, root)
    raise RuntimeError("dovecot did not start:\n" + last_log[-4000:])
