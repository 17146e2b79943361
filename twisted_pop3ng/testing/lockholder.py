"""Hold one maildrop open in a process of its own: ``python -m twisted_pop3ng.testing.lockholder SPEC USER``.

The cross-process half of the conformance suite (:mod:`twisted_pop3ng.testing.conformance`):
opens USER's maildrop through ``store_from_spec(SPEC)`` as a server's login does, then prints one
line on stdout and, if it got the maildrop, holds it until stdin is closed (or the process is
killed, which must free the lock too):

* ``locked N UID...``: the maildrop is held; N messages with these UIDLs in the snapshot;
* ``in-use``: another session holds it (exit status 75, EX_TEMPFAIL);
* ``error TEXT``: anything else (exit status 70, EX_SOFTWARE; the traceback on stderr).

After stdin closes it closes the maildrop (no commit), prints ``released`` and exits with 0.
"""

from __future__ import annotations

import sys
from typing import Any, Generator, List, Optional

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

EX_SOFTWARE = 70
EX_TEMPFAIL = 75


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@defer.inlineCallbacks
def hold(reactor: Any, spec: str, user: str) -> Generator[Any, Any, Any]:
    from twisted_pop3ng.errors import MailboxInUse
    from twisted_pop3ng.mailbox import store_from_spec

    try:
        store = store_from_spec(spec)
        mailbox = yield defer.maybeDeferred(store.open_mailbox, user)
    except MailboxInUse:
        _say("in-use")
        return EX_TEMPFAIL
    try:
        infos = yield defer.maybeDeferred(mailbox.list_messages)
        _say(" ".join(["locked", str(len(infos))] + [info.uid for info in infos]))
        # Blocks until the parent closes our stdin; the reactor (and any store work) keeps running.
        yield deferToThread(sys.stdin.buffer.read)
    finally:
        yield defer.maybeDeferred(mailbox.close)
    _say("released")
    return 0


def main(argv: Optional[List[str]] = None) -> None:
    from twisted.internet import task

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write("usage: python -m twisted_pop3ng.testing.lockholder SPEC USER\n")
        raise SystemExit(64)  # EX_USAGE

    def run(reactor: Any) -> defer.Deferred:
        def failed(failure: Failure) -> int:
            _say("error %s" % (failure.getErrorMessage().replace("\n", " "),))
            failure.printTraceback(file=sys.stderr)
            return EX_SOFTWARE

        def exit_with(status: int) -> None:
            if status:
                raise SystemExit(status)

        return hold(reactor, args[0], args[1]).addErrback(failed).addCallback(exit_with)

    task.react(run)


if __name__ == "__main__":
    main()
