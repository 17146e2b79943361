"""Test-only entry point: ``python -m tests.integration.fetch_with_crash [--term] NAME:N FETCH-ARGS…``.

Runs ``pop3ng fetch FETCH-ARGS…`` with a crash hook that signals the process the N-th time the
fetch reaches the step NAME (see :attr:`twisted_pop3ng.fetch.run.FetchOptions.crash_hook`):
SIGKILL, so the crash tests can kill the fetcher at an exact step of a real run, or SIGTERM with
``--term``, a stop request at an exact step. Production code reads no test switch: this module is
the only way in.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, List

from twisted_pop3ng.fetch.cli import main

USAGE = "usage: fetch_with_crash [--term] NAME:N FETCH-ARGS..."


def signal_at(spec: str, signum: int) -> Callable[[str], None]:
    """A crash hook that sends ``signum`` to this process the N-th time step NAME is reached."""
    name, _, count = spec.rpartition(":")
    if not name or not count.isdigit():
        raise SystemExit(USAGE)
    reached = [0]

    def hook(step: str) -> None:
        if step == name:
            reached[0] += 1
            if reached[0] == int(count):  # once: a SIGTERM must not be repeated at later steps
                os.kill(os.getpid(), signum)

    return hook


def run(argv: List[str]) -> int:
    signum = signal.SIGKILL
    if argv[:1] == ["--term"]:
        signum, argv = signal.SIGTERM, argv[1:]
    if not argv:
        raise SystemExit(USAGE)
    return main(argv[1:], crash_hook=signal_at(argv[0], signum))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
