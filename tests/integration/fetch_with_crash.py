"""Test-only entry point: ``python -m tests.integration.fetch_with_crash NAME:N FETCH-ARGS…``.

Runs ``pop3ng fetch FETCH-ARGS…`` with a crash hook that SIGKILLs the process the N-th time the
fetch reaches the step NAME (see :attr:`twisted_pop3ng.fetch.run.FetchOptions.crash_hook`), so the
crash tests can kill the fetcher at an exact step of a real run. Production code reads no test
switch: this module is the only way in.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, List

from twisted_pop3ng.fetch.cli import main


def kill_at(spec: str) -> Callable[[str], None]:
    """A crash hook that SIGKILLs this process the N-th time step NAME is reached (``NAME:N``)."""
    name, _, count = spec.rpartition(":")
    if not name or not count.isdigit():
        raise SystemExit("usage: fetch_with_crash NAME:N FETCH-ARGS...")
    reached = [0]

    def hook(step: str) -> None:
        if step == name:
            reached[0] += 1
            if reached[0] >= int(count):
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


def run(argv: List[str]) -> int:
    if not argv:
        raise SystemExit("usage: fetch_with_crash NAME:N FETCH-ARGS...")
    return main(argv[1:], crash_hook=kill_at(argv[0]))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
