"""``pop3ng fetch`` on the command line: arguments, secrets, exit codes, the reactor run.

Rules of this module: everything about the process lives here (argv, environment variables for
the secrets, stderr, exit codes); :mod:`.run` is the fetch itself and knows none of it. Failures
are told apart by exception type, never by their text.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import defer, error as ierror

from twisted_pop3ng.client import errors as client_errors
from twisted_pop3ng.client.connect import parse_url
from twisted_pop3ng.client.errors import printable
from twisted_pop3ng.fetch.delivery import DeliveryError
from twisted_pop3ng.fetch.run import BATCH, WINDOW, FetchBusy, FetchOptions, FetchResult, fetch
from twisted_pop3ng.fetch.state import StateError

__all__ = ["main", "classify_exit", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_AUTH", "EXIT_TLS",
           "EXIT_CONNECTION", "EXIT_DELIVERY", "EXIT_TRY_LATER"]

EXIT_OK = 0
EXIT_ERROR = 1          # the server refused a command, or something unexpected
EXIT_USAGE = 2          # bad command line, no password
EXIT_AUTH = 3           # authentication failed / no acceptable mechanism
EXIT_TLS = 4            # TLS failed (certificate, host name, no STLS offered)
EXIT_CONNECTION = 5     # cannot connect, connection lost, timeout, protocol violation
EXIT_DELIVERY = 6       # local delivery or state file failed
EXIT_TRY_LATER = 7      # [IN-USE], [LOGIN-DELAY], [SYS/TEMP]: try again later


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pop3ng fetch", description="Fetch mail from a POP3 server.")
    p.add_argument("url", help="pop3://USER@HOST[:PORT] (STLS) or pop3s://USER@HOST[:PORT] (TLS)")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--maildir", metavar="DIR")
    dest.add_argument("--mbox", metavar="FILE")
    dest.add_argument("--mda", metavar="CMD", help="command run with sh -c, one message on stdin")
    p.add_argument("--keep", action="store_true", help="leave messages on the server")
    p.add_argument("--keep-days", type=float, metavar="N", help="with --keep: delete after N days")
    p.add_argument("--state", metavar="FILE", help="UIDL state file (default under ~/.local/state)")
    p.add_argument("--cafile", metavar="PEM", help="CA certificates to trust instead of the system's")
    p.add_argument("--password-file", metavar="FILE",
                   help="file holding the password (else the POP3NG_PASSWORD environment variable)")
    p.add_argument("--token-file", metavar="FILE",
                   help="OAuth 2 bearer token for OAUTHBEARER/XOAUTH2 instead of a password "
                        "(else the POP3NG_TOKEN environment variable)")
    p.add_argument("--allow-plaintext", action="store_true",
                   help="pop3://: go without TLS when STLS is not offered")
    p.add_argument("--allow-plain-fallback", action="store_true",
                   help="when SCRAM is refused, send the password with PLAIN over TLS (for servers "
                        "that offer SCRAM but store only a crypt hash); off by default, since any "
                        "server with a valid certificate would then get the password")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="give up when the server makes no progress for S seconds")
    p.add_argument("--batch", type=int, default=BATCH, metavar="N",
                   help="messages made durable together (one directory fsync, one state write)")
    p.add_argument("--pipeline", type=int, default=WINDOW, metavar="N",
                   help="RETR commands in flight when the server offers PIPELINING")
    p.add_argument("--max-message-size", type=int, metavar="BYTES",
                   help="leave larger messages on the server and report them (default: twice "
                        "the size the server lists for the message, plus 1 MiB)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def _secret(path: Optional[str], variable: str) -> Optional[str]:
    """The first line of ``path`` (without its line ending), else the environment variable."""
    if path:
        with open(path, "r", encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    return os.environ.get(variable)


def classify_exit(error: BaseException) -> Tuple[int, str]:
    """Map a failure to ``(exit code, message)`` for the command line."""
    from OpenSSL import SSL

    while isinstance(error, defer.FirstError):
        error = error.subFailure.value
    if isinstance(error, (client_errors.InUseError, client_errors.LoginDelayError,
                          client_errors.TemporaryError, FetchBusy)):
        return EXIT_TRY_LATER, "server busy, try again later: %s" % error
    if isinstance(error, client_errors.AuthError):
        return EXIT_AUTH, "authentication failed: %s" % error
    if isinstance(error, (client_errors.TLSError, SSL.Error)):
        return EXIT_TLS, "TLS failed: %s" % error
    if isinstance(error, client_errors.StlsRequired):
        return EXIT_TLS, str(error)
    if isinstance(error, client_errors.UidlUnsupported):
        return EXIT_ERROR, str(error)
    if isinstance(error, client_errors.CapabilityError):
        return EXIT_AUTH, str(error)  # no authentication method both sides accept
    if isinstance(error, (DeliveryError, StateError)):
        return EXIT_DELIVERY, str(error)
    if isinstance(error, client_errors.ProtocolError):
        return EXIT_CONNECTION, "protocol violation by the server: %s" % error
    if isinstance(error, (ierror.ConnectError, ierror.ConnectionLost, ierror.ConnectionDone,
                          ierror.TimeoutError, ierror.DNSLookupError)):
        return EXIT_CONNECTION, "connection failed: %s" % (str(error) or error.__class__.__name__)
    if isinstance(error, client_errors.ServerError):
        return EXIT_ERROR, "server refused: %s" % error
    if isinstance(error, OSError):
        return EXIT_DELIVERY, "local error: %s" % error
    return EXIT_ERROR, "%s: %s" % (error.__class__.__name__, error)


def main(argv: List[str], crash_hook: Optional[Callable[[str], None]] = None) -> int:
    """``pop3ng fetch ARGS``; returns the exit code. ``crash_hook`` goes to
    :attr:`FetchOptions.crash_hook` (the crash tests' way in; the console script passes none)."""
    args = _parser().parse_args(argv)
    if args.keep_days is not None and not args.keep:
        print("pop3ng fetch: --keep-days needs --keep", file=sys.stderr)
        return EXIT_USAGE
    if args.max_message_size is not None and args.max_message_size < 1:
        print("pop3ng fetch: --max-message-size must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        token = None
        if args.token_file or not (args.password_file or "POP3NG_PASSWORD" in os.environ):
            token = _secret(args.token_file, "POP3NG_TOKEN")
        password = None if token is not None else _secret(args.password_file, "POP3NG_PASSWORD")
        parse_url(args.url)
    except (OSError, ValueError) as e:
        print("pop3ng fetch: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    if password is None and token is None:
        print("pop3ng fetch: no password: use --password-file FILE or POP3NG_PASSWORD "
              "(or, for OAuth, --token-file FILE or POP3NG_TOKEN)", file=sys.stderr)
        return EXIT_USAGE
    kind, target = next((k, v) for k, v in (("maildir", args.maildir), ("mbox", args.mbox),
                                             ("mda", args.mda)) if v)
    options = FetchOptions(args.url, kind, target, password, args.keep, args.keep_days, args.state,
                           args.cafile, args.allow_plaintext, args.timeout,
                           progress=sys.stderr.isatty() and not args.quiet,
                           batch=max(1, args.batch), window=max(1, args.pipeline), token=token,
                           allow_plain_fallback=args.allow_plain_fallback, crash_hook=crash_hook,
                           on_warning=_warn, max_message_size=args.max_message_size)
    from twisted.internet import reactor

    outcome: Dict[str, Any] = {}

    def finished(value: Any) -> None:
        outcome["value"] = value
        reactor.stop()

    def run() -> None:
        defer.ensureDeferred(fetch(reactor, options)).addBoth(finished)

    reactor.callWhenRunning(run)
    reactor.run()
    value = outcome.get("value")
    if isinstance(value, FetchResult) and value.refused:
        for text in value.refused:
            print("pop3ng fetch: not retrieved, left on the server: %s" % printable(text),
                  file=sys.stderr)
        return EXIT_ERROR
    if isinstance(value, FetchResult):
        if not args.quiet and sys.stderr.isatty():
            print("%d delivered, %d already delivered, %d deleted on the server"
                  % (value.delivered, value.skipped, value.deleted), file=sys.stderr)
        return EXIT_OK
    error = value.value if value is not None else RuntimeError("interrupted")
    code, text = classify_exit(error)
    print("pop3ng fetch: %s" % printable(text), file=sys.stderr)
    return code


def _warn(text: str) -> None:
    """Warnings go to stderr at once, even with --quiet: they ask the user to look at something."""
    print("pop3ng fetch: warning: %s" % printable(text), file=sys.stderr)
