"""Run a private Postfix on 127.0.0.1 that delivers into ``twistd pop3ng --lmtp-listen``.

Debian's ``postfix`` is run with its own configuration directory, queue directory, data directory
and log file under one temporary directory (``postfix -c DIR``), never touching ``/etc/postfix``
or the system's queue: as root, ``postfix -c`` needs no ``alternate_config_directories`` entry in
the default ``main.cf`` (which need not even exist). Its only listener is ``smtpd`` on a free
loopback port (the generated ``master.cf`` has no ``smtp inet`` line: nothing on port 25), and
mail for any domain Postfix does not deliver to us goes to the ``error`` transport, so nothing
leaves the machine.

``postfix -c DIR check`` creates the queue directories, then the ``master`` daemon runs in the
foreground (``master -s``: what ``postfix -c DIR start-fg`` runs after the same checks) under a
small keeper process, the test's child. If the test runner dies, even by SIGKILL, the kernel sends
the keeper SIGTERM and it stops the master, which stops its children. A normal stop is
``postfix -c DIR stop``; the keeper then SIGKILLs whatever is left of the master's process group.

Usage::

    postfix = start_postfix(root, {"virtual_mailbox_domains": "example.org",
                                   "virtual_transport": "lmtp:inet:127.0.0.1:%d" % lmtp_port})
    smtplib.SMTP("127.0.0.1", postfix.port) ...
    postfix.flush()        # postqueue -f: retry the deferred mail now
    postfix.stop()
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .dovecot import free_port
from .support import _die_with_parent, stop_process, wait_for_greeting

#: The instance's ``myhostname``: with ``mydestination = $myhostname``, its local domain.
HOSTNAME = "mx.pop3ng.test"
#: What a test says when Postfix is missing: the interop tests fail rather than skip.
MISSING = ("postfix is not installed: these tests need Debian's 'postfix' package "
           "(apt-get install postfix) and root")

#: The services a delivering Postfix needs (Postfix's own master.cf.proto, without ``smtp inet``
#: and the pipe examples). The ``lmtp`` client runs chrooted in the queue directory, as Debian's
#: master.cf has it (what docs/delivery.rst's socket path must account for); the others are not
#: chrooted, so that none needs copies of /etc files in the queue directory.
_SERVICES = [
    # service  type  private unpriv chroot wakeup maxproc command
    ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
    ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
    ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
    ("tlsmgr", "unix", "-", "-", "n", "1000?", "1", "tlsmgr"),
    ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
    ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
    ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
    ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
    ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
    ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
    ("error", "unix", "-", "-", "n", "-", "-", "error"),
    ("retry", "unix", "-", "-", "n", "-", "-", "error"),
    ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
    ("local", "unix", "-", "n", "n", "-", "-", "local"),
    ("virtual", "unix", "-", "n", "n", "-", "-", "virtual"),
    ("lmtp", "unix", "-", "-", "y", "-", "-", "lmtp"),
    ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
    ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
    ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
]


#: Runs the master (argv[1:]) as its child and ends with it; on SIGTERM, which it also gets when
#: the test process dies (``_die_with_parent``: the master's own death signal would not do, the
#: kernel clears it when the master switches its effective uid to the mail owner and back), it
#: stops the master. Either way it then SIGKILLs what is left of the master's process group.
KEEPER = (
    "import os, signal, subprocess, sys\n"
    "master = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)\n"
    "signal.signal(signal.SIGTERM, lambda *_: master.terminate())\n"
    "status = master.wait()\n"
    "try:\n"
    "    os.killpg(master.pid, signal.SIGKILL)\n"  # the master made itself a process group leader
    "except OSError:\n"
    "    pass\n"
    "sys.exit(status)\n")


def postfix_available() -> bool:
    """True when ``postfix`` is on PATH and we are root (the master must start as root)."""
    return shutil.which("postfix") is not None and os.geteuid() == 0


@dataclass
class PostfixInstance:
    """A running private Postfix; ``port`` is its ``smtpd`` on 127.0.0.1."""

    process: subprocess.Popen
    root: str
    config_dir: str
    queue_dir: str
    log_path: str
    port: int

    def flush(self) -> None:
        """``postqueue -f``: deliver the deferred mail now, as an admin does after an outage."""
        _run(["postqueue", "-c", self.config_dir, "-f"], True)

    def queue_ids(self) -> List[str]:
        """The queue IDs of the messages still in the queue (``postqueue -j``, one JSON object a
        line)."""
        out = _run(["postqueue", "-c", self.config_dir, "-j"], True).stdout
        return re.findall(r'"queue_id": "([0-9A-Za-z]+)"', out)

    def log(self) -> str:
        return _read(self.log_path)

    def master_pid(self) -> int:
        """The master's process ID, from its pid file (the ``master.pid`` ``postfix stop`` uses)."""
        with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
            return int(f.read())

    def stop(self) -> None:
        """``postfix stop``; the keeper ends once the master has, after a SIGKILL for whatever
        is left in its process group (a delivery agent still busy). Calling it again does nothing
        more."""
        if self.process.poll() is None:
            _run(["postfix", "-c", self.config_dir, "stop"], False)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                stop_process(self.process)


