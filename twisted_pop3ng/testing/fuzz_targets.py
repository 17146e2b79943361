"""Fuzz targets: one function per parser that takes arbitrary bytes and raises only on a bug.

Each target feeds ``data`` to real code -- the server session (command parser, state machine, SASL
decoders), the client's reply parser, the passwd-file parser -- and raises :class:`FuzzFinding`
when it breaks a promise a user depends on: no exception escapes into the reactor, no traceback is
logged for anything a peer can send, every line gets an answer. ``fuzz/run.py`` runs them under
atheris (coverage-guided); ``twisted_pop3ng/test/test_fuzz_corpus.py`` runs the seed corpus
in ``fuzz/corpus/TARGET/`` through them in every test run.
"""

from __future__ import annotations

import base64
import os
import tempfile
from typing import Any, Callable, Dict, List

from twisted.internet import defer
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["FuzzFinding", "TARGETS", "server_session", "sasl_exchange", "client_replies", "passwd_file"]


class FuzzFinding(AssertionError):
    """The target broke a promise; the message says which."""


@implementer(ILogObserver)
class _LoggedFailures:
    """Collects failures logged (``log.failure``, ``log.err``) while a target runs."""

    def __init__(self) -> None:
        self.failures: List[Failure] = []

    def __call__(self, event: Dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            self.failures.append(failure)

    def __enter__(self) -> "_LoggedFailures":
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        globalLogPublisher.removeObserver(self)
        if self.failures and exc_info[0] is None:
            raise FuzzFinding("logged a traceback: %s" % self.failures[0].getTraceback())


_PASSWORD = "fuzz-password"
_MESSAGES = [b"Subject: one\n\n.dot line\nbody\n", b"Subject: two\r\n\r\n" + b"x" * 300 + b"\r\n", b""]
_passwd_path: List[str] = []


def _passwd() -> str:
    """A passwd-file (made once per process) whose user has a SCRAM secret, so every SASL
    mechanism the server offers has a user to run against."""
    if not _passwd_path:
        from twisted_pop3ng.auth.passwords import generate

        handle, path = tempfile.mkstemp(prefix="pop3ng-fuzz-", suffix=".passwd")
        with os.fdopen(handle, "w") as f:
            f.write("alice:%s\n" % generate("SCRAM-SHA-256", _PASSWORD.encode()))
            f.write("bob:{PLAIN}%s\n" % _PASSWORD)
        _passwd_path.append(path)
    return _passwd_path[0]


def _driver() -> Any:
    from twisted.cred.portal import Portal

    from twisted_pop3ng.auth.checkers import PasswdFileCheckerFactory
    from twisted_pop3ng.mailbox.memory import MemoryStore
    from twisted_pop3ng.server.realm import MailboxRealm
    from twisted_pop3ng.testing import SessionDriver

    store = MemoryStore()
    for user in ("alice", "bob"):
        for message in _MESSAGES:
            store.deliver(user, message)
    checker = PasswdFileCheckerFactory().generateChecker(_passwd())
    return SessionDriver(Portal(MailboxRealm(store), [checker]))


def _feed(driver: Any, data: bytes) -> bytes:
    out = b""
    # The first byte chooses where the input is cut: commands split across reads must work.
    step = (data[0] % 7 + 1) if data else 1
    pieces = [data[1:]] if step == 7 else [data[i:i + step] for i in range(1, len(data), step)]
    for piece in pieces:
        if not driver.connected:
            break
        out += driver.send_raw(piece)
    if driver.connected:
        out += driver.advance(3600)  # every delay and timeout fires
    driver.close()
    return out


def server_session(data: bytes) -> None:
    """Arbitrary bytes from a client, cut at arbitrary points, into a real server session."""
    with _LoggedFailures():
        driver = _driver()
        _feed(driver, data)


def sasl_exchange(data: bytes) -> None:
    """AUTH with each mechanism the server offers, the data as the client's responses."""
    with _LoggedFailures():
        driver = _driver()
        mechanisms = [b"PLAIN", b"LOGIN", b"CRAM-MD5", b"SCRAM-SHA-1", b"SCRAM-SHA-256",
                      b"OAUTHBEARER", b"XOAUTH2", b"EXTERNAL"]
        mechanism = mechanisms[data[0] % len(mechanisms)] if data else b"PLAIN"
        responses = data[1:].split(b"\x00\x00")
        lines = [b"AUTH " + mechanism]
        for response in responses:
            # Mostly valid base64 (reaching the decoders), sometimes the raw bytes.
            raw = response[:1] == b"!"
            lines.append(response[1:] if raw else base64.b64encode(response))
        _feed(driver, b"\x06" + b"".join(line + b"\r\n" for line in lines) + b"STAT\r\nQUIT\r\n")


_CLIENT_ERRORS: tuple = ()


def _client_errors() -> tuple:
    global _CLIENT_ERRORS
    if not _CLIENT_ERRORS:
        from twisted.internet import error as net_error

        from twisted_pop3ng.client import errors
        from twisted_pop3ng.errors import POP3Error

        _CLIENT_ERRORS = (errors.ServerError, errors.ProtocolError, errors.CapabilityError,
                          errors.TLSError, POP3Error, net_error.ConnectionDone,
                          net_error.ConnectionLost, defer.CancelledError, net_error.TimeoutError)
    return _CLIENT_ERRORS


def client_replies(data: bytes) -> None:
    """Arbitrary bytes from a server, as replies to a pipelined session of the real client."""
    from twisted.internet import error as net_error
    from twisted.internet.testing import StringTransport

    from twisted_pop3ng.client.protocol import POP3Client

    with _LoggedFailures():
        client = POP3Client(timeout=None)
        client.makeConnection(StringTransport())
        outcomes: List[Any] = []
        client.ready.addBoth(outcomes.append)
        calls: List[Callable[[], defer.Deferred]] = [
            client.capa, client.stat, client.list, client.uidl, lambda: client.retrieve(1),
            lambda: client.top(1, 0), lambda: client.delete(1), client.noop, client.quit]
        for call in calls:
            try:
                d = call()
            except _client_errors() as error:
                outcomes.append(error)
                continue
            d.addBoth(outcomes.append)
        step = (data[0] % 5 + 1) if data else 1
        for i in range(1, len(data), step):
            client.dataReceived(data[i:i + step])
        client.connectionLost(Failure(net_error.ConnectionDone()))
        for outcome in outcomes:
            if isinstance(outcome, Failure) and not outcome.check(*_client_errors()):
                raise FuzzFinding("a command failed with %s" % outcome.getTraceback())


def passwd_file(data: bytes) -> None:
    """A passwd-file's text: parsed into entries or refused with ValueError, nothing else."""
    from twisted_pop3ng.auth.checkers import parse_passwd_file

    text = data.decode("utf-8", "surrogateescape")
    try:
        entries = parse_passwd_file(text)
    except ValueError:
        return
    for name in entries:
        if ":" in name or "\n" in name:
            raise FuzzFinding("parsed a user name with a separator in it: %r" % (name,))


#: Name -> target, as ``fuzz/run.py`` and the corpus test know them.
TARGETS: Dict[str, Callable[[bytes], None]] = {
    "server_session": server_session,
    "sasl_exchange": sasl_exchange,
    "client_replies": client_replies,
    "passwd_file": passwd_file,
}
