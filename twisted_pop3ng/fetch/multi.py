"""``pop3ng fetch --config FILE [--account NAME]… [--daemon SECONDS] [--json]`` on the command line.

One run: every selected account (``[daemon] parallel`` at once), a progress bar on a terminal,
then one summary line per account on stderr (or, with ``--json``, a summary on stdout); the exit
code is 0 when every account succeeded, else the code of the first one that failed (in the order
of the file or of ``--account``), each account's own code being in the summary.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import defer

from twisted_pop3ng.fetch import config as fetch_config
from twisted_pop3ng.fetch.accounts import overall_exit, run_accounts
from twisted_pop3ng.fetch.exits import EXIT_ERROR, EXIT_USAGE
from twisted_pop3ng.fetch.progress import AccountReport, ProgressBar, json_summary, summary_line

__all__ = ["main_config"]

#: Command-line options that only make sense for a single URL: with --config they go in the file.
SINGLE_ACCOUNT_OPTIONS = ("maildir", "mbox", "mda", "forward", "forward_to", "forward_from",
                          "forward_cafile", "state", "cafile", "password_file", "token_file",
                          "keep_days", "max_message_size", "mechanism", "forward_starttls",
                          "on_reject")


def main_config(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: List[str],
                crash_hook: Optional[Callable[[str], None]]) -> int:
    if args.url is not None:
        parser.error("--config FILE takes no URL: the accounts are in the file")
    given = [name for name in SINGLE_ACCOUNT_OPTIONS if getattr(args, name) is not None]
    if args.keep:
        given.append("keep")
    if given:
        parser.error("--%s goes in the config file (as %s = ...) with --config"
                     % (given[0].replace("_", "-"), given[0]))
    if args.daemon is not None and args.daemon <= 0:
        parser.error("--daemon SECONDS must be positive")
    try:
        config = fetch_config.load(args.config)
        accounts = config.select(args.account)
    except fetch_config.ConfigError as error:
        print("pop3ng fetch: %s" % error, file=sys.stderr)
        return EXIT_USAGE
    from twisted.internet import reactor

    if args.daemon is not None:
        return _daemon(reactor, args, crash_hook)
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() and not args.quiet and not args.json \
        else None
    outcome: Dict[str, Any] = {}

    def reported(report: AccountReport) -> None:
        if bar is not None:
            bar.clear()
        if not args.quiet:
            print("pop3ng fetch: %s" % summary_line(report), file=sys.stderr)
        for warning in report.warnings:
            print("pop3ng fetch: %s: warning: %s" % (report.name, warning), file=sys.stderr)
        for text in report.refused:
            print("pop3ng fetch: %s: left on the server: %s" % (report.name, text),
                  file=sys.stderr)
        if bar is not None:
            bar.draw(force=True)

    def finished(value: Any) -> None:
        outcome["value"] = value
        reactor.stop()

    def run() -> None:
        extra: Dict[str, Any] = {"crash_hook": crash_hook}
        if bar is not None:
            extra["progress_sink"] = _PerRun(bar)
        d = defer.ensureDeferred(run_accounts(reactor, accounts, config.daemon.parallel,
                                              reported, **extra))
        d.addBoth(finished)

    reactor.callWhenRunning(run)
    reactor.run()
    if bar is not None:
        bar.clear()
    reports = outcome.get("value")
    if not isinstance(reports, list):
        print("pop3ng fetch: interrupted", file=sys.stderr)
        return EXIT_ERROR
    code = overall_exit(reports)
    if args.json:
        print(json_summary(reports, code))
    return code


class _PerRun:
    """A progress sink for :class:`FetchOptions` that each fetch of the run shares: the bar sums
    every account."""

    def __init__(self, bar: ProgressBar) -> None:
        self.bar = bar

    def start(self, messages: int, octets: int) -> None:
        self.bar.account().start(messages, octets)

    def advance(self, messages: int, octets: int) -> None:
        self.bar.account().advance(messages, octets)

    def close(self) -> None:
        pass


def _daemon(reactor: Any, args: argparse.Namespace, crash_hook: Optional[Callable[[str], None]]) -> int:
    from twisted_pop3ng.fetch.daemon import Daemon

    daemon = Daemon(reactor, args.config, args.account, args.daemon, stream=sys.stderr,
                    json_stream=sys.stdout if args.json else None, crash_hook=crash_hook)
    outcome: Dict[str, Any] = {}

    def started() -> None:
        daemon.install_signal_handlers()
        try:
            daemon.start()
        except fetch_config.ConfigError as error:
            outcome["error"] = error
            reactor.stop()
            return
        def stopped(value: Any) -> None:
            outcome["value"] = value
            reactor.stop()

        daemon.done.addBoth(stopped)

    reactor.callWhenRunning(started)
    reactor.run()
    if "error" in outcome:
        print("pop3ng fetch: %s" % outcome["error"], file=sys.stderr)
        return EXIT_USAGE
    value = outcome.get("value")
    return value if isinstance(value, int) else EXIT_ERROR
