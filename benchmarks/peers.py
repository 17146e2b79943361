"""Start the three peers on 127.0.0.1 over identical maildirs, and read their memory from /proc.

* ``ours``: ``twistd -n pop3ng`` exactly as users start it (``tests/support.start_server``);
* ``twisted.mail``: the stock ``twisted.mail.pop3.POP3`` (``twisted_mail_server.py``);
* ``dovecot``: Debian's dovecot-pop3d with a private config (``tests/dovecot.start_dovecot``),
  in its default process model (a login process per connection, a pop3 process per session), with
  the process and connection limits raised so 10,000 idle connections fit.

Test mail is generated once into a template and hard-linked into each peer's tree (``cp -al``):
no peer modifies message files, and each peer gets its own directories for its own index files.
Messages use LF line endings, as MDAs store them.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.client import Target  # noqa: E402
from tests.integration.support import process_tree, stop_process  # noqa: E402

PASSWORD = "bench password"


# -- test mail --------------------------------------------------------------------------------------

def make_message(size: int, seed: int) -> bytes:
    """A plausible message of exactly ``size`` bytes: headers, then base64-like 76-column lines.

    One body line in 50 starts with a dot, so dot-stuffing is on the data path.
    """
    rng = random.Random(seed)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    head = (b"From: sender%d@example.org\nTo: bench@example.org\nSubject: message %d\n"
            b"Message-ID: <%d@bench.example>\nMIME-Version: 1.0\n\n" % (seed, seed, seed))
    pool = bytes(rng.choice(alphabet) for _ in range(4096))
    lines = []
    total = len(head)
    i = 0
    while total < size:
        start = (i * 77) % (len(pool) - 80)
        line = (b"." if i % 50 == 7 else b"") + pool[start:start + 75] + b"\n"
        lines.append(line)
        total += len(line)
        i += 1
    data = head + b"".join(lines)
    return data[:size - 1] + b"\n" if len(data) >= size else data


def fill_maildir(maildir: str, count: int, size: int, seed: int = 0) -> None:
    """``count`` messages in cur/ with plain names (no ,S=/,W= size fields: sizes must be computed)."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    bodies = [make_message(size, seed + k) for k in range(min(count, 16))]
    base = 1700000000
    cur = os.path.join(maildir, "cur")
    for i in range(count):
        name = "%d.M%06dP%d.bench:2,S" % (base + i, i % 1000000, 4242)
        fd = os.open(os.path.join(cur, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, bodies[i % len(bodies)])
        finally:
            os.close(fd)


def big_message_file(maildir: str, megabytes: int) -> None:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    block = make_message(1 << 20, 99)
    block = block[block.index(b"\n\n") + 2:]
    with open(os.path.join(maildir, "cur", "1700000000.M1P1.big:2,S"), "wb") as f:
        f.write(b"From: big@example.org\nSubject: big\n\n")
        for _ in range(megabytes):
            f.write(block)


@dataclass
class DataSpec:
    """What mail the run needs; sizes come from the command line."""

    bulk_count: int = 2000
    bulk_size: int = 10 * 1024
    big_mb: int = 50
    many_count: int = 100_000
    many_size: int = 2048
    session_users: int = 4

    def users(self) -> Dict[str, str]:
        names = ["bulk", "big", "many", "manynew"] + ["s%d" % i for i in range(self.session_users)]
        return {name: PASSWORD for name in names}


def prepare_template(directory: str, spec: DataSpec, log: Callable[[str], None]) -> str:
    """Generate ``directory/mail/USER/Maildir`` once (reused when the sizes match)."""
    mail = os.path.join(directory, "mail")
    stamp = os.path.join(directory, "spec.txt")
    if os.path.exists(stamp) and open(stamp).read() == repr(spec):
        all_in_new(os.path.join(mail, "many", "Maildir"), os.path.join(mail, "manynew", "Maildir"))
        return mail
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    start = time.monotonic()
    fill_maildir(os.path.join(mail, "bulk", "Maildir"), spec.bulk_count, spec.bulk_size)
    big_message_file(os.path.join(mail, "big", "Maildir"), spec.big_mb)
    fill_maildir(os.path.join(mail, "many", "Maildir"), spec.many_count, spec.many_size)
    for i in range(spec.session_users):
        fill_maildir(os.path.join(mail, "s%d" % i, "Maildir"), 10, 4096, seed=100 + i)
    all_in_new(os.path.join(mail, "many", "Maildir"), os.path.join(mail, "manynew", "Maildir"))
    with open(stamp, "w") as f:
        f.write(repr(spec))
    log("generated test mail in %.1f s" % (time.monotonic() - start))
    return mail


def empty_partial_maildir(target: str) -> str:
    """An empty maildir at ``target + ".partial"`` (any earlier one removed), to be filled and
    then renamed to ``target``: an interrupted generation is never taken for a finished one."""
    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(partial, sub))
    return partial


