"""``pop3ng deliver``: a local delivery agent, like ``dovecot-lda``.

``pop3ng deliver --mailbox SPEC [--auth CHECKER]... [-f SENDER] USER < message`` stores the
message on standard input (streamed, never held whole) into ``USER``'s maildrop and exits with a
``sysexits.h`` status an MTA understands (:mod:`.outcome`): 0 delivered, 64 usage, 65 bad
message, 67 unknown user, 73 cannot create, 75 temporary failure (retry), 77 no permission. The
message is durable when it exits 0. A leading mbox ``From`` line is dropped (an MTA writing
mbox-style adds it); ``-f`` adds ``Return-Path:`` unless the message starts with one.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO, Any, List, Optional

from twisted_pop3ng._redact import redact, redact_checker
from twisted_pop3ng.delivery import outcome
from twisted_pop3ng.delivery.recipients import RecipientResolver
from twisted_pop3ng.delivery.trace import return_path

PROG = "pop3ng deliver"
READ_SIZE = 1 << 16
#: An mbox ``From`` line longer than this is not one (nothing is dropped then).
MAX_FROM_LINE = 1 << 20


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Deliver the message on standard input into USER's maildrop.",
                epilog="Exit status (sysexits.h): 0 delivered, 64 usage, 65 bad message, 67 unknown "
                       "user, 73 cannot create, 75 temporary failure, 77 no permission.")
    p.add_argument("--mailbox", required=True, metavar="SPEC",
                   help="the store, as twistd pop3ng's --mailbox (maildir:/var/mail/{user}/Maildir, ...)")
    p.add_argument("--auth", action="append", default=[], metavar="CHECKER",
                   help="users that exist, as twistd pop3ng's --auth (repeatable); USER unknown to "
                        "all of them is refused (67). USER@DOMAIN is tried whole, then its local part")
    p.add_argument("-f", "--from", dest="sender", metavar="SENDER", type=_sender,
                   help="envelope sender: adds Return-Path: <SENDER> (\"\" or <> for none)")
    p.add_argument("user", metavar="USER")
    return p


def _sender(text: str) -> str:
    """The envelope sender as it goes into ``Return-Path: <...>``: a line break in it would start
    a header of the caller's choosing in the stored message, so control characters and angle
    brackets are refused (one pair around the whole address is taken off, as MTAs pass ``<>``)."""
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c in "<>" for c in text):
        raise argparse.ArgumentTypeError("the sender %r has a control character or an angle bracket"
                                         % (text,))
    return text


class MessageSource:
    """Standard input as the store reads it: without a leading mbox ``From`` line, behind an
    optional ``Return-Path:`` header."""

    def __init__(self, stream: IO[bytes], sender: Optional[str]) -> None:
        self._stream = stream
        head = stream.read(READ_SIZE)
        if head.startswith(b"From "):
            while b"\n" not in head and len(head) < MAX_FROM_LINE:
                more = stream.read(READ_SIZE)
                if not more:
                    break
                head += more
            if b"\n" in head:
                head = head.split(b"\n", 1)[1] or stream.read(READ_SIZE)
        #: True when there is no message at all (nothing, or only a From line).
        self.empty = not head
        if sender is not None and not head[:12].lower().startswith(b"return-path:"):
            head = return_path(sender) + head
        self._head = head

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._stream.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data


class _Exit(Exception):
    """Ends ``pop3ng deliver`` with ``status`` after saying why on standard error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def main(argv: Optional[List[str]] = None, stdin: Optional[IO[bytes]] = None) -> int:
    try:
        return _deliver(sys.argv[1:] if argv is None else argv,
                        stdin if stdin is not None else sys.stdin.buffer)
    except _Exit as done:
        sys.stderr.write("%s: %s\n" % (PROG, done))
        return done.status


def _deliver(argv: List[str], stdin: IO[bytes]) -> int:
    try:
        args = parser().parse_args(argv)
    except UsageError as error:
        raise _Exit(outcome.EX_USAGE, "%s\nusage: %s --mailbox SPEC [--auth CHECKER] [-f SENDER] USER "
                                      "< message" % (error, PROG))
    if not args.user.strip():
        raise _Exit(outcome.EX_USAGE, "USER is empty")
    store = _open_store(args.mailbox)
    user = _resolve(args.auth, args.user) if args.auth else args.user
    source = MessageSource(stdin, args.sender)
    if source.empty:
        raise _Exit(outcome.EX_DATAERR, "no message on standard input")
    try:
        store.deliver(user, source)
    except Exception as error:
        result = outcome.classify(error)
        detail = "" if result.expected else " (%s: %s)" % (type(error).__name__, error)
        raise _Exit(result.exit_status, "%s: %s%s" % (user, result.description, detail))
    finally:
        # A store with connections or threads (PostgreSQL's pool) closes them now, not in a
        # finalizer at interpreter exit (which may run on one of its own threads).
        stop = getattr(store, "stop", None)
        if callable(stop):
            stop()
    return outcome.EX_OK


def _open_store(spec: str) -> Any:
    from twisted_pop3ng.interfaces import IMailboxDelivery
    from twisted_pop3ng.mailbox import MailboxSpecError, store_from_spec

    from twisted_pop3ng.errors import TemporaryFailure

    if spec.split(":", 1)[0].strip().lower() == "memory":
        # (it would exit 0, "delivered", and the message would go with the process)
        raise _Exit(outcome.EX_USAGE, "--mailbox %s: a memory store lives in one process; a "
                                      "delivery into it would be lost at exit" % (redact(spec),))
    try:
        store = store_from_spec(spec)
    except TemporaryFailure as error:  # (a database that is down: the MTA must retry, not bounce)
        raise _Exit(outcome.EX_TEMPFAIL, "--mailbox %s: %s" % (redact(spec), error))
    except (MailboxSpecError, ValueError) as error:
        raise _Exit(outcome.EX_USAGE, "--mailbox %s: %s" % (redact(spec), error))
    if not IMailboxDelivery.providedBy(store):
        raise _Exit(outcome.EX_USAGE, "--mailbox %s: this store cannot take deliveries" % (redact(spec),))
    return store


def _resolve(descriptions: List[str], address: str) -> str:
    """The user ``address`` belongs to, by the ``--auth`` checkers."""
    from twisted.cred import strcred

    checkers = []
    for description in descriptions:
        shown = redact_checker(description)
        try:
            checkers.append(strcred.makeChecker(description))
        except strcred.InvalidAuthType as error:
            raise _Exit(outcome.EX_USAGE, "--auth %s: unknown checker type %s" % (shown, error))
        except Exception as error:  # strcred raises whatever the checker factory raises
            raise _Exit(outcome.EX_USAGE, "--auth %s: %s" % (shown, error))
    try:
        user = RecipientResolver.from_checkers(checkers).resolve_now(address)
    except ValueError as error:
        raise _Exit(outcome.EX_USAGE, "--auth: %s" % (error,))
    except Exception as error:
        raise _Exit(outcome.EX_TEMPFAIL, "looking up %s: %s" % (address, error))
    if user is None:
        raise _Exit(outcome.EX_NOUSER, "%s: no such user" % (address,))
    return user