def _read(path: str) -> str:
    """A log file's text ("" while there is none)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _run(args: List[str], check: bool) -> subprocess.CompletedProcess:
    """Run a Postfix command; its standard error is a pseudo-terminal, since Postfix's commands
    write their errors there only when it is a terminal (else only to syslog or the maillog)."""
    terminal, stderr = pty.openpty()
    try:
        result = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                text=True, timeout=60)
    finally:
        os.close(stderr)
    errors = b""
    try:
        while True:
            chunk = os.read(terminal, 4096)  # EIO once all is read: no writer is left
            if not chunk:
                break
            errors += chunk
    except OSError:
        pass
    finally:
        os.close(terminal)
    result.stderr = errors.decode("utf-8", "replace")
    if check and result.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s%s" % (" ".join(args), result.returncode,
                                                      result.stdout, result.stderr))
    return result


def _main_cf(root: str, settings: Dict[str, str]) -> str:
    base = {
        "compatibility_level": "3.6",
        "queue_directory": os.path.join(root, "spool"),
        "data_directory": os.path.join(root, "data"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "myhostname": HOSTNAME,
        "mydomain": "pop3ng.test",
        "myorigin": "$myhostname",
        "mydestination": "",
        "mynetworks": "127.0.0.0/8",
        "relayhost": "",
        # Mail for a domain not delivered to pop3ng bounces at once; never sent anywhere.
        "default_transport": "error:this test instance sends no mail out",
        # The users are pop3ng's, not the system's: no passwd or aliases lookups.
        "local_recipient_maps": "",
        "alias_maps": "",
        "alias_database": "",
        "biff": "no",
        "maillog_file": os.path.join(root, "maillog"),
        "maillog_file_prefixes": root,
    }
    base.update(settings)
    return "".join("%s = %s\n" % item for item in base.items())


def _master_cf(port: int) -> str:
    lines = ["127.0.0.1:%d inet n - n - - smtpd" % port]
    lines += [" ".join(service) for service in _SERVICES]
    return "\n".join(lines) + "\n"


def listening_addresses(pid: int) -> List[Tuple[str, int]]:
    """The (address, port) of every listening TCP socket process ``pid`` holds (/proc/net/tcp,
    tcp6; an IPv6 address is given in hex)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in inodes:  # 0A: TCP_LISTEN
                    continue
                address, port = fields[1].split(":")
                if len(address) == 8:
                    address = socket.inet_ntoa(struct.pack("<I", int(address, 16)))
                found.append((address, int(port, 16)))
    return found


def start_postfix(root: Optional[str] = None, settings: Optional[Dict[str, str]] = None,
                  attempts: int = 5) -> PostfixInstance:
    """Start a private Postfix with ``settings`` added to (or overriding) its ``main.cf``.

    ``root`` is made under /tmp when not given: the ``postfix`` user must be able to search every
    directory above the queue. The caller removes it after :meth:`PostfixInstance.stop`.
    """
    if not postfix_available():
        raise AssertionError(MISSING)
    if root is None:
        root = tempfile.mkdtemp(prefix="pop3ng-postfix-", dir="/tmp")
    os.chmod(root, 0o755)
    config_dir = os.path.join(root, "etc")
    os.makedirs(config_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "spool"), exist_ok=True)  # root's, 0755, as /var/spool/postfix
    data_dir = os.path.join(root, "data")
    os.makedirs(data_dir, exist_ok=True)
    shutil.chown(data_dir, "postfix")
    last_log = ""
    for _ in range(attempts):
        port = free_port()
        with open(os.path.join(config_dir, "main.cf"), "w", encoding="utf-8") as f:
            f.write(_main_cf(root, dict(settings or {})))
        with open(os.path.join(config_dir, "master.cf"), "w", encoding="utf-8") as f:
            f.write(_master_cf(port))
        # Creates the queue directories with their owners and modes; fails on a bad main.cf.
        _run(["postfix", "-c", config_dir, "check"], True)
        daemon_dir = _run(["postconf", "-c", config_dir, "-h", "daemon_directory"], True).stdout.strip()
        process = subprocess.Popen([sys.executable, "-c", KEEPER, os.path.join(daemon_dir, "master"),
                                    "-c", config_dir, "-s"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        instance = PostfixInstance(process, root, config_dir, os.path.join(root, "spool"),
                                   os.path.join(root, "maillog"), port)
        if wait_for_greeting(process, port, time.monotonic() + 20, b"220 ", b"QUIT\r\n"):
            listening = listening_addresses(instance.master_pid())
            if listening != [("127.0.0.1", port)]:
                instance.stop()
                raise RuntimeError("the private postfix listens on %r, not only 127.0.0.1:%d" % (listening, port))
            return instance
        instance.stop()
        last_log = instance.log()
    raise RuntimeError("postfix did not start:\n" + last_log[-4000:])
