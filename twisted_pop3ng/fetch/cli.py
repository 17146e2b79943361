"""``pop3ng fetch`` on the command line: arguments, secrets, exit codes, the reactor run.

Rules of this module: everything about the process lives here (argv, environment variables for
the secrets, stderr, exit codes); :mod:`.run` is the fetch itself and knows none of it. Failures
are told apart by exception type, never by their text.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import defer

from twisted_pop3ng.client.connect import parse_url
from twisted_pop3ng.client.errors import printable
from twisted_pop3ng.fetch import config as fetch_config
from twisted_pop3ng.fetch.exits import (EXIT_AUTH, EXIT_CONNECTION, EXIT_DELIVERY, EXIT_ERROR,
                                        EXIT_OK, EXIT_TLS, EXIT_TRY_LATER, EXIT_USAGE,
                                        classify_exit)
from twisted_pop3ng.fetch.run import BATCH, WINDOW, FetchOptions, FetchResult, fetch

__all__ = ["main", "classify_exit", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_AUTH", "EXIT_TLS",
           "EXIT_CONNECTION", "EXIT_DELIVERY", "EXIT_TRY_LATER"]

def _number(parse: Callable[[str], Any], rule: Callable[[Any], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` applying the config file's rule for the same key (fetch.config), so
    that ``--timeout nan`` or ``--keep-days -3`` is refused as ``timeout = nan`` is."""
    def convert(text: str) -> Any:
        try:
            return rule(parse(text))
        except ValueError as error:
            raise argparse.ArgumentTypeError("%s, not %r" % (error, text))

    return convert


