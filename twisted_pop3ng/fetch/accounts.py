"""Run the accounts of a config file: each one a :func:`~twisted_pop3ng.fetch.run.fetch`, several at
once up to a bound, each ending in an :class:`~twisted_pop3ng.fetch.progress.AccountReport`.

One account's failure never stops the others; its exit code (the table in :mod:`.exits`) is in its
report. An OAuth access token the server rejects is refreshed once and the run tried again.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Optional

from twisted.internet import defer

from twisted_pop3ng.client import errors as client_errors
from twisted_pop3ng.client.errors import printable
from twisted_pop3ng.fetch.credentials import Credentials, Secret
from twisted_pop3ng.fetch.exits import EXIT_ERROR, EXIT_OK, classify_exit
from twisted_pop3ng.fetch.forward import ForwardSettings
from twisted_pop3ng.fetch.progress import AccountReport
from twisted_pop3ng.fetch.run import BATCH, WINDOW, FetchOptions, FetchResult, fetch

__all__ = ["fetch_options", "run_account", "run_accounts", "overall_exit"]


def fetch_options(account: Any, secret: Secret, **extra: Any) -> FetchOptions:
    """The :class:`FetchOptions` of an account of the config file."""
    get = account.get
    kind, target = account.destination
    forward = None
    if kind == "forward":
        forward = ForwardSettings(target, get("forward_to"), get("forward_from"),
                                  get("forward_cafile"), get("forward_starttls", "auto"),
                                  get("on_reject", "keep"), get("timeout", 120.0))
    return FetchOptions(get("url"), kind, target, secret.password, keep=get("keep", False),
                        keep_days=get("keep_days"), state_path=get("state"), cafile=get("cafile"),
                        allow_plaintext=get("allow_plaintext", False),
                        timeout=get("timeout", 120.0), batch=get("batch", BATCH),
                        window=get("pipeline", WINDOW), token=secret.token,
                        allow_plain_fallback=get("allow_plain_fallback", False),
                        max_message_size=get("max_message_size"), forward=forward,
                        mechanism=get("mechanism"), **extra)


async def run_account(reactor: Any, account: Any, **extra: Any) -> AccountReport:
    """Fetch one account; never raises (the failure is in the report)."""
    started = time.monotonic()
    report = AccountReport(account.name, EXIT_OK)
    credentials: Optional[Credentials] = None
    try:
        credentials = Credentials(account)
        secret = await credentials.get(reactor)
        try:
            result = await fetch(reactor, fetch_options(account, secret, **extra))
        except client_errors.AuthError:
            if not credentials.refreshable:
                raise
            # The cached access token was revoked or expired early: one fresh token, one retry.
            secret = await credentials.refresh(reactor)
            result = await fetch(reactor, fetch_options(account, secret, **extra))
        _fill(report, result)
    except Exception as error:
        report.exit, text = classify_exit(error)
        report.error = printable(text)
        report.failure = error
    report.seconds = time.monotonic() - started
    return report


def _fill(report: AccountReport, result: FetchResult) -> None:
    report.listed, report.delivered, report.skipped = result.listed, result.delivered, result.skipped
    report.deleted, report.octets = result.deleted, result.octets
    report.login_delay = result.login_delay
    report.refused = [printable(r) for r in result.refused]
    report.warnings = [printable(w) for w in result.warnings]
    if result.refused:
        report.exit = EXIT_ERROR


async def run_accounts(reactor: Any, accounts: List[Any], parallel: int,
                       on_report: Optional[Callable[[AccountReport], None]] = None,
                       **extra: Any) -> List[AccountReport]:
    """Every account, ``parallel`` at a time; the reports in the accounts' order."""
    semaphore = defer.DeferredSemaphore(max(1, parallel))

    async def one(account: Any) -> AccountReport:
        report = await run_account(reactor, account, **extra)
        if on_report is not None:
            on_report(report)
        return report

    runs = [semaphore.run(_later(one, account)) for account in accounts]
    reports: List[AccountReport] = await defer.gatherResults(runs)
    return reports


def _later(function: Callable[[Any], Any], argument: Any) -> Callable[[], defer.Deferred]:
    return lambda: defer.ensureDeferred(function(argument))


def overall_exit(reports: List[AccountReport]) -> int:
    """0 when every account succeeded, else the exit code of the first that did not."""
    return next((r.exit for r in reports if r.exit != EXIT_OK), EXIT_OK)
