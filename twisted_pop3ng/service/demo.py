"""``twistd pop3ng --demo``: a self-contained demo (user, password, sample mail, self-signed cert)."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from typing import List

from twisted_pop3ng.mailbox.maildir.store import deliver

DEMO_USER = "demo"

SAMPLES = [
    b"From: Twisted POP3NG <postmaster@localhost>\nTo: demo@localhost\nSubject: Welcome to twisted-pop3ng\n"
    b"Date: Sun, 22 Nov 2026 00:00:00 +0000\nMessage-ID: <welcome@pop3ng.localhost>\n\n"
    b"Hello!\n\nThis message was served by twisted-pop3ng.\n.A line starting with a dot survives "
    b"dot-stuffing.\n",
    b"From: Twisted POP3NG <postmaster@localhost>\nTo: demo@localhost\nSubject: Second sample\n"
    b"Date: Sun, 22 Nov 2026 00:01:00 +0000\nMessage-ID: <second@pop3ng.localhost>\n\n"
    b"Try: LIST, UIDL, TOP 2 0, RETR 2, DELE 2, QUIT.\n",
]


@dataclass(frozen=True)
class DemoInfo:
    root: str
    user: str
    password: str
    passwd_file: str
    maildir_template: str
    cert: str
    key: str


class DemoError(Exception):
    """The demo tree cannot be made or reused; the message says what to remove."""


def prepare(root: str) -> DemoInfo:
    """Create (or reuse) the demo tree; the password is kept so reruns print the same one.
    :class:`DemoError` when ``root`` is taken by something else or its user file is not the demo's."""
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
    except OSError as error:
        raise DemoError("cannot make the demo directory %s (%s); remove or rename what is there"
                        % (root, error.strerror or error))
    passwd_file = os.path.join(root, "users")
    if os.path.exists(passwd_file):
        password = _demo_password(passwd_file)
    else:
        password = secrets.token_urlsafe(12)
        fd = os.open(passwd_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("%s:{PLAIN}%s\n" % (DEMO_USER, password))
    template = os.path.join(root, "mail", "{user}", "Maildir")
    maildir = template.replace("{user}", DEMO_USER)
    if not os.path.isdir(maildir):
        for i, sample in enumerate(SAMPLES):
            deliver(maildir, sample, name="1795000000.demo%d.localhost" % (i + 1))
    cert, key = os.path.join(root, "cert.pem"), os.path.join(root, "key.pem")
    if not (os.path.exists(cert) and os.path.exists(key)):
        from twisted_pop3ng.tls.server import make_self_signed

        make_self_signed(cert, key)
    return DemoInfo(root, DEMO_USER, password, passwd_file, template, cert, key)


def _demo_password(passwd_file: str) -> str:
    """The password of the demo user line a first run wrote (``demo:{PLAIN}...``)."""
    try:
        with open(passwd_file, encoding="utf-8") as f:
            user, _, secret = f.readline().rstrip("\r\n").partition(":")
    except (OSError, UnicodeDecodeError) as error:
        raise DemoError("cannot read %s (%s); remove it and run --demo again" % (passwd_file, error))
    if user != DEMO_USER or not secret.startswith("{PLAIN}") or len(secret) <= len("{PLAIN}"):
        raise DemoError("%s is not the demo's user file (demo:{PLAIN}PASSWORD); remove it and run "
                        "--demo again" % passwd_file)
    return secret[len("{PLAIN}"):].split(":", 1)[0]


def _port(description: str) -> str:
    parts = description.split(":")
    for part in parts[1:]:
        if part.isdigit():
            return part
        if part.startswith("port="):
            return part[5:]
    return "?"


def announce(info: DemoInfo, listen: List[str], tls_listen: List[str]) -> None:
    out = sys.__stdout__  # the terminal, not twistd's log
    if out is None:  # no terminal (pythonw, a closed stdout): nobody to tell
        return
    plain = [_port(d) for d in listen]
    tls = [_port(d) for d in tls_listen]
    lines = [
        "",
        "twisted-pop3ng demo is running (files under %s)" % info.root,
        "  user:      %s" % info.user,
        "  password:  %s" % info.password,
        "  POP3:      127.0.0.1 port %s" % ", ".join(plain),
        "  POP3S:     127.0.0.1 port %s (self-signed certificate: %s)" % (", ".join(tls), info.cert),
        "Try:",
    ]
    if plain:
        lines.append("  curl -u '%s:%s' pop3://127.0.0.1:%s/1" % (info.user, info.password, plain[0]))
    if tls:
        lines.append("  curl --cacert %s -u '%s:%s' pop3s://127.0.0.1:%s/1"
                     % (info.cert, info.user, info.password, tls[0]))
    lines.append("")
    out.write("\n".join(lines) + "\n")
    out.flush()