def _checked(rule: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse ``type`` from a config-file rule for strings (fetch.config)."""
    def convert(text: str) -> str:
        try:
            return rule(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error))

    return convert


_SECONDS = _number(float, fetch_config.positive_number)
_DAYS = _number(float, fetch_config.non_negative_number)
_COUNT = _number(int, fetch_config.whole_count)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pop3ng fetch", description="Fetch mail from a POP3 server.",
        usage="%(prog)s URL (--maildir DIR | --mbox FILE | --mda CMD | --forward URL) [options]\n"
              "       %(prog)s --config FILE [--account NAME]... [--daemon SECONDS] [--json]\n"
              "       %(prog)s --print-example-config")
    p.add_argument("url", nargs="?",
                   help="pop3://USER@HOST[:PORT] (STLS) or pop3s://USER@HOST[:PORT] (TLS)")
    dest = p.add_mutually_exclusive_group()
    dest.add_argument("--maildir", metavar="DIR",
                      help="deliver into this Maildir (made if missing), each message fsynced")
    dest.add_argument("--mbox", metavar="FILE",
                      help="append to this mbox file, locked as MTAs lock it (dotlock and fcntl)")
    dest.add_argument("--mda", metavar="CMD", help="command run with sh -c, one message on stdin")
    dest.add_argument("--forward", metavar="URL",
                      help="hand each message to an MTA: smtp://HOST[:PORT], smtps://HOST[:PORT], "
                           "lmtp://HOST[:PORT] or lmtp:/PATH/TO/SOCKET")
    p.add_argument("--forward-to", metavar="ADDRESS",
                   help="envelope recipient for --forward (default: your user name)")
    p.add_argument("--forward-from", metavar="ADDRESS",
                   help="envelope sender for --forward (default: the message's Return-Path)")
    p.add_argument("--forward-cafile", metavar="PEM", type=_checked(fetch_config.cafile),
                   help="CA certificates for the MTA's STARTTLS")
    p.add_argument("--forward-starttls", choices=("auto", "require", "never"), metavar="auto|require|never",
                   help="STARTTLS to the MTA: when offered (auto, the default), always, or never")
    p.add_argument("--on-reject", choices=("keep", "delete"), metavar="keep|delete",
                   help="a message the MTA refuses for good (5xx): keep it on the server "
                        "(default) or delete it there")
    p.add_argument("--config", metavar="FILE", help="fetch the accounts of a TOML config file")
    p.add_argument("--account", metavar="NAME", action="append", default=[],
                   help="with --config: only this account (repeatable)")
    p.add_argument("--daemon", type=_SECONDS, metavar="SECONDS",
                   help="with --config: keep polling, each account every SECONDS "
                        "(or its poll_interval)")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable summary on stdout")
    p.add_argument("--print-example-config", action="store_true",
                   help="print a commented example config file and exit")
    p.add_argument("--mechanism", metavar="NAME", type=_checked(fetch_config.mechanism),
                   help="use this SASL mechanism (e.g. SCRAM-SHA-256) instead of the strongest offered")
    p.add_argument("--keep", action="store_true", help="leave messages on the server")
    p.add_argument("--keep-days", type=_DAYS, metavar="N", help="with --keep: delete after N days")
    p.add_argument("--state", metavar="FILE", help="UIDL state file (default under ~/.local/state)")
    p.add_argument("--cafile", metavar="PEM", type=_checked(fetch_config.cafile),
                   help="CA certificates to trust instead of the system's")
    p.add_argument("--password-file", metavar="FILE",
                   help="file holding the password (else the POP3NG_PASSWORD environment variable)")
    # Refused in main() with a message that does not repeat the value. Without this option,
    # argparse took "--password SECRET" as an abbreviation of --password-file and printed
    # "No such file or directory: 'SECRET'".
    p.add_argument("--password", metavar="SECRET", help=argparse.SUPPRESS)
    p.add_argument("--token-file", metavar="FILE",
                   help="OAuth 2 bearer token for OAUTHBEARER/XOAUTH2 instead of a password "
                        "(else the POP3NG_TOKEN environment variable)")
    p.add_argument("--allow-plaintext", action="store_true",
                   help="pop3://: go without TLS when STLS is not offered")
    p.add_argument("--allow-plain-fallback", action="store_true",
                   help="when SCRAM is refused, send the password with PLAIN over TLS (for servers "
                        "that offer SCRAM but store only a crypt hash); off by default, since any "
                        "server with a valid certificate would then get the password")
    p.add_argument("--timeout", type=_SECONDS, default=120.0, metavar="S",
                   help="give up when the server makes no progress for S seconds (a whole "
                        "reply, or 1 KiB of one)")
    p.add_argument("--batch", type=_COUNT, default=BATCH, metavar="N",
                   help="messages made durable together (one directory fsync, one state write)")
    p.add_argument("--pipeline", type=_COUNT, default=WINDOW, metavar="N",
                   help="RETR commands in flight when the server offers PIPELINING")
    p.add_argument("--max-message-size", type=_COUNT, metavar="BYTES",
                   help="leave larger messages on the server and report them (default: twice "
                        "the size the server lists for the message, plus 1 MiB)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary line (both only on a terminal); errors and warnings still")
    return p


def _secret(path: Optional[str], variable: str, option: str) -> Optional[str]:
    """The first line of ``path`` (without its line ending), else the environment variable; a
    ValueError naming ``option`` and the file when it cannot be read as text."""
    if path:
        try:
            with open(path, "r", encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as error:
            raise ValueError("%s %s: %s" % (option, path, error.strerror or error))
        except UnicodeDecodeError:
            raise ValueError("%s %s: not UTF-8 text" % (option, path))
    return os.environ.get(variable)


def main(argv: List[str], crash_hook: Optional[Callable[[str], None]] = None) -> int:
    """``pop3ng fetch ARGS``; returns the exit code. ``crash_hook`` goes to
    :attr:`FetchOptions.crash_hook` (the crash tests' way in; the console script passes none)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.password is not None:
        print("pop3ng fetch: --password is refused: on the command line a password is seen by every "
              "user (ps, /proc) and kept in shell history; use --password-file FILE or the "
              "POP3NG_PASSWORD environment variable", file=sys.stderr)
        return EXIT_USAGE
    if args.print_example_config:
        from twisted_pop3ng.fetch.example import EXAMPLE_CONFIG

        sys.stdout.write(EXAMPLE_CONFIG)
        return EXIT_OK
    if args.config is not None:
        from twisted_pop3ng.fetch.multi import main_config

        return main_config(parser, args, argv, crash_hook)
    if args.account or args.daemon is not None:
        parser.error("--account and --daemon go with --config FILE")
    if args.url is None:
        parser.error("a URL (or --config FILE) is needed")
    for name in ("maildir", "mbox", "mda", "forward", "state", "password_file", "token_file"):
        if getattr(args, name) == "":  # (--state '' fell back to the default file, silently)
            parser.error("--%s is empty" % name.replace("_", "-"))
    destination = next((k, v) for k, v in (("maildir", args.maildir), ("mbox", args.mbox),
                                      ("mda", args.mda), ("forward", args.forward),
                                      ("", "")) if v or not k)
    if not destination[0]:
        parser.error("one of the arguments --maildir --mbox --mda --forward is required")
    if args.keep_days is not None and not args.keep:
        print("pop3ng fetch: --keep-days needs --keep", file=sys.stderr)
        return EXIT_USAGE
    try:
        token = None
        if args.token_file or not (args.password_file or "POP3NG_PASSWORD" in os.environ):
            token = _secret(args.token_file, "POP3NG_TOKEN", "--token-file")
        password = (None if token is not None
                    else _secret(args.password_file, "POP3NG_PASSWORD", "--password-file"))
        if not parse_url(args.url).username:
            raise ValueError("the URL needs a user name: %s://USER@HOST"
                             % args.url.split(":", 1)[0].lower())
        forward = _forward_settings(args)
    except (OSError, ValueError) as e:
        print("pop3ng fetch: %s" % e, file=sys.stderr)
        return EXIT_USAGE
    if password is None and token is None:
        print("pop3ng fetch: no password: use --password-file FILE or POP3NG_PASSWORD "
              "(or, for OAuth, --token-file FILE or POP3NG_TOKEN)", file=sys.stderr)
        return EXIT_USAGE
    kind, target = destination
    options = FetchOptions(args.url, kind, target, password, args.keep, args.keep_days, args.state,
                           args.cafile, args.allow_plaintext, args.timeout,
                           progress=sys.stderr.isatty() and not args.quiet,
                           batch=max(1, args.batch), window=max(1, args.pipeline), token=token,
                           allow_plain_fallback=args.allow_plain_fallback, crash_hook=crash_hook,
                           on_warning=_warn, max_message_size=args.max_message_size,
                           forward=forward, mechanism=args.mechanism)
    from twisted.internet import reactor

    outcome: Dict[str, Any] = {}

    def finished(value: Any) -> None:
        outcome["value"] = value
        reactor.stop()

    def run() -> None:
        defer.ensureDeferred(fetch(reactor, options)).addBoth(finished)

    started = time.monotonic()
    reactor.callWhenRunning(run)
    reactor.run()
    value = outcome.get("value")
    if args.json:
        _print_json(args.url, value, started)
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


def _forward_settings(args: argparse.Namespace) -> Any:
    if args.forward is None:
        for name in ("forward_to", "forward_from", "forward_cafile", "forward_starttls", "on_reject"):
            if getattr(args, name) is not None:
                raise ValueError("--%s goes with --forward" % name.replace("_", "-"))
        return None
    from twisted_pop3ng.fetch.forward import ForwardSettings, parse_forward_url

    from twisted_pop3ng.fetch.config import address

    parse_forward_url(args.forward)
    for name in ("forward_to", "forward_from"):
        if getattr(args, name) is not None:
            try:
                address(getattr(args, name))
            except ValueError as error:
                raise ValueError("--%s: %s" % (name.replace("_", "-"), error))
    return ForwardSettings(args.forward, args.forward_to, args.forward_from, args.forward_cafile,
                           args.forward_starttls or "auto", args.on_reject or "keep", args.timeout)


def _print_json(url: str, value: Any, started: float) -> None:
    """``--json`` for a single account: the same shape as with --config (one account)."""
    from twisted_pop3ng.fetch.progress import AccountReport, json_summary

    report = AccountReport(url, EXIT_OK, seconds=time.monotonic() - started)
    if isinstance(value, FetchResult):
        report.listed, report.delivered, report.skipped = value.listed, value.delivered, value.skipped
        report.deleted, report.octets = value.deleted, value.octets
        report.refused = [printable(t) for t in value.refused]
        report.warnings = [printable(t) for t in value.warnings]
        report.exit = EXIT_ERROR if value.refused else EXIT_OK
    else:
        error = value.value if value is not None else RuntimeError("interrupted")
        report.exit, text = classify_exit(error)
        report.error = printable(text)
    print(json_summary([report], report.exit))