def all_in_new(source: str, target: str) -> None:
    """``target``: the messages of ``source`` (in cur/) hard-linked into new/ under their base
    names, as on a POP3-only site where no client ever moves a message to cur/."""
    if os.path.isdir(os.path.join(target, "new")):
        return
    partial = empty_partial_maildir(target)
    cur = os.path.join(source, "cur")
    for name in os.listdir(cur):
        os.link(os.path.join(cur, name), os.path.join(partial, "new", name.partition(":")[0]))
    os.rename(partial, target)


def clone_mail(template_mail: str, root: str) -> None:
    """Hard-link the template's messages into ``root/mail`` (fresh directories, shared files)."""
    target = os.path.join(root, "mail")
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    subprocess.run(["cp", "-al", template_mail, target], check=True)


# -- /proc ------------------------------------------------------------------------------------------

def status_kb(pid: int, field_name: str) -> int:
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pids: List[int], field_name: str = "Pss_Dirty") -> int:
    """Proportional set size of the processes, dirty pages only by default.

    Clean file pages (the shared libraries) are left out: their PSS share changes whenever some
    unrelated process maps the same libraries, which swamps a per-connection figure.
    """
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith(field_name + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def reset_peak(pids: List[int]) -> Dict[int, int]:
    """Reset VmHWM to the current RSS (``clear_refs`` 5); returns the RSS of each process."""
    rss = {}
    for pid in pids:
        try:
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")
        except OSError:
            pass
        rss[pid] = status_kb(pid, "VmRSS")
    return rss


def peak_growth_kb(before: Dict[int, int]) -> int:
    """The largest VmHWM - RSS-before over the processes reset by :func:`reset_peak`."""
    return max([status_kb(pid, "VmHWM") - rss for pid, rss in before.items()] or [0])


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- peers ------------------------------------------------------------------------------------------

@dataclass
class Running:
    """A started peer: where it listens, its processes, and how to stop it."""

    name: str
    target: Target
    root_pid: int
    stop: Callable[[], None]
    exclude: List[int] = field(default_factory=list)

    def pids(self) -> List[int]:
        return [p for p in process_tree(self.root_pid) if p not in self.exclude]


def start_ours(root: str, users: Dict[str, str], workers: int = 0,
               extra: Optional[List[str]] = None) -> Running:
    from tests.integration.support import start_server

    # No per-address connection limit: all benchmark connections come from 127.0.0.1 (Dovecot has
    # no such limit before login either).
    args = ["--max-connections-per-address", "0"] + list(extra or [])
    if workers:
        args += ["--workers", str(workers)]
    server = start_server(root, users, tls=True, extra_args=args)
    target = Target("ours", server.port, server.tls_port, server.certs["ca"])
    return Running("ours", target, server.process.pid, server.stop)


def start_twisted_mail(root: str, users: Dict[str, str]) -> Running:
    from tests.integration.support import make_certificates, write_users

    certs = make_certificates(root)
    users_path = write_users(os.path.join(root, "users"), users)
    template = os.path.join(root, "mail", "{user}", "Maildir")
    log = open(os.path.join(root, "twisted-mail.log"), "wb")
    process = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "twisted_mail_server.py"), users_path, template,
         certs["cert"], certs["key"]], stdout=subprocess.PIPE, stderr=log)
    log.close()
    line = process.stdout.readline().split()
    if not line or line[0] != b"PORTS":
        process.kill()
        raise RuntimeError("twisted.mail peer did not start; see %s/twisted-mail.log" % root)

    def stop() -> None:
        stop_process(process)

    target = Target("twisted.mail", int(line[1]), int(line[2]), certs["ca"])
    return Running("twisted.mail", target, process.pid, stop)


#: Limits raised so that 10,000 idle connections fit; the process model stays Dovecot's default.
DOVECOT_LIMITS = """
default_process_limit = 15000
default_client_limit = 15000
mail_max_userip_connections = 15000
service pop3-login {
  process_limit = 15000
}
service pop3 {
  process_limit = 15000
}
"""


def start_dovecot(root: str, users: Dict[str, str], extra_config: str = "") -> Running:
    """Dovecot with :data:`DOVECOT_LIMITS`, then ``extra_config`` (later settings win)."""
    from tests.integration.dovecot import start_dovecot as start
    from tests.integration.support import make_certificates

    certs = make_certificates(root)
    dovecot = start(root, users, certs=certs, extra_config=DOVECOT_LIMITS + extra_config)
    target = Target("dovecot", dovecot.port, dovecot.tls_port, certs["ca"])
    return Running("dovecot", target, dovecot.pid, dovecot.stop)


PEERS: Dict[str, Callable[..., Running]] = {
    "ours": start_ours,
    "twisted.mail": start_twisted_mail,
    "dovecot": start_dovecot,
}
